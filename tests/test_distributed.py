"""Extraction spread out: a Dask LocalCluster on 127.0.0.1 (2 workers), a worker killed mid-run,
shards + merge, and `cache verify` -- each compared value for value with a plain local run."""
import os
import random
import signal
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from extract import extract
from extract.cache import CacheError, Feature, FeatureCache, put
from extract.cache_merge import merge, verify
from extract.executors import SchedulerError, gpu_assignment, parse_scheduler
from extract.runner import shard_slice
from extract.synth import make_clip

FEATS = "librosa,frame-stats"
pytest.importorskip("distributed")


def values(cache) -> dict:
    c = FeatureCache(cache)
    ids = sorted(c.all_ids())
    out = {}
    for k in c.keys():
        b = c.read(k, ids)
        out[k] = (ids, b.present.copy(), np.asarray(b.data).copy(), sorted(c.feature_set(k).failures().items()))
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        ia, pa, da, fa = a[k]
        ib, pb, db, fb = b[k]
        assert ia == ib and np.array_equal(pa, pb) and fa == fb, k
        assert np.array_equal(da, db, equal_nan=True), k


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("dclips")
    for i in range(8):
        make_clip(d / f"clip {i}.mp4", seconds=0.6 + 0.05 * i, size=(48, 64), freq=150 + 40 * i, seed=i)
    (d / "broken.mp4").write_bytes(b"not media")
    return d


@pytest.fixture(scope="module")
def local_run(clips, tmp_path_factory):
    cache = tmp_path_factory.mktemp("dlocal") / "cache"
    extract(clips, cache, features=FEATS, progress=False)
    return values(cache)


def test_scheduler_and_gpu_assignment_logic():
    assert parse_scheduler(None) is None and parse_scheduler("none") is None
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    with pytest.raises(SchedulerError):
        parse_scheduler("local:zero")
    assert gpu_assignment(4, 2) == ["0", "1", "0", "1"] and gpu_assignment(3, 4) == ["0", "1", "2"]
    with pytest.raises(SchedulerError, match="no CUDA device"):
        gpu_assignment(2, 0)


def test_a_local_dask_cluster_writes_the_same_cache_as_a_local_run(clips, local_run, tmp_path):
    cache = tmp_path / "cache"
    s = extract(clips, cache, features=FEATS, scheduler="local:2", progress=False)
    assert s.workers == 2 and s.retried == 0
    assert_same(values(cache), local_run)


def test_workers_load_the_run_s_models_before_their_first_clip_and_a_bad_model_is_left_to_the_clips():
    from extract import registry, runner
    from extract.executors import DaskExecutor

    registry.load_all()
    good = [registry.build(s) for s in registry.split_specs(FEATS)]
    bad = registry.build("hf-text:model=no/such/model/here")
    want = sorted(ex.key for ex in good)
    ex = DaskExecutor("local:2")
    try:
        ex.warm(runner.warm, [*good, bad])
        assert len(ex._warming) == 2  # one warm-up per worker
        worker, first = ex.first_warm_up(timeout=120)
        assert worker in ex.client.scheduler_info()["workers"] and sorted(first["provenance"]) == want
        for got in ex.client.gather([f for _, f in ex._warming]):  # the bad model did not stop the others
            assert sorted(got["provenance"]) == want and list(got["errors"]) == [bad.key]
            assert all(got["provenance"][k]["key"] == k for k in want)
        loaded = ex.client.run(lambda: sorted(k for k, e in runner._LOADED.items() if e.loaded))
        assert sorted(loaded.values()) == [want, want]
        plugins = ex.client.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert all("moe-emotion-skip-teardown" in v for v in plugins.values())  # our own workers: a fast exit
    finally:
        ex.close()
    ex.close()  # a second close (the run's, then run_extract's) does nothing


def _warm_up_failing_on_moe_0():
    import time as _time

    from distributed import get_worker

    if get_worker().name == "moe-0":  # a misconfigured worker: it reports at once
        return {"provenance": {}, "errors": {"k": "cannot load here"}}
    _time.sleep(1.0)
    return {"provenance": {"k": {"device": "cpu"}}, "errors": {}}


def test_one_worker_that_cannot_load_does_not_decide_for_the_run():
    from extract.executors import DaskExecutor

    ex = DaskExecutor("local:2")
    try:
        names = {addr: w["name"] for addr, w in ex.client.scheduler_info()["workers"].items()}
        ex.warm(_warm_up_failing_on_moe_0)
        worker, got = ex.first_warm_up(timeout=60)
        assert names[worker] == "moe-1" and got["provenance"] == {"k": {"device": "cpu"}}
        ex._warming = [(a, f) for a, f in ex._warming if names[a] == "moe-0"]  # only the broken one left
        worker, got = ex.first_warm_up(timeout=60)
        assert names[worker] == "moe-0" and got["errors"] == {"k": "cannot load here"}
    finally:
        ex.close()


def test_a_dask_client_loads_no_model_and_records_the_provenance_of_the_worker_that_computes(clips, tmp_path):
    from extract import registry
    from extract.runner import run_extract

    registry.load_all()
    local = tmp_path / "local"
    extract(clips, local, features="egemaps", progress=False)
    ex = registry.build("egemaps")
    run_extract(clips, [ex], tmp_path / "dask", scheduler="local:2", progress=False)
    assert not ex.loaded  # openSMILE was loaded by the workers only
    here = FeatureCache(local).feature_set(ex.key).meta
    there = FeatureCache(tmp_path / "dask").feature_set(ex.key).meta
    assert there["computed_by"].startswith("dask worker tcp://127.0.0.1:")
    assert there["channels"] == here["channels"] and len(here["channels"]) == 88
    assert {k: v for k, v in there.items() if k not in ("created", "computed_by")} == \
        {k: v for k, v in here.items() if k != "created"}
    assert_same(values(tmp_path / "dask"), values(local))


def test_a_model_that_no_worker_can_load_is_one_usage_error_naming_the_worker(clips, tmp_path):
    from extract.runner import UsageError

    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "hidden_size": "not a number"}')
    texts = tmp_path / "texts.csv"
    texts.write_text("name,text\n" + "".join(f"clip {i},words {i}\n" for i in range(8)))
    with pytest.raises(UsageError, match=r"hf-text cannot start on worker tcp://127\.0\.0\.1:\d+: "):
        extract(clips, tmp_path / "cache", features=f"hf-text:model={broken}", transcripts=texts,
                scheduler="local:2", progress=False)


def test_a_dask_client_on_a_machine_without_gpu_does_not_import_torch_to_choose_the_device():
    import subprocess
    import sys

    from extract.executors import gpu_visible

    if gpu_visible():
        pytest.skip("a GPU is visible here: auto resolves through torch")
    code = ("import sys; from extract.api import resolved_device; "
            "print(resolved_device('auto', 'local:2'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["cpu", "False"]


def test_an_existing_cluster_s_device_is_read_from_its_workers_not_from_this_machine():
    """A login node without a GPU drives GPU workers: --device cuda is not refused here, auto is
    cuda only when every worker declares a GPU, and cuda is refused when no worker declares one
    (its clips would wait for ever)."""
    from distributed import LocalCluster

    from extract.api import resolved_device
    from extract.runner import UsageError

    def cluster(n, resources=None):
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                            dashboard_address=None, silence_logs=50, resources=resources)

    with cluster(2, {"GPU": 1}) as gpus, cluster(1) as cpus, cluster(0) as empty:
        assert resolved_device("cuda", gpus.scheduler_address) == "cuda"
        assert resolved_device("auto", gpus.scheduler_address) == "cuda"
        assert resolved_device("auto", cpus.scheduler_address) == "cpu"
        assert resolved_device("cpu", gpus.scheduler_address) == "cpu"
        with pytest.raises(UsageError, match="none of the 1 worker.*declares a GPU resource"):
            resolved_device("cuda", cpus.scheduler_address)
        assert resolved_device("auto", empty.scheduler_address) == "cpu"  # nothing to ask yet
        assert resolved_device("cuda", empty.scheduler_address) == "cuda"  # workers with GPUs may come


def test_a_worker_killed_mid_run_loses_nothing_and_writes_nothing_twice(clips, local_run, tmp_path):
    from distributed import Client, LocalCluster

    long_clips = tmp_path / "long"
    long_clips.mkdir()
    for p in clips.iterdir():  # the same clips, plus slow ones so that work is in flight when a worker dies
        os.symlink(p, long_clips / p.name)
    for i in range(4):
        make_clip(long_clips / f"slow {i}.mp4", seconds=25.0, fps=2, size=(32, 32), freq=300 + 20 * i, seed=10 + i)
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      processes=True, silence_logs=50) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        killed = []

        def killer():
            deadline = time.time() + 120
            while time.time() < deadline:  # as soon as both workers are computing
                busy = {a: [k for k in v if str(k).startswith("moe-clip-")] for a, v in client.processing().items()}
                if sum(len(v) for v in busy.values()) >= 2:
                    victim = next(a for a, v in busy.items() if v)
                    os.kill(pids[victim], signal.SIGKILL)
                    killed.append(victim)
                    return
                time.sleep(0.05)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        s = extract(long_clips, tmp_path / "cache", features=FEATS, scheduler=cluster.scheduler_address,
                    progress=False, flush_every=1)
        t.join(5)
        plugins = client.run(lambda dask_worker: list(dask_worker.plugins))
        assert not any("moe-emotion-skip-teardown" in v for v in plugins.values())  # never on a user's cluster
    assert killed, "no worker was killed (nothing was in flight?)"
    assert s.retried >= 1
    got = values(tmp_path / "cache")
    n = len(list(long_clips.iterdir()))
    for k, (ids, present, _, fails) in got.items():
        assert len(ids) == n and present.sum() + len(fails) == n  # every clip once: a value or a failure
    fs = FeatureCache(tmp_path / "cache").feature_set(next(iter(got)))
    import h5py

    seen = []
    for shard in fs.shards():
        with h5py.File(shard, "r") as f:
            seen += list(f["ids"].asstr()[()]) if "ids" in f else []
    assert len(seen) == len(set(seen))  # nothing written twice
    # the clips both runs share hold the same values
    c = FeatureCache(tmp_path / "cache")
    for k, (ids, present, data, _) in local_run.items():
        b = c.read(k, ids)
        assert np.array_equal(b.present, present) and np.array_equal(np.asarray(b.data), data, equal_nan=True), k


def test_shard_slices_are_stable_and_shards_merged_equal_a_single_run(clips, local_run, tmp_path):
    ids = [f"c{i:03d}" for i in range(23)]
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    parts = [shard_slice(shuffled, i, 4) for i in range(1, 5)]
    assert parts == [shard_slice(ids, i, 4) for i in range(1, 5)]
    assert sum(parts, []) == ids and max(map(len, parts)) - min(map(len, parts)) <= 1
    shards = []
    for i in (1, 2, 3):
        res = CliRunner().invoke(cli.main, ["extract", str(clips), "--cache", str(tmp_path / f"shard-{i}"),
                                            "--features", FEATS, "--shard", f"{i}/3", "--no-progress"])
        assert res.exit_code == 0, res.output
        shards.append(tmp_path / f"shard-{i}")
    # shard 2 is run a second time into another cache: its exact duplicates are accepted
    res = CliRunner().invoke(cli.main, ["extract", str(clips), "--cache", str(tmp_path / "shard-2b"),
                                        "--features", FEATS, "--shard", "2/3", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli.main, ["cache", "merge", *map(str, shards), str(tmp_path / "shard-2b"), "--into",
                                        str(tmp_path / "all")])
    assert res.exit_code == 0, res.output
    assert "identical duplicates" in res.output
    assert_same(values(tmp_path / "all"), local_run)
    again = merge([shards[1]], tmp_path / "all")  # re-merging a shard: identical duplicates only
    assert all(r["clips"] == 0 and r["duplicates"] > 0 for r in again.sets.values())
    assert_same(values(tmp_path / "all"), local_run)
    assert verify(tmp_path / "all").ok


def test_merge_refuses_a_clip_with_two_values_and_a_changed_config(tmp_path):
    put(tmp_path / "a", "vec", "vector", {"x": Feature(data=np.ones(3)), "y": Feature(data=np.zeros(3))},
        meta={"config": {"k": 1}})
    put(tmp_path / "b", "vec", "vector", {"x": Feature(data=np.full(3, 2.0))}, meta={"config": {"k": 1}})
    with pytest.raises(CacheError, match="clip 'x' has two different values"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not FeatureCache(tmp_path / "out").keys()
    key = FeatureCache(tmp_path / "a").keys()[0]
    meta = FeatureCache(tmp_path / "b").feature_set(key).path / "meta.json"
    import json

    m = json.loads(meta.read_text())
    m["config"] = {"k": 2}
    meta.write_text(json.dumps(m))
    with pytest.raises(CacheError, match="disagree on config"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "out")


def test_cache_verify_finds_a_damaged_shard(clips, tmp_path):
    cache = tmp_path / "cache"
    extract(clips, cache, features=FEATS, progress=False, flush_every=2)
    res = CliRunner().invoke(cli.main, ["cache", "verify", "--cache", str(cache)])
    assert res.exit_code == 0 and "no problem found" in res.output
    fs = FeatureCache(cache).feature_set(FeatureCache(cache).keys()[0])
    shard = fs.shards()[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    res = CliRunner().invoke(cli.main, ["cache", "verify", "--cache", str(cache)])
    assert res.exit_code == 1 and shard.name in res.output and "Traceback" not in res.output


def test_a_scheduler_address_nothing_listens_on_is_one_clear_message_not_a_20_s_wait(clips, tmp_path, monkeypatch):
    """Dask's connect retries a refused connection for its whole timeout (20 s) and then says only
    "timed out": the probe names what is wrong, whether this process asks the cluster for its device
    (--device auto) or only connects (--device cpu)."""
    import socket

    from extract import executors

    monkeypatch.setattr(executors, "PROBE_SECONDS", 0.5)
    with socket.socket() as s:  # a port that was free a moment ago; nothing listens on it now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for device in ("auto", "cpu"):
        res = CliRunner().invoke(cli.main, ["extract", str(clips), "--cache", str(tmp_path / device),
                                            "--features", FEATS, "--device", device,
                                            "--scheduler", f"tcp://127.0.0.1:{port}"])
        assert res.exit_code != 0 and isinstance(res.exception, (SystemExit, type(None))), res.output
        assert f"nothing listens on 127.0.0.1:{port} (connection refused" in res.output, (device, res.output)
        assert "Traceback" not in res.output and not (tmp_path / device).exists()
    for address, says in ((f"tcp://127.0.0.1:{port}0", "the port must be 1-65535"),
                          ("tcp://no-such-host.invalid:8786", "unknown host 'no-such-host.invalid'")):
        with pytest.raises(SchedulerError, match=says):
            executors.probe_scheduler(address)


def test_without_the_distributed_package_a_scheduler_is_one_clear_message(clips, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    res = CliRunner().invoke(cli.main, ["extract", str(clips), "--cache", str(tmp_path / "cache"),
                                        "--features", FEATS, "--scheduler", "local:2"])
    assert res.exit_code != 0 and isinstance(res.exception, (SystemExit, type(None))), res.output
    assert "needs Dask's distributed package (pip install distributed)" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "cache").exists()
