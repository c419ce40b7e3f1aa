import os

import numpy as np
import pytest

from extract.cache import (CacheError, CacheLockedError, Feature, FeatureCache, ShardWriter, compact, put,
                           read_features)


def test_vector_roundtrip_in_requested_order_with_missing_masked(tmp_path):
    vals = {f"c{i}": Feature(data=np.full(4, i, np.float32)) for i in range(5)}
    key = put(tmp_path, "toy", "vector", vals, failures={"bad": "corrupt file"})
    batch = read_features(tmp_path, key, ["c3", "nope", "c0", "bad"])
    assert batch.data.shape == (4, 4)
    assert list(batch.present) == [True, False, True, False]
    assert batch.data[0, 0] == 3 and batch.data[2, 0] == 0
    assert np.isnan(batch.data[1]).all()
    assert batch.failures == {"bad": "corrupt file"}
    with pytest.raises(CacheError, match="2 ids have no value"):
        read_features(tmp_path, key, ["c1", "nope", "bad"], missing="raise")


def test_series_padded_with_mask_and_lengths(tmp_path):
    vals = {"a": Feature(data=np.ones((3, 2)), timestamps=np.arange(3) * 0.2, mask=np.array([1, 0, 1], bool),
                         pooled=np.ones(2)),
            "b": Feature(data=np.zeros((5, 2)), timestamps=np.arange(5) * 0.2, pooled=np.zeros(2))}
    key = put(tmp_path, "ser", "series", vals)
    cache = FeatureCache(tmp_path)
    batch = cache.read(key, ["b", "a"])
    assert batch.data.shape == (2, 5, 2)
    assert list(batch.lengths) == [5, 3]
    assert batch.mask[1].tolist() == [True, False, True, False, False]
    assert batch.timestamps[0, 4] == pytest.approx(0.8)
    pooled = cache.read(key, ["a", "b"], pooled=True)
    assert pooled.data.shape == (2, 2) and pooled.data[0, 0] == 1
    short = cache.read(key, ["b"], max_len=2)
    assert short.data.shape == (1, 2, 2)


def test_resolve_short_names(tmp_path):
    k1 = put(tmp_path, "librosa", "vector", {"a": Feature(data=np.ones(2))})
    cache = FeatureCache(tmp_path)
    assert cache.resolve("librosa") == k1
    put(tmp_path, "librosa", "vector", {"a": Feature(data=np.ones(2))}, meta={"config": {"n_mfcc": 13}})
    with pytest.raises(CacheError, match="ambiguous"):
        cache.resolve("librosa")
    with pytest.raises(CacheError, match="unknown feature"):
        cache.resolve("hubert")


def test_writer_shards_compaction_and_stale_tmp(tmp_path):
    cache = FeatureCache(tmp_path)
    fs = cache.create("toy-0", {"kind": "layers", "config_hash": "0"})
    (fs.path / ".part-x.h5.tmp").write_bytes(b"half written")
    w = ShardWriter(fs, "layers")
    assert not list(fs.path.glob(".part-*.tmp"))
    for i in range(20):
        w.add(f"c{i}", Feature(data=np.full((3, 2), i)))
        if i % 2:
            w.flush()
    w.fail("x", "no audio stream")
    w.flush()
    assert len(fs.shards()) == 11
    assert compact(fs, min_shards=4) == 11
    assert len(fs.shards()) == 1
    batch = cache.read("toy-0", [f"c{i}" for i in range(20)])
    assert batch.present.all() and batch.data[7, 0, 0] == 7
    assert fs.failures() == {"x": "no audio stream"}


def test_lock_is_exclusive_and_released(tmp_path):
    cache = FeatureCache(tmp_path)
    with cache.lock():
        with pytest.raises(CacheLockedError, match=f"pid {os.getpid()}"):
            with FeatureCache(tmp_path).lock():
                pass
    with cache.lock():
        pass


def test_atomic_open_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from extract.cache import atomic_open, atomic_write_text

    target = tmp_path / "sub" / "out.csv"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target, newline="") as fh:
            fh.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n" and sorted(p.name for p in target.parent.iterdir()) == ["out.csv"]
    with atomic_open(target, newline="") as fh:
        fh.write("new\r\n")
    assert target.read_bytes() == b"new\r\n"


def test_atomic_open_binary_writes_bytes_and_keeps_the_old_file_on_failure(tmp_path):
    from extract.cache import atomic_open

    target = tmp_path / "models" / "m.pt"
    payload = bytes(range(256)) + b"\r\n\n"
    with atomic_open(target, binary=True) as fh:
        assert "b" in fh.mode
        fh.write(payload)
    assert target.read_bytes() == payload                   # no encoding, no newline translation
    with pytest.raises(RuntimeError):
        with atomic_open(target, binary=True) as fh:
            fh.write(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == payload and sorted(p.name for p in target.parent.iterdir()) == ["m.pt"]
    with pytest.raises(TypeError):                          # text is refused in binary mode
        with atomic_open(target, binary=True) as fh:
            fh.write("text")
    assert target.read_bytes() == payload and sorted(p.name for p in target.parent.iterdir()) == ["m.pt"]
