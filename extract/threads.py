"""torch's CPU thread count for one block of work, and the caller's count again after it."""
from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with torch's intra-op thread count at ``threads`` (0 or None: as it is), then
    restore the count the caller had (also when the block raises). A library call that needs its own
    count (``fit(threads=1)``, whisper's encoder) thus never changes it for what the caller computes
    next. Imports nothing: without torch loaded there is no count to set."""
    torch = sys.modules.get("torch")
    if not threads or torch is None:
        yield
        return
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
