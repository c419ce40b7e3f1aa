"""export -> recognise: a trained system applied to new clips, consistent with fit + ensemble."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from ensemble import Recogniser, ensemble, export_bundle, open_bundle
from ensemble.bundle import BundleError
from extract.errors import UserError
from extract import extract
from extract.demo_data import CLASSES, _base_face, face_for, make_demo_set, voice_for, write_media
from models import fit
from models.synth import make_synthetic_cache

QUICK = dict(folds=3, epochs=12, patience=4, hidden=32, batch_size=32, threads=1, progress=False)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "crema-d-samples"


def run_cli(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_recognise_gives_the_probabilities_of_fit_and_ensemble_for_cached_clips(tmp_path):
    syn = make_synthetic_cache(tmp_path / "cache", n_labeled=60, n_unlabeled=20, seed=5)
    s1 = fit(syn.cache, syn.labels_csv, ["vec", "lay", "ser"], tmp_path / "s1", **QUICK)
    s2 = fit(syn.cache, syn.labels_csv, ["vec", "ser"], tmp_path / "s2", seeds=(1,), **QUICK)
    ens = ensemble([s1.run_dir, s2.run_dir], tmp_path / "pred.csv", rules=_prior_rules(tmp_path), progress=False)
    bundle = export_bundle([s1.run_dir, s2.run_dir], tmp_path / "model", ensemble_meta=ens.paths["meta"])
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "bundle.json", "runs", "tuning.npz"]
    rec = Recogniser.load(bundle)
    got = {r.clip: r for r in rec.predict_cached(syn.unlabeled, syn.cache)}
    with open(ens.paths["details"], newline="") as fh:
        details = list(csv.DictReader(fh))
    assert len(details) == len(syn.unlabeled)
    for row in details:
        r = got[row["name"]]
        assert r.label == row["discrete"]
        want = np.array([float(row[f"prob_{c}"]) for c in rec.classes])
        np.testing.assert_allclose([r.scores[c] for c in rec.classes], want, atol=1e-6)
        assert abs(r.confidence - float(row["confidence"])) < 1e-5
    card = (bundle / "README.md").read_text()
    assert "## Out-of-fold metrics per member" in card and "## Known limits" in card


def _prior_rules(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - rule: prior_correction\n    target: labeled\n")
    return rules


def test_a_changed_or_missing_bundle_file_is_refused(tmp_path):
    syn = make_synthetic_cache(tmp_path / "cache", n_labeled=45, n_unlabeled=5, seed=6)
    s1 = fit(syn.cache, syn.labels_csv, ["vec"], tmp_path / "s1", **QUICK)
    bundle = export_bundle([s1.run_dir], tmp_path / "model")
    open_bundle(bundle)
    model = next((bundle / "runs" / "run0" / "models").glob("*.pt"))
    model.write_bytes(model.read_bytes()[:-1] + b"x")
    with pytest.raises(BundleError, match=r"runs/run0/models/fold.*\.pt was changed"):
        Recogniser.load(bundle)
    model.unlink()
    with pytest.raises(BundleError, match="is missing"):
        open_bundle(bundle)
    rec = json.loads((bundle / "bundle.json").read_text())
    rec["format"] = "moe-emotion bundle/0"
    (bundle / "bundle.json").write_text(json.dumps(rec))
    with pytest.raises(BundleError, match="bundle format .* is not"):
        open_bundle(bundle)
    res = run_cli("recognise", bundle, tmp_path)
    assert res.exit_code == 1 and "re-export it" in res.output and "Traceback" not in res.output
    # a synthetic feature has no extractor to rebuild: cached clips only, said clearly
    fresh = export_bundle([s1.run_dir], tmp_path / "model2")
    with pytest.raises(BundleError, match="can only predict clips already cached"):
        Recogniser.load(fresh).predict_many([tmp_path])


@pytest.fixture(scope="module")
def media_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("recognise")
    data = make_demo_set(root / "data", labeled_per_class=5, unlabeled_per_class=1, speakers=3)
    cache = root / "cache"
    feats = "librosa,frame-stats"
    extract(data["videos"], cache, features=feats, progress=False)
    s1 = fit(cache, data["labels"], ["librosa", "frame-stats"], root / "s1", groups="speaker", **QUICK)
    ens = ensemble([s1.run_dir], root / "pred.csv", rules="mer2025", annotator=data["annotator"], progress=False)
    res = run_cli("export", s1.run_dir, "--ensemble", ens.paths["meta"], "--out", root / "model")
    assert res.exit_code == 0, res.output
    fresh = root / "fresh"
    fresh.mkdir()
    rng = np.random.default_rng(7)
    base = _base_face()
    frames = np.stack([face_for("happy", rng, base) for _ in range(20)])
    write_media(fresh / "new happy.mp4", frames, fps=10, audio=voice_for("happy", rng, 1.0, 2.0, 16000), rate=16000)
    write_media(fresh / "silent-film.mp4", frames, fps=10)  # no audio track: the audio expert is absent
    (fresh / "broken.mp4").write_bytes(b"not a video at all")
    return {"root": root, "data": data, "cache": cache, "run": s1.run_dir, "model": root / "model", "fresh": fresh}


def test_recognise_new_clips_prints_a_table_and_writes_results(media_world):
    w = media_world
    out = w["root"] / "results.csv"
    res = run_cli("recognise", w["model"], w["fresh"], "--out", out)
    assert res.exit_code == 0, res.output
    assert "new happy" in res.output and "router top-2" in res.output
    assert "annotator_override need annotator answers" in res.output
    assert "3 clips: 2 recognised, 1 failed" in res.output
    with open(out, newline="") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert rows["new happy"]["label"] in CLASSES and float(rows["new happy"]["confidence"]) > 0
    assert rows["silent-film"]["label"] and "librosa" in rows["silent-film"]["absent_experts"]
    assert rows["broken"]["label"] == "" and rows["broken"]["failure"]
    assert len(rows["new happy"]["router_top2"].split(";")) == 2
    assert json.loads(Path(f"{out}.meta.json").read_text())["written_by"] == "recognise"


def test_python_recogniser_on_one_file_with_a_cache_and_abstention(media_world):
    w = media_world
    rec = Recogniser.load(w["model"], annotator=w["data"]["annotator"])
    assert rec.skipped_rules == []
    cache = w["root"] / "rec-cache"
    r = rec.predict(w["fresh"] / "new happy.mp4", cache=cache)
    assert r.clip == "new happy" and r.label in CLASSES and r.failure is None
    assert abs(sum(r.probabilities.values()) - 1) < 1e-6 and len(r.top3) == 3
    assert set(r.experts) == {"librosa", "frame-stats"} and set(r.router) == {"librosa", "frame-stats", "fused"}
    again = rec.predict(w["fresh"] / "new happy.mp4", cache=cache, abstain_below=1.0)
    assert again.abstained and again.scores == r.scores  # the re-run reads the cache
    # clips that were in the fit's cache: the same ids, a prediction each
    ids = [p.stem for p in sorted(w["data"]["videos"].glob("*.mp4"))][:3]
    assert [x.clip for x in rec.predict_cached(ids, w["cache"])] == ids


def test_the_same_file_given_twice_or_inside_a_folder_given_too_is_one_clip(media_world, tmp_path):
    w = media_world
    clip = w["fresh"] / "new happy.mp4"
    with Recogniser.load(w["model"], split=False) as rec:
        alone = rec.predict(clip)
        for paths in ([clip, clip], [clip, w["fresh"]], [w["fresh"], clip]):
            got = {r.clip: r for r in rec.predict_many(paths)}
            assert sorted(got) == (["new happy"] if len(set(map(str, paths))) == 1
                                   else ["broken", "new happy", "silent-film"]), paths
            # one clip alone or in a batch of three: the same scores up to the batch's float rounding
            assert got["new happy"].scores == pytest.approx(alone.scores, abs=1e-6)
        other = tmp_path / "elsewhere"
        other.mkdir()
        (other / "new happy.mp4").write_bytes(clip.read_bytes())  # another file of the same name
        with pytest.raises(UserError, match="both called"):
            rec.predict_many([clip, other / "new happy.mp4"])


def test_a_loaded_recogniser_loads_its_extractors_once_and_close_releases_them(media_world, monkeypatch):
    from extract.registry import Extractor

    loads = []
    real = Extractor.ensure_loaded

    def counting(self):
        if not self.loaded:
            loads.append(self.name)
        return real(self)

    monkeypatch.setattr(Extractor, "ensure_loaded", counting)
    w = media_world
    with Recogniser.load(w["model"], split=False) as rec:  # one process: every load is counted here
        first = rec.predict(w["fresh"] / "new happy.mp4")
        second = rec.predict(w["fresh"] / "new happy.mp4")  # a new temporary cache: extracted again
        assert second.scores == first.scores
        assert sorted(loads) == ["frame-stats", "librosa"]  # once each, not once per call
        assert all(ex.loaded for ex in rec.extractors())
    assert not any(ex.loaded for ex in rec.extractors())
    rec.predict(w["fresh"] / "new happy.mp4")  # still usable: loads again
    assert len(loads) == 4
    rec.close()


def test_the_audio_worker_gives_the_one_process_results_and_ends_with_close(media_world, processes):
    from extract.executors import usable_cores

    if usable_cores() < 2:
        pytest.skip("the audio worker is used only with two usable cores")
    w = media_world
    clips = [w["fresh"]]
    with Recogniser.load(w["model"], split=False) as rec:
        alone = rec.predict_many(clips)
    rec = Recogniser.load(w["model"])
    assert rec._audio_worker is not None and [ex.name for ex in rec._audio_worker.audio] == ["librosa"]
    split = rec.predict_many(clips)
    assert not any(ex.loaded for ex in rec._audio_worker.audio)  # librosa was computed in the worker
    assert [(r.clip, r.scores, r.experts, r.absent) for r in split] == \
        [(r.clip, r.scores, r.experts, r.absent) for r in alone]
    workers = processes.loky_workers()
    assert workers
    rec.close()
    processes.wait_gone(workers, "the audio worker after close()")


def test_the_audio_sets_are_split_so_both_processes_take_as_long():
    from concurrent.futures import Future
    from types import SimpleNamespace

    from ensemble.audio_worker import AudioWorker, balance

    audio = {"whisper": 0.16, "egemaps": 0.04, "librosa": 0.01}
    # whisper alone outweighs the face side: the cheap audio sets move here (which then decodes audio)
    assert balance(audio, rest=0.10, audio_decode=0.005) == {"whisper"}  # 0.155 here vs 0.165 there
    assert balance(audio, rest=0.14, audio_decode=0.005) == {"whisper", "librosa"}
    assert balance(audio, rest=0.17, audio_decode=0.005) == {"whisper", "egemaps"}
    assert balance(audio, rest=0.30, audio_decode=0.005) == set(audio)  # a heavy face side: all there
    assert balance({"librosa": 0.5}, rest=0.0, audio_decode=0.0) == {"librosa"}  # the worker keeps one
    assert balance({"a": 0.1, "b": 0.1}, rest=0.2, audio_decode=0.0) == {"a", "b"}  # a tie: the worker

    ex = {name: SimpleNamespace(key=f"{name}-k") for name in ("whisper", "egemaps", "face-au")}
    w = object.__new__(AudioWorker)
    w.audio, w.rest, w.costs, w.calls, w.balanced = [ex["whisper"], ex["egemaps"]], [ex["face-au"]], {}, {}, True
    w.warming, w.reported = Future(), set()
    w.warming.set_result({"provenance": {}, "errors": {}})  # loaded both
    assert w.plan() == w.audio  # nothing measured yet: every audio set in the worker

    def call(where, extractors, seconds: dict, clips=2):
        done = {e.key: clips for e in extractors}
        w._seen(SimpleNamespace(done=done, decoded=clips, compute_seconds=seconds), extractors, where)

    worker = {"whisper-k": 0.1, "egemaps-k": 0.1, "decode": 0.02}  # 0.05 + 0.05 + 0.01 per clip
    call("decode audio", w.audio, {**worker, "whisper-k": 9.0})  # the first call: loading, not kept
    call("decode here", w.rest, {"face-au-k": 9.0, "decode": 0.04})
    assert w.costs == {} and w.plan() == w.audio
    call("decode audio", w.audio, worker)
    call("decode here", w.rest, {"face-au-k": 0.2, "decode": 0.04})
    assert w.costs == {"whisper-k": 0.05, "egemaps-k": 0.05, "decode audio": 0.01, "face-au-k": 0.1,
                       "decode here": 0.02}
    assert w.plan() == w.audio  # 0.11 there vs 0.12 here: moving eGeMAPS would make it 0.18 here
    call("decode audio", w.audio, {**worker, "whisper-k": 0.3})  # whisper now 0.15 per clip
    assert w.plan() == [ex["whisper"]]  # 0.16 there, 0.18 here, against 0.21 all there
    w.balanced = False
    assert w.plan() == w.audio
    w.balanced = True
    call("decode here", [ex["egemaps"]], {"egemaps-k": 9.0, "decode": 0.06})  # its first run here: not kept
    assert w.costs["egemaps-k"] == 0.05
    # this process decoded audio too (eGeMAPS ran here): its decoding is not this process's own
    call("decode here", [ex["face-au"], ex["egemaps"]], {"face-au-k": 0.2, "egemaps-k": 0.1, "decode": 0.06})
    assert w.costs["decode here"] == 0.02 and w.costs["egemaps-k"] == 0.05


def test_sets_the_audio_worker_could_not_load_are_computed_here(monkeypatch, tmp_path):
    """The worker's warm-up reports a model it could not load: from then on that set is planned in
    this process (which gives one process's usage error if it cannot load it either), said once."""
    import logging
    from concurrent.futures import Future
    from types import SimpleNamespace

    from ensemble.audio_worker import AudioWorker

    ex = {name: SimpleNamespace(key=f"{name}-k", name=name) for name in ("whisper", "egemaps", "face-au")}
    w = object.__new__(AudioWorker)
    w.audio, w.rest, w.costs, w.calls, w.balanced, w.reported = [ex["whisper"], ex["egemaps"]], [ex["face-au"]], \
        {}, {}, True, set()
    w.warming = Future()
    assert w.plan() == w.audio  # still warming up: every audio set there
    w.warming.set_result({"provenance": {"egemaps-k": {}}, "errors": {"whisper-k": "no model at /gone"}})
    log = logging.getLogger("moe.ensemble")  # the tool's logger may not propagate (extract/logs.py)
    records: list = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    log.addHandler(handler)
    try:
        assert w.plan() == [ex["egemaps"]] and w.plan() == [ex["egemaps"]]
    finally:
        log.removeHandler(handler)
    said = [r.getMessage() for r in records if "cannot load" in r.getMessage()]
    assert len(said) == 1 and "whisper-k" in said[0] and "/gone" in said[0]
    # a set the worker could not load on its first clips (its warm-up not read yet): computed here
    from extract import executors
    from extract.runner import UsageError

    class Pool:
        def submit(self, *args):
            f = Future()
            f.set_exception(UsageError("egemaps cannot start: no openSMILE here"))
            return f

    ran = []
    w.reported, w.decode = {"whisper-k"}, None
    monkeypatch.setattr(executors, "local_pool", lambda n: Pool())
    w.extract([tmp_path], tmp_path / "cache", lambda folder, exs, cache: ran.append([e.name for e in exs]) or
              SimpleNamespace(done={}, decoded=0, compute_seconds={}))
    assert ran == [["face-au", "whisper"], ["egemaps"]]
    died = object.__new__(AudioWorker)
    died.audio, died.rest, died.costs, died.calls, died.balanced, died.reported = w.audio, w.rest, {}, {}, True, set()
    died.warming = Future()
    died.warming.set_exception(RuntimeError("worker died"))
    assert died.plan() == w.audio  # a dead worker is the broken pool's case, not a set it cannot load


def test_closing_one_recogniser_leaves_the_worker_another_one_uses(media_world, processes):
    from extract.executors import usable_cores

    if usable_cores() < 2:
        pytest.skip("the audio worker is used only with two usable cores")
    w = media_world
    first, second = Recogniser.load(w["model"]), Recogniser.load(w["model"])
    want = first.predict(w["fresh"])
    workers = processes.loky_workers()
    assert workers
    first.close()
    got = second.predict(w["fresh"])  # in the same worker, models still loaded
    assert processes.loky_workers() == workers and all(p.is_running() for p in workers)
    assert (got.scores, got.absent) == (want.scores, want.absent)
    second.close()
    processes.wait_gone(workers, "the audio worker after the last Recogniser's close()")


def test_a_recogniser_that_fails_to_load_ends_the_audio_worker_it_started(media_world, processes, tmp_path):
    from extract import executors

    if executors.usable_cores() < 2:
        pytest.skip("the audio worker is used only with two usable cores")
    executors.stop_local_workers()  # workers an earlier test left waiting
    processes.wait_gone(processes.loky_workers(), "an earlier test's workers")
    bad = tmp_path / "answers.csv"
    bad.write_text("not,an,annotator\n\x00\n")
    with pytest.raises(Exception) as err:
        Recogniser.load(media_world["model"], annotator=bad)
    assert "answers.csv" in str(err.value)
    processes.wait_gone(processes.loky_workers(), "the audio worker of a Recogniser that failed to load",
                        seconds=10)


def test_recognising_a_folder_over_two_processes_gives_the_same_results(media_world, processes):
    """`recognise --jobs 2` (clips split between this process and a worker) must not change a value."""
    w = media_world
    with Recogniser.load(w["model"]) as rec:
        one = rec.predict_many([w["fresh"]])
        two = rec.predict_many([w["fresh"]], jobs=2)
        workers = processes.loky_workers()
        assert workers  # the worker waits, models loaded, for the next call
    # closing the Recogniser ends it (it would linger 2 minutes)
    processes.wait_gone(workers, "a worker outlived Recogniser.close()")
    assert [r.clip for r in two] == [r.clip for r in one] == ["broken", "new happy", "silent-film"]
    for a, b in zip(one, two):
        assert (a.label, a.scores, a.probabilities, a.absent, a.failure) == (b.label, b.scores, b.probabilities,
                                                                             b.absent, b.failure)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/crema-d-samples is not here")
def test_recognise_real_crema_d_clips(media_world, tmp_path):
    clips = sorted(p for p in SHARED.rglob("*") if p.suffix.lower() in (".mp4", ".flv", ".avi", ".wav", ".mkv"))[:6]
    assert clips, f"no media in {SHARED}"
    rec = Recogniser.load(media_world["model"])
    links = tmp_path / "crema"
    links.mkdir()
    for p in clips:
        os.symlink(p, links / p.name)
    results = rec.predict_many([links])
    assert len(results) == len(clips)
    assert all(r.label in CLASSES and r.failure is None for r in results)
    assert all("librosa" not in r.absent for r in results)  # real clips with a voice
