"""librosa, imported under a lock shared by this machine's processes (numba's cache is not safe
against two processes compiling into it at once).

librosa's vectorised helpers (``numba.guvectorize``/``vectorize`` with signatures and
``cache=True``: yin's parabolic interpolation, zero crossings, ``abs2``...) compile when their module
is imported, about 25 s of CPU the first time after an install, and write numba's on-disk cache. Two
processes doing that at the same moment (the extraction workers of a first run) can leave the cache
inconsistent: every later process that loads it dies of a segmentation fault inside librosa
(numba/numba#10128, seen here on a fresh install: ``demo`` and every ``librosa`` extraction crashed
until the cache was rewritten). With the lock, the first process compiles and the others wait, then
load the finished cache (about 2 s).

The lock is a file in ``NUMBA_CACHE_DIR`` when that is set (point it at a shared folder for workers
on several machines sharing one install), else in the temporary folder. Every import of librosa in
this package goes through :func:`import_librosa`; :func:`locked_import` does the same for any module.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("moe.extract")

#: librosa's subpackages whose import compiles numba functions (the ones this package uses)
LIBROSA_COMPILED = ("librosa.util.utils", "librosa.core.audio", "librosa.core.pitch")


def lock_path() -> Path:
    """The lock file: in NUMBA_CACHE_DIR if set, else in the temporary folder (one per user)."""
    folder = os.environ.get("NUMBA_CACHE_DIR") or tempfile.gettempdir()
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(folder) / f"moe-emotion-numba-{user}.lock"


def locked_import(*names: str):
    """Import ``names`` (in order) holding the machine-wide lock; return the first module. Modules
    already imported cost nothing; when the lock file cannot be made (a read-only folder) the
    modules are imported without it."""
    missing = [n for n in names if n not in sys.modules]
    if missing:
        from filelock import FileLock

        path = lock_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # a NUMBA_CACHE_DIR not made yet (numba would)
            lock = FileLock(str(path))
            lock.acquire()
        except OSError as e:
            log.warning("no lock for numba's cache (%s: %s); importing %s without it", path, e, ", ".join(missing))
            lock = None
        try:
            for name in missing:
                importlib.import_module(name)
        finally:
            if lock is not None:
                lock.release()
    return sys.modules[names[0]]


def import_librosa():
    """The ``librosa`` module, its compiled helpers loaded under the lock."""
    return locked_import("librosa", *LIBROSA_COMPILED)
