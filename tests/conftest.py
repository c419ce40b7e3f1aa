"""Shared fixtures: media is made inside the tests with PyAV (no test depends on ../shared)."""
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def media_dir(tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    return d


def _loky_workers() -> list:
    """This process's live loky worker processes (not loky's resource trackers)."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any("LokyProcess" in a for a in p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _wait_gone(procs, what: str, seconds: float = 30.0) -> None:
    """Fail with ``what`` unless every process of ``procs`` has exited (or is a zombie) in ``seconds``."""
    import psutil

    def gone(p) -> bool:
        try:
            return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.time() + seconds
    while not all(gone(p) for p in procs):
        assert time.time() < deadline, what
        time.sleep(0.2)


@pytest.fixture
def processes():
    """For tests that no worker process outlives a run: ``loky_workers()``, ``wait_gone(procs, what)``."""
    return SimpleNamespace(loky_workers=_loky_workers, wait_gone=_wait_gone)
