"""`cli.py extract` / `features` / `cache info` end to end, on media made here with PyAV."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from extract import media
from extract.cache import FeatureCache
from extract.registry import Extractor
from extract.runner import load_transcripts
from extract.synth import make_clip, tone, write_media

ROOT = Path(__file__).resolve().parents[1]
FEATS = "librosa,frame-stats"


def run(args, **kw):
    result = CliRunner().invoke(cli.main, args, catch_exceptions=False, **kw)
    return result


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    for i in range(4):
        make_clip(d / f"clip{i}.mp4", seconds=0.6 + 0.1 * i, size=(48, 64), freq=150 + 60 * i, seed=i)
    make_clip(d / "speech only.wav", seconds=0.8, video=False, rate=22050)
    return d


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    make_clip(d / "ok.mp4", seconds=0.6, size=(48, 64))
    (d / "zero.mp4").write_bytes(b"")
    (d / "notmedia.mkv").write_text("hello, I am a text file\n" * 40)
    good = make_clip(d / "trunc_src.mp4", seconds=1.0, size=(48, 64)).read_bytes()
    (d / "trunc_src.mp4").unlink()
    (d / "corrupt.mp4").write_bytes(good[:200] + os.urandom(2000))
    make_clip(d / "silent_video.mp4", seconds=0.6, size=(48, 64), audio=False)  # no audio stream
    write_media(d / "audio_only.mp4", audio=tone(0.6, 16000), rate=16000)  # no video stream (MER2024 has such)
    write_media(d / "tiny.wav", audio=tone(0.05, 16000), rate=16000)  # shorter than 0.1 s
    make_clip(d / "long one.mp4", seconds=20.0, fps=5, size=(32, 32))
    make_clip(d / "sub" / "émotion 日本.webm", seconds=0.6, size=(48, 64), rate=48000)
    make_clip(d / "dup.mp4", seconds=0.4, size=(48, 64))
    make_clip(d / "dup.wav", seconds=0.4, video=False)
    return d


def test_bad_inputs_are_recorded_and_the_run_goes_on(bad_dir, tmp_path):
    cache = tmp_path / "cache"
    res = run(["extract", str(bad_dir), "--cache", str(cache), "--features", FEATS, "--no-progress",
               "--max-frames", "8"])
    assert res.exit_code == 0, res.output
    c = FeatureCache(cache)
    lib = c.feature_set(c.resolve("librosa"))
    fst = c.feature_set(c.resolve("frame-stats"))
    assert {"ok", "silent_video", "long one", "sub/émotion 日本"} <= fst.done_ids()
    assert {"ok", "audio_only", "long one", "sub/émotion 日本"} <= lib.done_ids()
    lf, ff = lib.failures(), fst.failures()
    assert "empty file" in lf["zero"] and "empty file" in ff["zero"]
    assert "decode failed" in lf["notmedia"] and "decode failed" in lf["corrupt"] or "corrupt" in lib.done_ids()
    assert lf["silent_video"] == "no audio stream"
    assert ff["audio_only"] == "no video stream"
    assert "too short" in lf["tiny"]
    assert "ambiguous clip id" in lf["dup"] and "dup.mp4" in lf["dup"] and "dup.wav" in lf["dup"]
    long_series = c.read(fst.key, ["long one"])
    assert long_series.lengths[0] == 8 and long_series.timestamps[0, 7] > 15  # capped, spread
    # the summary lists failures, and cache info shows them with their causes
    assert "no audio stream" in res.output and "failures" in res.output
    info = run(["cache", "info", "--cache", str(cache), "--failures"])
    assert info.exit_code == 0
    assert "silent_video: no audio stream" in info.output and "zero: decode failed: empty file" in info.output
    data = json.loads(run(["cache", "info", "--cache", str(cache), "--json"]).output)
    assert {d["extractor"] for d in data} == {"librosa", "frame-stats"}
    lib_meta = next(d for d in data if d["extractor"] == "librosa")
    assert lib_meta["libraries"]["librosa"] and lib_meta["config"]["n_mfcc"] == 20 and lib_meta["dims"] == [298]
    # --strict turns recorded failures into a non-zero exit (nothing is recomputed: all cached)
    strict = run(["extract", str(bad_dir), "--cache", str(cache), "--features", FEATS, "--no-progress",
                  "--max-frames", "8", "--strict"])
    assert strict.exit_code == 1


def test_everything_failing_exits_nonzero(tmp_path):
    d = tmp_path / "v"
    d.mkdir()
    (d / "a.mp4").write_bytes(b"")
    res = run(["extract", str(d), "--cache", str(tmp_path / "c"), "--features", "librosa", "--no-progress"])
    assert res.exit_code == 1 and "empty file" in res.output


def test_unchanged_rerun_decodes_nothing_and_new_feature_only_computes_itself(good_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = run(["extract", str(good_dir), "--cache", str(cache), "--features", "librosa", "--no-progress"])
    assert first.exit_code == 0 and "0 already cached, 5 decoded" in first.output
    c = FeatureCache(cache)
    key = c.resolve("librosa")
    shards_before = sorted(p.name for p in (cache / key).glob("part-*.h5"))
    before = c.read(key, sorted(c.feature_set(key).done_ids())).data

    def no_decode(*a, **k):
        raise AssertionError("an unchanged re-run must not decode")

    monkeypatch.setattr(media, "decode", no_decode)
    again = run(["extract", str(good_dir), "--cache", str(cache), "--features", "librosa", "--no-progress"])
    assert again.exit_code == 0 and "5 already cached, 0 decoded" in again.output
    monkeypatch.undo()

    calls = []
    real = media.decode

    def counting(path, cid, needs, config, threads=0):
        calls.append(tuple(needs))
        return real(path, cid, needs, config, threads)

    monkeypatch.setattr(media, "decode", counting)
    more = run(["extract", str(good_dir), "--cache", str(cache), "--features", "librosa,frame-stats", "--no-progress"])
    assert more.exit_code == 0
    assert calls and all(needs == ("frames",) for needs in calls)  # audio not decoded again for librosa
    assert sorted(p.name for p in (cache / key).glob("part-*.h5")) == shards_before
    assert np.array_equal(c.read(key, sorted(c.feature_set(key).done_ids())).data, before)
    assert c.feature_set(c.resolve("frame-stats")).failures() == {"speech only": "no video stream"}


def test_changed_config_gets_a_new_key_and_never_mixes(good_dir, tmp_path):
    cache = tmp_path / "cache"
    run(["extract", str(good_dir), "--cache", str(cache), "--features", "librosa", "--no-progress"])
    run(["extract", str(good_dir), "--cache", str(cache), "--features", "librosa:n_mfcc=13", "--no-progress"])
    keys = FeatureCache(cache).keys()
    assert len(keys) == 2
    dims = sorted(FeatureCache(cache).feature_set(k).meta["dims"][0] for k in keys)
    assert dims == [(3 * 13 + 6 + 7 + 1) * 4 + 2, 298]


def test_jobs_1_and_2_write_identical_values(good_dir, tmp_path):
    out = {}
    for jobs in (1, 2):
        cache = tmp_path / f"c{jobs}"
        res = run(["extract", str(good_dir), "--cache", str(cache), "--features", "librosa,egemaps,frame-stats",
                   "--jobs", str(jobs), "--no-progress"])
        assert res.exit_code == 0, res.output
        c = FeatureCache(cache)
        out[jobs] = {k: c.read(k, sorted(c.all_ids())) for k in c.keys()}
    assert out[1].keys() == out[2].keys()
    for k in out[1]:
        a, b = out[1][k], out[2][k]
        assert np.array_equal(a.present, b.present)
        assert np.array_equal(a.data, b.data, equal_nan=True)


def test_usage_errors(tmp_path, good_dir):
    res = CliRunner().invoke(cli.main, ["extract", str(tmp_path / "nope"), "--cache", str(tmp_path / "c")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = CliRunner().invoke(cli.main, ["extract", str(good_dir), "--features", "librosa,hubbert"])
    assert res.exit_code == 2 and "unknown extractor 'hubbert'" in res.output
    res = CliRunner().invoke(cli.main, ["extract", str(good_dir), "--features", "librosa:n_mfc=3"])
    assert res.exit_code == 2 and "unknown option 'n_mfc'" in res.output
    res = CliRunner().invoke(cli.main, ["extract", str(good_dir), "--features", "librosa:pitch=crepe"])
    assert res.exit_code == 2 and "pitch must be yin or pyin" in res.output


def test_features_lists_the_registry():
    res = run(["features"])
    assert res.exit_code == 0
    for name in ("librosa", "egemaps", "frame-stats"):
        assert name in res.output
    rows = json.loads(run(["features", "--json"]).output)
    lib = next(r for r in rows if r["name"] == "librosa")
    assert lib["kind"] == "vector" and lib["defaults"]["n_mfcc"] == 20 and lib["needs"] == ["audio"]


def test_transcripts_plain_and_mer_subtitle_format(tmp_path):
    plain = tmp_path / "t.csv"
    plain.write_text("name,text\nclip0,hello there\nclip1,\n", encoding="utf-8")
    assert load_transcripts(plain) == {"clip0": "hello there", "clip1": ""}
    mer = tmp_path / "sub.csv"
    mer.write_text("name,chinese,english\nsample_1,你好,hello\n", encoding="utf-8")
    assert load_transcripts(mer, "english") == {"sample_1": "hello"}
    with pytest.raises(Exception, match="pass --text-column, one of: chinese, english"):
        load_transcripts(mer)


def _spawn_extract(video_dir, cache, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "extract", str(video_dir), "--cache", str(cache),
                             "--features", "librosa,frame-stats", "--flush-every", "1", "--no-progress", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_then_resume_loses_only_clips_in_flight(tmp_path):
    d = tmp_path / "v"
    n = 14
    for i in range(n):
        make_clip(d / f"c{i:02d}.mp4", seconds=1.0, size=(48, 64), freq=120 + 25 * i, seed=i)
    cache = tmp_path / "cache"
    proc = _spawn_extract(d, cache)
    deadline = time.time() + 120
    lib_dir = None
    while time.time() < deadline:  # kill as soon as some (not all) shards are on disk
        dirs = list(cache.glob("librosa-*"))
        if dirs and len(list(dirs[0].glob("part-*.h5"))) >= 3:
            lib_dir = dirs[0]
            break
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lib_dir is not None, "the run finished before it could be killed"
    c = FeatureCache(cache)
    done = c.feature_set(lib_dir.name).done_ids()
    assert 0 < len(done) < n
    batch = c.read(lib_dir.name, sorted(done))
    assert batch.present.all() and np.isfinite(batch.data).all()
    # the lock died with the process: a re-run resumes and completes
    res = _spawn_extract(d, cache)
    output = res.communicate(timeout=300)[0]
    assert res.returncode == 0, output
    cached = int(output.split("already cached")[0].rsplit(":", 1)[1])
    assert cached >= 1 and f"{n - cached} decoded" in output  # only the missing clips were decoded
    c2 = FeatureCache(cache)
    for key in c2.keys():
        assert c2.feature_set(key).done_ids() == {f"c{i:02d}" for i in range(n)}
        assert c2.feature_set(key).failures() == {}
    assert not list(cache.glob("*/.part-*.tmp"))


def test_second_concurrent_extract_fails_fast(good_dir, tmp_path):
    cache = tmp_path / "cache"
    with FeatureCache(cache).lock():
        res = CliRunner().invoke(cli.main, ["extract", str(good_dir), "--cache", str(cache), "--features", "librosa",
                                            "--no-progress"])
    assert res.exit_code == 1 and "is in use by another extract" in res.output
    assert FeatureCache(cache).keys() == []  # nothing was written


def test_run_order_puts_text_providers_first_and_respects_after():
    from extract.registry import build, load_all
    from extract.runner import run_order

    load_all()
    exs = [build("vlm-text:model=minilm"), build("librosa"), build("hf-text:model=minilm"),
           build("vlm:provider=jsonl,path=answers.jsonl"), build("asr:model=openai/whisper-tiny")]
    names = [e.name for e in run_order(exs)]
    assert names[0] == "asr"
    assert names.index("vlm") < names.index("vlm-text")
    assert names.index("librosa") < names.index("hf-text")  # otherwise the user's order


def test_blas_threads_are_capped_while_a_clip_is_processed_and_restored_after(good_dir):
    """Idle OpenBLAS threads busy-wait and starve FFmpeg's decoder threads; workers cap them."""
    from threadpoolctl import threadpool_info

    from extract.cache import Feature
    from extract.registry import Extractor
    from extract.runner import Task, process

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen = []

    class Probe(Extractor):  # records the BLAS thread counts it runs under
        name, modality, kind, needs = "probe", "audio", "vector", ("audio",)

        def extract(self, clip):
            seen.append(blas_threads())
            return Feature(data=np.asarray([clip.audio.mean()], np.float32))

    before = blas_threads()
    assert before, "numpy has no BLAS that threadpoolctl sees"
    for _ in range(2):  # the second clip with the controller the first one made
        task = Task("clip0", str(good_dir / "clip0.mp4"), ("audio",), [Probe()])
        out = process(task, media.DecodeConfig(), threads=1)
        assert isinstance(out["results"][Probe().key], Feature)
        assert blas_threads() == before
    assert len(seen) == 2 and all(n == 1 for s in seen for n in s.values())


def test_cache_info_shortens_long_provenance_lists_but_json_keeps_them(tmp_path):
    import json

    from extract.cache import Feature, put

    names = [f"ch{i}" for i in range(40)]
    put(tmp_path, "au", "vector", {"a": Feature(data=np.zeros(3, np.float32))}, meta={"model": {"pooled": names}})
    text = run(["cache", "info", "--cache", str(tmp_path)]).output
    assert '"ch0", "ch1", "ch2", "... 37 more (--json lists all)"' in text and "ch39" not in text
    full = json.loads(run(["cache", "info", "--cache", str(tmp_path), "--json"]).output)
    assert full[0]["model"]["pooled"] == names


class Loads(Extractor):
    """An extractor whose load() makes an unpicklable object, like an open landmarker."""
    name, modality, kind, needs = "loads", "audio", "vector", ("audio",)
    fail = False

    def load(self):
        import threading

        self.model = threading.Lock()
        if self.fail:
            self.error = "weights missing"
            raise RuntimeError(self.error)


def test_what_load_creates_never_travels_to_a_worker():
    """Workers get extractors by pickle (joblib); models, detectors and clients must stay behind."""
    import pickle

    ex = Loads()
    ex.note = "set before load: travels"
    ex.ensure_loaded()
    clone = pickle.loads(pickle.dumps(ex))
    assert not clone.loaded and not hasattr(clone, "model") and clone.note == ex.note
    assert clone.ensure_loaded().model is not ex.model and ex.loaded
    bad = Loads()
    bad.fail = True
    with pytest.raises(RuntimeError):
        bad.ensure_loaded()
    clone = pickle.loads(pickle.dumps(bad))  # a failed load's leftovers stay behind too
    assert not hasattr(clone, "model") and not hasattr(clone, "error")


def test_cache_info_counts_every_id_done_or_failed_once(tmp_path):
    from extract.cache import Feature, put

    vec = lambda: Feature(data=np.zeros(3, np.float32))  # noqa: E731
    put(tmp_path, "one", "vector", {"a": vec(), "b": vec()}, failures={"c": "no audio stream"})
    put(tmp_path, "two", "vector", {"b": vec(), "d": vec()}, failures={"a": "too short", "e": "decode failed"})
    text = run(["cache", "info", "--cache", str(tmp_path)]).output
    assert len(FeatureCache(tmp_path).all_ids()) == 5
    assert f"cache {tmp_path}: 2 feature sets, 5 clip ids" in text
