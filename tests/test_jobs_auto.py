"""--jobs auto: one process per usable core, bounded by memory and by the clips to compute."""
from collections import namedtuple

import pytest

from extract import executors
from extract.api import ExtractConfig
from extract.runner import UsageError


@pytest.fixture
def machine(monkeypatch):
    def set_(cores: int, gib: float):
        monkeypatch.setattr(executors, "usable_cores", lambda: cores)
        import psutil

        mem = namedtuple("mem", "available")
        monkeypatch.setattr(psutil, "virtual_memory", lambda: mem(int(gib * 2 ** 30)))
    return set_


def test_auto_is_one_per_core_for_a_long_run(machine):
    machine(cores=8, gib=64)
    assert executors.resolve_jobs("auto", 10_000) == 8
    assert executors.resolve_jobs(3, 10_000) == 3  # a number is taken as given
    assert executors.resolve_jobs(3, 1) == 1 and executors.resolve_jobs(3, 0) == 1  # no worker for one clip


def test_auto_is_one_process_for_a_short_run_or_a_gpu(machine, monkeypatch):
    machine(cores=8, gib=64)
    assert executors.resolve_jobs("auto", executors.AUTO_MIN_CLIPS - 1) == 1
    assert executors.resolve_jobs("auto", 10_000, device="cuda") == 1
    monkeypatch.setattr(executors, "gpu_visible", lambda: True)  # --device auto on a machine with a GPU
    assert executors.resolve_jobs("auto", 10_000, device="auto") == 1
    monkeypatch.setattr(executors, "gpu_visible", lambda: False)
    assert executors.resolve_jobs("auto", 10_000, device="auto") == 8
    # enough clips for two processes, not for eight
    assert executors.resolve_jobs("auto", 2 * executors.AUTO_CLIPS_PER_PROCESS + 1) == 2


def test_auto_is_bounded_by_available_memory(machine):
    machine(cores=16, gib=3 * executors.AUTO_GIB_PER_PROCESS + 0.5)
    assert executors.resolve_jobs("auto", 10_000) == 3
    machine(cores=16, gib=0.5)
    assert executors.resolve_jobs("auto", 10_000) == 1


def test_usable_cores_follows_the_affinity_mask():
    import os

    assert executors.usable_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", [0, -1, "two", 1.5, True])
def test_bad_jobs_values_are_usage_errors(value):
    with pytest.raises(UsageError, match="--jobs must be auto or an integer >= 1"):
        ExtractConfig(jobs=value).validate()


def test_default_is_auto():
    assert ExtractConfig().jobs == "auto"
    ExtractConfig().validate()


def test_local_workers_load_before_the_first_clip_and_stop_when_the_run_ends_without_one(processes):
    """--jobs N starts its workers first, each loading the run's models while the main process checks
    (the second core sat idle meanwhile); a run that stops before any clip (a usage error found by
    that check) leaves no worker behind."""
    import os

    import psutil

    from extract import registry, runner

    registry.load_all()
    exs = [registry.build("egemaps")]
    ex = executors.LocalExecutor(2)
    worker = None
    try:
        ex.warm(runner.warm, exs, os.getpid(), None)
        got = ex._warming[0].result(timeout=120)
        assert list(got["provenance"]) == [exs[0].key] and not got["errors"]
        assert len(got["provenance"][exs[0].key]["channels"]) == 88
        assert not exs[0].loaded  # loaded in the worker, not here
        worker = ex._pool.submit(os.getpid).result(timeout=60)
        assert worker != os.getpid()
    finally:
        ex.close()  # nothing was mapped: the run stopped before its first clip
    if worker is not None:
        processes.wait_gone([psutil.Process(worker)], "the warmed-up worker outlived the run")


def test_a_run_refused_before_its_first_clip_leaves_no_worker(tmp_path, processes):
    """The workers start before the checks; a cache that refuses the run then (a hand-edited
    meta.json) must not leave them waiting with their models loaded."""
    import json

    from extract import extract
    from extract.cache import CacheError, FeatureCache
    from extract.synth import make_clip

    clips = tmp_path / "clips"
    for i in range(2):
        make_clip(clips / f"a{i}.mp4", seconds=0.5, size=(32, 32), freq=200 + 50 * i, seed=i)
    cache = tmp_path / "cache"
    extract(clips, cache, features="librosa", progress=False, jobs=1)
    fs = FeatureCache(cache).feature_set(FeatureCache(cache).keys()[0])
    meta = json.loads((fs.path / "meta.json").read_text())
    (fs.path / "meta.json").write_text(json.dumps(dict(meta, config_hash="0" * 10)))
    make_clip(clips / "a2.mp4", seconds=0.5, size=(32, 32), freq=400, seed=2)
    make_clip(clips / "a3.mp4", seconds=0.5, size=(32, 32), freq=450, seed=3)

    executors.stop_local_workers()  # no pool of an earlier run in this process: the run starts its own
    before = {p.pid for p in processes.loky_workers()}
    with pytest.raises(CacheError, match="edited by hand"):
        extract(clips, cache, features="librosa", progress=False, jobs=2)
    started = [p for p in processes.loky_workers() if p.pid not in before]
    processes.wait_gone(started, "a worker outlived the refused run")
