"""Shared fixtures: media is made inside the tests with PyAV (no test depends on ../shared)."""
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def media_dir(tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    return d
