"""Dask plugins of the local clusters this tool starts (extract/executors.py). A module of its own:
a worker process unpickles them by reference, and importing it imports ``distributed``."""
from __future__ import annotations

import atexit
import os
import sys

from distributed.diagnostics.plugin import WorkerPlugin


class SkipTeardown(WorkerPlugin):
    """Once the worker has closed, its process ends without the interpreter's teardown of torch,
    CTranslate2 and MediaPipe (about 2 s, for which `extract` waited while the cluster stopped).
    Exit handlers registered after it still run first; the worker's results are with the client by
    then. Never given to a user's cluster (its workers may run other work)."""

    name = "moe-emotion-skip-teardown"

    def setup(self, worker) -> None:
        atexit.register(_exit_now)  # registered first, so it runs last among the exit handlers


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed: nothing more can reach it
            pass
    os._exit(0)
