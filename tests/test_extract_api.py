"""The extract stage's Python API (extract.api): same cache as the CLI, one source of defaults."""
import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from extract.cache import FeatureCache
from extract.synth import make_clip

ROOT = Path(__file__).resolve().parents[1]
FEATS = "librosa,frame-stats"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    for i in range(3):
        make_clip(d / f"clip{i}.mp4", seconds=0.6 + 0.2 * i, size=(48, 64), freq=150 + 50 * i, seed=i)
    make_clip(d / "sub" / "voice.wav", seconds=0.8, video=False, rate=22050)
    (d / "empty.mp4").write_bytes(b"")
    return d


def cache_content(root):
    c = FeatureCache(root)
    out = {}
    for key in c.keys():
        fs = c.feature_set(key)
        ids = sorted(fs.done_ids())
        batch = c.read(key, ids)
        out[key] = (ids, batch.data, batch.timestamps, fs.failures())
    return out


def test_python_api_writes_the_same_cache_as_the_cli(clips, tmp_path):
    from extract import ExtractConfig, extract

    summary = extract(clips, cache=tmp_path / "api", config=ExtractConfig(features=FEATS, max_frames=8),
                      progress=False)
    res = CliRunner().invoke(cli.main, ["extract", str(clips), "--cache", str(tmp_path / "cli"), "--features",
                                        FEATS, "--max-frames", "8", "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert summary.cache == tmp_path / "api" and summary.video_dir == Path(clips)
    assert [k.rsplit("-", 1)[0] for k in summary.keys] == ["librosa", "frame-stats"]
    lib, fst = summary.keys
    assert summary.clips == 5 and summary.decoded == 4
    assert summary.done[lib] == 4 and summary.done[fst] == 3  # the wav has no video
    assert {(cid, key) for cid, key, _ in summary.failures} == {("empty", lib), ("empty", fst), ("sub/voice", fst)}
    assert summary.exit_code() == 0 and summary.exit_code(strict=True) == 1
    api, via_cli = cache_content(tmp_path / "api"), cache_content(tmp_path / "cli")
    assert sorted(api) == sorted(via_cli) == sorted(summary.keys)
    for key in api:
        a, b = api[key], via_cli[key]
        assert a[0] == b[0] and a[3] == b[3]
        assert np.array_equal(a[1], b[1]) and (a[2] is None or np.array_equal(a[2], b[2]))
    # the summary the CLI prints is made from the same Summary
    assert f"5 clips in" in res.output and "0 already cached, 4 decoded" in res.output


def test_click_defaults_are_the_dataclass_defaults(tmp_path):
    from extract.api import DEFAULT_CACHE, ExtractConfig
    from extract.cli_extract import extract_cmd

    defaults = ExtractConfig()
    params = {p.name: p for p in extract_cmd.params}
    for f in dataclasses.fields(ExtractConfig):
        assert f.name in params, f"cli.py extract has no option for {f.name}"
        parsed = ExtractConfig(**{f.name: params[f.name].default})  # e.g. "--extensions .mp4,.avi" -> a tuple
        assert getattr(parsed, f.name) == getattr(defaults, f.name), f.name
    assert params["cache_dir"].default == DEFAULT_CACHE
    # and what click parses with no options is exactly the default config
    ctx = extract_cmd.make_context("extract", [str(tmp_path)])
    options = {k: v for k, v in ctx.params.items() if k not in ("video_dir", "cache_dir")}
    assert ExtractConfig(**options) == defaults
    assert set(options) == {f.name for f in dataclasses.fields(ExtractConfig)}


def test_overrides_and_bad_options(clips, tmp_path):
    from extract import ExtractConfig, UsageError, extract
    from extract.api import config_from

    cfg = config_from(ExtractConfig(features="librosa"), jobs=2, fps=2.5)
    assert cfg.jobs == 2 and cfg.fps == 2.5 and cfg.features == ("librosa",)
    with pytest.raises(TypeError, match="unknown extract option.*jobz"):
        config_from(jobz=2)
    with pytest.raises(UsageError, match="--max-frames must be an integer >= 1, not 0"):
        extract(clips, tmp_path / "c", features="librosa", max_frames=0)
    assert not (tmp_path / "c").exists()  # nothing was done


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_notes_go_through_logging(clips, tmp_path):
    from extract import extract

    csv = tmp_path / "t.csv"
    csv.write_text("name,text\nnobody,hello\n", encoding="utf-8")
    logger, seen = logging.getLogger("moe.extract"), Records()
    level = logger.level
    logger.addHandler(seen)
    logger.setLevel(logging.INFO)
    try:
        summary = extract(clips, tmp_path / "c", features="librosa", transcripts=csv, progress=False)
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    assert any("no transcript row matched" in n for n in summary.notes)
    assert any("no transcript row matched" in r.getMessage() for r in seen.records)


def test_import_extract_is_cheap():
    code = ("import sys, extract; cfg = extract.ExtractConfig; f = extract.extract; "
            "print(sorted(m for m in ('torch', 'h5py', 'click', 'librosa', 'mediapipe') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
