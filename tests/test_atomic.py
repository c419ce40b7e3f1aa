"""Safe temporary files: atomic_open and the cache's shards create their tmp file exclusively, under
an unpredictable name beside the target, and never write through a symlink planted in the folder."""
import os
import stat

import numpy as np
import pytest

from extract.cache import Feature, FeatureCache, ShardWriter, atomic_open, atomic_write_text, new_shard_path, \
    write_shard


def plant(link, victim):
    os.symlink(victim, link)
    return link


def test_atomic_open_never_follows_a_symlink_at_the_old_tmp_name_or_the_target(tmp_path):
    victim = tmp_path / "elsewhere" / "secret.txt"
    victim.parent.mkdir()
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    target = out / "predictions.csv"
    # the names the old code used (".NAME.PID.tmp"), a pid-less variant, and the target itself
    plant(out / f".predictions.csv.{os.getpid()}.tmp", victim)
    plant(out / ".predictions.csv.tmp", victim)
    plant(target, victim)
    with atomic_open(target, newline="") as fh:
        fh.write("name,label\r\nx,happy\r\n")
    assert victim.read_text() == "precious\n"
    assert not target.is_symlink() and target.read_bytes() == b"name,label\r\nx,happy\r\n"
    assert (out / f".predictions.csv.{os.getpid()}.tmp").is_symlink()  # left alone, not written through


def test_atomic_tmp_name_is_exclusive_unpredictable_and_beside_the_target(tmp_path):
    target = tmp_path / "run" / "metrics.csv"
    seen = []
    with atomic_open(target) as fh:
        seen = [p for p in target.parent.iterdir()]
        fh.write("a\n")
    assert len(seen) == 1
    tmp = seen[0].name
    assert tmp.startswith(".metrics.csv.") and tmp.endswith(".tmp") and tmp != f".metrics.csv.{os.getpid()}.tmp"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as a plain open() would make it


def test_two_atomic_writes_of_one_process_to_one_path_do_not_collide(tmp_path):
    """With a pid-based tmp name the inner write truncated the outer's tmp and the outer rename failed."""
    target = tmp_path / "x.json"
    with atomic_open(target) as outer:
        outer.write("outer")
        atomic_write_text(target, "inner")
        assert target.read_text() == "inner"
    assert target.read_text() == "outer"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_open_failure_keeps_the_old_file_and_removes_the_tmp(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, binary=True) as fh:
            fh.write(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_shard_tmp_never_follows_a_symlink_and_stale_tmps_are_still_cleaned(tmp_path):
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"keep me")
    fs = FeatureCache(tmp_path / "cache").create("f-0123456789", {"config_hash": "0123456789", "kind": "vector"})
    path = new_shard_path(fs, "00000")
    plant(fs.path / ("." + path.name + ".tmp"), victim)  # the name the old code wrote to
    write_shard(path, "vector", [("a", Feature(data=np.ones(3, np.float32)))], [("b", "no audio")])
    assert victim.read_bytes() == b"keep me"
    fs.refresh()
    assert fs.done_ids() == {"a"} and fs.failures() == {"b": "no audio"}
    assert not path.is_symlink()
    # a tmp left by a killed writer under the new naming is removed by the next writer
    import tempfile

    fd, stale = tempfile.mkstemp(dir=fs.path, prefix="." + new_shard_path(fs, "00001").name + ".", suffix=".tmp")
    os.close(fd)
    (fs.path / ("." + path.name + ".tmp")).unlink()
    ShardWriter(fs, "vector")
    assert not os.path.exists(stale)
    assert victim.read_bytes() == b"keep me"


def test_write_shard_failure_leaves_no_tmp_and_no_shard(tmp_path):
    fs = FeatureCache(tmp_path / "cache").create("f-0123456789", {"config_hash": "0123456789", "kind": "vector"})
    path = new_shard_path(fs, "00000")
    with pytest.raises(ValueError):  # rows of different lengths cannot be stacked
        write_shard(path, "vector", [("a", Feature(data=np.ones(3))), ("b", Feature(data=np.ones(4)))], [])
    assert sorted(p.name for p in fs.path.iterdir()) == ["meta.json"]
