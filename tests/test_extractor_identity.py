"""An extractor's key is computed once; a re-run on an existing feature set does not rebuild its
provenance (which can load models), leaves meta.json as the first run wrote it, and keeps the
first run's shards (shard names never collide, even for two runs of one process in one second)."""
from click.testing import CliRunner

import cli
from extract.cache import FeatureCache
from extract.registry import build, load_all
from extract.synth import make_clip

load_all()


def test_key_is_computed_once_per_instance(monkeypatch):
    ex = build("librosa")
    calls = []
    real = type(ex).key_payload

    def counting(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(type(ex), "key_payload", counting)
    keys = {ex.key for _ in range(5)}
    assert len(keys) == 1 and len(calls) == 1
    assert ex.provenance()["config_hash"] == ex.key.rsplit("-", 1)[1]


def test_rerun_on_an_existing_set_does_not_rebuild_provenance(tmp_path, monkeypatch):
    make_clip(tmp_path / "v" / "a.mp4", seconds=0.6, size=(32, 32))
    args = ["extract", str(tmp_path / "v"), "--cache", str(tmp_path / "c"), "--features", "librosa", "--no-progress"]
    assert CliRunner().invoke(cli.main, args, catch_exceptions=False).exit_code == 0
    fc = FeatureCache(tmp_path / "c")
    meta = (fc.root / fc.keys()[0] / "meta.json").read_bytes()

    def fails(self):
        raise AssertionError("provenance rebuilt for an existing feature set")

    monkeypatch.setattr(type(build("librosa")), "provenance", fails)
    make_clip(tmp_path / "v" / "b.mp4", seconds=0.6, size=(32, 32), seed=3)
    res = CliRunner().invoke(cli.main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (fc.root / fc.keys()[0] / "meta.json").read_bytes() == meta
    batch = FeatureCache(tmp_path / "c").read("librosa", ["a", "b"])
    assert batch.present.tolist() == [True, True], (batch.failures, res.output)
