"""Every module here registers its extractors on import (see extract.registry)."""
from . import audio_stats, egemaps  # noqa: F401
