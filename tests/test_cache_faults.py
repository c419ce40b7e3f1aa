"""Faults around the cache (issue 12, items 6-8): a full disk or a cache that turns read-only
mid-run ends with one message and a resume that completes the cache; readers survive a compaction
running in another process; a kill in compaction's last phase leaves dims in meta.json and a state
the next run finishes instead of merging twice. Media is made here with PyAV."""
import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
import extract.cache as cache_mod
from extract.cache import (CacheError, CacheWriteError, Feature, FeatureCache, FeatureSet, ShardWriter, compact,
                           is_merged, new_shard_path, put, write_shard)
from extract.synth import make_clip

ROOT = Path(__file__).resolve().parents[1]
FEATS = "librosa,frame-stats"
N = 6


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults") / "v"
    for i in range(N):
        make_clip(d / f"c{i}.mp4", seconds=0.6, size=(48, 64), freq=140 + 40 * i, seed=i)
    return d


@pytest.fixture(scope="module")
def clean(videos, tmp_path_factory):
    """A clean run's cache: what every faulty run plus its resume must equal."""
    cache = tmp_path_factory.mktemp("clean") / "cache"
    res = extract_cli(videos, cache)
    assert res.exit_code == 0, res.output
    return cache


def extract_cli(videos, cache, *extra):
    return CliRunner().invoke(cli.main, ["extract", str(videos), "--cache", str(cache), "--features", FEATS,
                                         "--no-progress", "--flush-every", "1", *extra])


def values(cache) -> dict:
    c = FeatureCache(cache)
    ids = [f"c{i}" for i in range(N)]
    return {k: c.read(k, ids) for k in c.keys()}


def assert_same_values(cache, clean_cache):
    got, want = values(cache), values(clean_cache)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].present.all(), k
        assert np.array_equal(got[k].data, want[k].data, equal_nan=True), k
    for k in FeatureCache(cache).keys():  # every shard on disk is whole, no tmp file is left
        fs = FeatureSet(Path(cache) / k)
        assert fs.meta.get("dims"), k
        assert not list(fs.path.glob(".part-*"))


def one_error_line(output: str) -> str:
    assert "Traceback" not in output and "During handling" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: cache ")
    return lines[0]


# -- item 6: disk full, read-only cache ---------------------------------------------------------


def loky_workers():
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def fail_after(monkeypatch, name: str, n_ok: int, code: int, only=lambda *a: True):
    """extract.cache.<name> works ``n_ok`` times (calls ``only`` accepts), then raises OSError(code)."""
    real = getattr(cache_mod, name)
    calls = []

    def patched(*args, **kw):
        if only(*args):
            calls.append(args)
            if len(calls) > n_ok:
                raise OSError(code, os.strerror(code))
        return real(*args, **kw)

    monkeypatch.setattr(cache_mod, name, patched)
    return calls


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_disk_full_after_the_first_shard_is_one_message_and_a_resume_completes(videos, clean, tmp_path, monkeypatch,
                                                                              jobs):
    import psutil

    cache = tmp_path / "cache"
    fail_after(monkeypatch, "_write_all", 1, errno.ENOSPC)  # the bytes of a shard: only the first fits
    res = extract_cli(videos, cache, "--jobs", jobs)
    assert res.exit_code == 1
    line = one_error_line(res.output)
    assert f"cache {cache}: no space left on device while writing shard {cache}/" in line
    assert "1 clips written so far in this run are safe" in line and "free space" in line and "re-run" in line
    if jobs == "2":  # the workers were stopped, not left computing
        assert psutil.wait_procs(loky_workers(), timeout=10)[1] == []
    c = FeatureCache(cache)
    done = [c.feature_set(k).done_ids() for k in c.keys()]
    # what was written is readable: one clip (c0 with --jobs 1; with --jobs 2 whichever finished first)
    assert sum(len(d) for d in done) == 1 and ({"c0"} in done or jobs == "2")
    monkeypatch.undo()
    again = extract_cli(videos, cache, "--jobs", jobs)
    assert again.exit_code == 0, again.output
    assert "already cached" in again.output
    assert_same_values(cache, clean)


@pytest.mark.parametrize("code, cause, advice", [
    (errno.EROFS, "read-only file system", "make the cache writable"),
    (errno.EACCES, "permission denied", "make the cache writable"),
    (errno.EDQUOT, "disk quota exceeded", "free space (or raise the quota)"),
])
def test_cache_refusing_writes_mid_run_is_one_message_and_a_resume_completes(videos, clean, tmp_path, monkeypatch,
                                                                            code, cause, advice):
    """chmod 0o555 does not stop root (the tests' user), so the refusal is made where the cache
    creates every new file (shards and meta.json): after two of them, each new file fails."""
    cache = tmp_path / "cache"
    extract_cli(videos, cache)  # a complete cache, then a new feature set refused mid-run
    more = FEATS + ",egemaps"
    fail_after(monkeypatch, "_mkstemp_beside", 2, code)
    res = CliRunner().invoke(cli.main, ["extract", str(videos), "--cache", str(cache), "--features", more,
                                        "--no-progress", "--flush-every", "1"])
    assert res.exit_code == 1
    line = one_error_line(res.output)
    assert f"cache {cache}: {cause} while writing " in line and advice in line
    assert "clips written so far in this run are safe" in line
    monkeypatch.undo()
    again = CliRunner().invoke(cli.main, ["extract", str(videos), "--cache", str(cache), "--features", more,
                                          "--no-progress"])
    assert again.exit_code == 0, again.output
    c = FeatureCache(cache)
    assert c.feature_set(c.resolve("egemaps")).done_ids() == {f"c{i}" for i in range(N)}
    assert c.feature_set(c.resolve("egemaps")).meta["dims"]
    want, got = values(clean), values(cache)
    for k in want:
        assert np.array_equal(got[k].data, want[k].data, equal_nan=True)


def test_refused_meta_json_and_compaction_are_one_message_and_resume(videos, clean, tmp_path, monkeypatch):
    from extract.runner import run_extract
    from extract.registry import build, load_all

    load_all()
    cache = tmp_path / "cache"

    def exs():
        return [build(s) for s in FEATS.split(",")]

    # the dims written to meta.json after the first shard: refused
    fail_after(monkeypatch, "_mkstemp_beside", 0, errno.ENOSPC,
               only=lambda path: path.name == "meta.json" and path.exists())
    with pytest.raises(CacheWriteError) as err:
        run_extract(videos, exs(), cache, flush_every=1, progress=False)
    assert f"no space left on device while writing {cache}/" in str(err.value) and "meta.json" in str(err.value)
    assert "clips written so far in this run are safe" in str(err.value)
    monkeypatch.undo()
    # compaction's merged shard: refused; every small shard stays, nothing is lost
    fail_after(monkeypatch, "_write_new_file", 0, errno.ENOSPC, only=lambda path, image: is_merged(path))
    with pytest.raises(CacheWriteError, match="no space left on device while writing shard .*-compact.h5"):
        run_extract(videos, exs(), cache, flush_every=1, progress=False, compact_min_shards=2)
    assert_same_values(cache, clean)
    monkeypatch.undo()
    # compaction's delete step: refused after the merged shard is written
    real_unlink = Path.unlink

    def refused(self, missing_ok=False):
        if self.name.startswith("part-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    with pytest.raises(CacheWriteError, match="read-only file system while deleting the shards merged into"):
        run_extract(videos, exs(), cache, flush_every=1, progress=False, compact_min_shards=2)
    assert_same_values(cache, clean)
    monkeypatch.undo()
    summary = run_extract(videos, exs(), cache, flush_every=1, progress=False, compact_min_shards=2)
    assert summary.skipped == N
    for k in FeatureCache(cache).keys():
        assert len(FeatureSet(cache / k).shards()) == 1
    assert_same_values(cache, clean)


def test_read_only_cache_from_the_start_is_one_message(videos, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def refused(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(cache))

    monkeypatch.setattr(Path, "mkdir", refused)
    res = extract_cli(videos, cache)
    assert res.exit_code == 1
    line = one_error_line(res.output)
    assert f"cache {cache}: read-only file system while opening its log" in line and "nothing was written" in line


def _tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_a_really_full_disk_tmpfs(videos, clean, tmp_path):
    """A real ENOSPC, in a tiny tmpfs (root only; skipped where it cannot be mounted)."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    if not _tmpfs(mnt, "1m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * (free - 48 * 1024))  # room for meta.json and a few shards
        cache = mnt / "cache"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cmd = [sys.executable, str(ROOT / "cli.py"), "extract", str(videos), "--cache", str(cache), "--features",
               FEATS, "--flush-every", "1", "--no-progress"]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stdout + done.stderr
        line = one_error_line(done.stderr)
        assert "no space left on device while " in line and "free space" in line
        assert "double free" not in done.stderr and "corrupted" not in done.stderr
        (mnt / "filler").unlink()
        again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert_same_values(cache, clean)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# -- item 7: readers vs compaction ----------------------------------------------------------------


def small_set(root, n=12, kind="vector"):
    fs = FeatureCache(root).create("toy-0", {"kind": kind, "config_hash": "0"})
    w = ShardWriter(fs, kind)
    for i in range(n):
        if kind == "series":
            w.add(f"c{i:02d}", Feature(data=np.full((2 + i % 3, 2), i, np.float32), timestamps=np.arange(2 + i % 3)))
        else:
            w.add(f"c{i:02d}", Feature(data=np.full(3, i, np.float32)))
        w.flush()
    w.fail("bad", "no audio stream")
    w.flush()
    return fs


@pytest.mark.parametrize("kind", ["vector", "series"])
def test_read_after_a_compaction_by_another_object_gets_the_same_values(tmp_path, kind):
    fs = small_set(tmp_path, kind=kind)
    ids = sorted(fs.done_ids())  # the reader has listed the shards (and indexed them)
    before = FeatureSet(fs.path).read(ids)
    assert compact(FeatureSet(fs.path), min_shards=4) == 13  # another process, as far as the reader knows
    after = fs.read(ids)
    assert after.present.all() and np.array_equal(after.data, before.data)
    assert fs.failures() == {"bad": "no audio stream"}


def test_a_shard_vanishing_between_listing_and_opening_is_retried_not_reported(tmp_path, monkeypatch):
    fs = small_set(tmp_path)
    want = FeatureSet(fs.path).read(sorted(fs.done_ids())).data
    stale = fs.shards()
    compact(FeatureSet(fs.path), min_shards=4)
    listings = []
    real = FeatureSet.shards

    def listing(self):  # the first listing is the one made before the compaction
        listings.append(1)
        return stale if len(listings) == 1 else real(self)

    monkeypatch.setattr(FeatureSet, "shards", listing)
    reader = FeatureSet(fs.path)
    assert reader.done_ids() == {f"c{i:02d}" for i in range(12)} and len(listings) == 2
    assert np.array_equal(reader.read(sorted(reader.done_ids())).data, want)
    listings.clear()
    assert FeatureSet(fs.path).sources() == {} and len(listings) == 2
    # cache info in the same race: no error, no advice to delete anything
    listings.clear()
    info = CliRunner().invoke(cli.main, ["cache", "info", "--cache", str(tmp_path)])
    assert info.exit_code == 0, info.output
    assert "clips 12, failed 1, shards 1" in info.output and "vector 3" in info.output


def test_a_set_that_keeps_changing_is_a_bounded_retry_without_delete_advice(tmp_path, monkeypatch):
    fs = small_set(tmp_path, n=2)
    monkeypatch.setattr(FeatureSet, "shards", lambda self: [self.path / "part-gone-1-00000.h5"])
    monkeypatch.setattr(cache_mod.time, "sleep", lambda s: None)
    with pytest.raises(CacheError) as err:
        FeatureSet(fs.path).done_ids()
    assert "changed 5 times while being read" in str(err.value) and "delete" not in str(err.value)


def test_a_shard_that_is_there_but_unreadable_is_still_reported(tmp_path):
    fs = small_set(tmp_path, n=2)
    (fs.path / "part-00000000000000000000000-1-00000.h5").write_bytes(b"not hdf5" * 100)
    with pytest.raises(CacheError) as err:
        FeatureSet(fs.path).done_ids()
    assert "is unreadable" in str(err.value) and "delete it and re-run extract" in str(err.value)
    res = CliRunner().invoke(cli.main, ["cache", "info", "--cache", str(tmp_path)])
    assert res.exit_code == 1 and "is unreadable" in res.output and "Traceback" not in res.output


# -- item 8: a kill in compaction's last phase ----------------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no except Exception catches it)."""


def test_kill_after_the_merged_shard_appears_keeps_dims_and_the_resume_does_not_merge_twice(videos, clean, tmp_path,
                                                                                         monkeypatch):
    from extract.registry import build, load_all
    from extract.runner import run_extract

    load_all()
    cache = tmp_path / "cache"

    def killed(*a, **k):
        raise Killed()

    monkeypatch.setattr(cache_mod, "_delete_merged", killed)
    with pytest.raises(Killed):
        run_extract(videos, [build(s) for s in FEATS.split(",")], cache, flush_every=1, progress=False,
                    compact_min_shards=2)
    monkeypatch.undo()
    c = FeatureCache(cache)
    lib = c.feature_set(c.resolve("librosa"))  # killed while deleting librosa's merged shards
    assert sum(is_merged(s) for s in lib.shards()) == 1 and len(lib.shards()) == N + 1
    for key in c.keys():  # dims are in meta.json all the same
        assert c.feature_set(key).meta["dims"]
    info = CliRunner().invoke(cli.main, ["cache", "info", "--cache", str(cache)])
    assert "vector 298)" in info.output and "series 3x6)" in info.output and " ?)" not in info.output
    assert_same_values(cache, clean)  # readers keep one copy of each clip
    summary = run_extract(videos, [build(s) for s in FEATS.split(",")], cache, flush_every=1, progress=False,
                          compact_min_shards=2)
    assert summary.skipped == N and summary.decoded == 0
    for key in c.keys():  # the interrupted compaction was finished: its sources deleted, not merged again
        shards = c.feature_set(key).shards()
        assert len(shards) == 1 and is_merged(shards[0])
    assert_same_values(cache, clean)


def old_kill_state(root):
    """The state the previous version left after a kill in its last phase, rebuilt from files: a
    merged shard that does not list its sources, beside those sources, and meta.json without dims;
    then the resume that version ran wrote a second merged shard with the same clips."""
    fs = small_set(root)
    meta = dict(fs.meta)
    meta.pop("dims")
    fs.write_meta(meta)
    ids = sorted(fs.done_ids())
    batch = fs.read(ids)
    items = [(cid, Feature(data=batch.data[i])) for i, cid in enumerate(ids)]
    write_shard(new_shard_path(fs, "compact"), "vector", items, [("bad", "no audio stream")], {"compacted_from": 13})
    return fs, items


def test_state_left_by_the_previous_version_is_read_right_and_compacted_once(tmp_path):
    fs, items = old_kill_state(tmp_path)
    assert len(fs.shards()) == 14
    reader = FeatureSet(fs.path)
    assert reader.dims() == [3] and "dims" not in reader.meta
    absent = reader.read(["nope", "bad"])  # a modality missing for every asked id: the right width, NaN
    assert absent.data.shape == (2, 3) and np.isnan(absent.data).all() and not absent.present.any()
    info = CliRunner().invoke(cli.main, ["cache", "info", "--cache", str(tmp_path)])
    assert "vector 3)" in info.output and "vector ?" not in info.output
    # the second merged shard that version's resume wrote: same clips, same values
    write_shard(new_shard_path(fs, "compact"), "vector", items, [], {"compacted_from": 13})
    assert sum(is_merged(s) for s in fs.shards()) == 2
    want = FeatureSet(fs.path).read([cid for cid, _ in items]).data
    assert compact(FeatureSet(fs.path), min_shards=16) == 15  # the duplicates are merged, though few shards
    after = FeatureSet(fs.path)
    assert len(after.shards()) == 1
    assert np.array_equal(after.read([cid for cid, _ in items]).data, want)
    assert after.failures() == {"bad": "no audio stream"}
    after.ensure_dims()
    assert FeatureSet(fs.path).meta["dims"] == [3]
    assert compact(FeatureSet(fs.path), min_shards=16) == 0  # nothing left to do


def test_merged_shards_are_merged_too_once_there_are_min_shards_of_them(tmp_path):
    import h5py

    fs = FeatureCache(tmp_path).create("toy-0", {"kind": "vector", "config_hash": "0"})
    w = ShardWriter(fs, "vector")
    for run in range(4):  # four runs, each writing three small shards and compacting them
        for i in range(3):
            w.add(f"r{run}c{i}", Feature(data=np.full(2, run * 10 + i, np.float32)))
            w.flush()
        merged = compact(fs, min_shards=3)
        if run < 3:  # fewer than 3 merged shards so far: they are left alone
            assert merged == 3 and [is_merged(s) for s in fs.shards()] == [True] * (run + 1)
    assert merged == 6 and len(fs.shards()) == 1  # 3 small + 3 merged shards: one
    batch = fs.read([f"r{r}c{i}" for r in range(4) for i in range(3)])
    assert batch.data[:, 0].tolist() == [r * 10 + i for r in range(4) for i in range(3)]
    with h5py.File(fs.shards()[0], "r") as f:
        assert len(f["merged_from"]) == 6


def test_dims_are_in_meta_json_as_soon_as_the_first_shard_is_written(tmp_path):
    fs = FeatureCache(tmp_path).create("toy-0", {"kind": "layers", "config_hash": "0"})
    w = ShardWriter(fs, "layers")
    w.fail("x", "too short")
    w.flush()
    assert "dims" not in FeatureSet(fs.path).meta  # no data yet: nothing to know
    w.add("a", Feature(data=np.zeros((4, 5), np.float32)))
    w.flush()
    assert FeatureSet(fs.path).meta["dims"] == [4, 5]
    assert json.loads((fs.path / "meta.json").read_text())["config_hash"] == "0"
    key = put(tmp_path, "rec", "record", {"a": Feature(record={"t": 1})})
    assert FeatureCache(tmp_path).feature_set(key).dims() is None
