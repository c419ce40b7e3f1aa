"""Every module here registers its extractors on import (see extract.registry)."""
from . import asr, audio_stats, egemaps, face_au, face_cnn, frame_stats, hf_audio, hf_image, hf_text, speaker, vlm, vlm_text, whisper  # noqa: F401
