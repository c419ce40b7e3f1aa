"""The videos people bring (issue 12): option checks, failures kept to the sets whose input failed,
folders and extensions, rotation, orphaned workers, silence and clipping. Media is made here."""
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from extract import media
from extract.cache import Feature, FeatureCache
from extract.registry import Extractor
from extract.synth import make_clip, tone

ROOT = Path(__file__).resolve().parents[1]


def run(args):
    return CliRunner().invoke(cli.main, args, catch_exceptions=False)


def write_broken_video(path: Path, seconds: float = 1.0) -> Path:
    """A clip whose audio is fine and whose video packets are garbage that the decoder rejects."""
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream("mjpeg", rate=5)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuvj420p"
        aus = out.add_stream("pcm_s16le", rate=16000)
        aus.layout = "mono"
        rng = np.random.default_rng(0)
        for i in range(int(seconds * 5)):
            pkt = av.Packet(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
            pkt.stream, pkt.pts, pkt.dts, pkt.time_base = vs, i, i, Fraction(1, 5)
            out.mux(pkt)
        data = (tone(seconds, 16000) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, 0, Fraction(1, 16000)
        for p in [*aus.encode(frame), *aus.encode()]:
            out.mux(p)
    return path


# -- D: options are checked before anything is done ------------------------------------------------

@pytest.mark.parametrize("option,value", [("--jobs", "0"), ("--fps", "0"), ("--fps", "-2"), ("--max-frames", "0"),
                                          ("--max-side", "0"), ("--flush-every", "0"), ("--threads", "0")])
def test_out_of_range_options_are_usage_errors(tmp_path, option, value):
    videos = tmp_path / "v"
    make_clip(videos / "a.mp4", seconds=0.4, size=(32, 32))
    cache = tmp_path / "cache"
    res = run(["extract", str(videos), "--cache", str(cache), "--features", "librosa", option, value,
               "--no-progress"])
    assert res.exit_code == 2
    assert f"{option} must be" in res.output and value in res.output
    assert "Traceback" not in res.output
    assert not cache.exists()  # nothing recorded: a later correct run has no failures to skip


def test_a_broken_video_stream_fails_only_the_frame_sets(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    write_broken_video(videos / "broken.mkv")
    cache = tmp_path / "cache"
    res = run(["extract", str(videos), "--cache", str(cache), "--features", "librosa,frame-stats", "--no-progress"])
    assert res.exit_code == 0, res.output
    c = FeatureCache(cache)
    lib, fst = c.feature_set(c.resolve("librosa")), c.feature_set(c.resolve("frame-stats"))
    assert lib.done_ids() == {"broken"} and lib.failures() == {}
    assert "video decoding failed" in fst.failures()["broken"]
    assert np.isfinite(c.read(lib.key, ["broken"]).data).all()


class TextLength(Extractor):
    """A text-only extractor: the length of the transcript."""
    name, modality, kind, needs = "text-length", "text", "vector", ("text",)

    def extract(self, clip):
        return Feature(data=np.asarray([len(clip.text)], np.float32))


def test_a_frame_decoding_failure_never_reaches_audio_or_text_sets(tmp_path):
    from extract.registry import build, load_all
    from extract.runner import Task, process

    load_all()
    path = make_clip(tmp_path / "c.mp4", seconds=1.0, size=(32, 32))
    bad = media.DecodeConfig(max_frames=0)  # what --max-frames 0 used to hand the decoder
    lib, fst, txt = build("librosa", decode=bad), build("frame-stats", decode=bad), TextLength(decode=bad)
    out = process(Task("c", str(path), ("audio", "frames", "text"), [lib, fst, txt], "hello", "csv"), bad)
    assert isinstance(out["results"][lib.key], Feature)
    assert isinstance(out["results"][txt.key], Feature)
    assert out["results"][fst.key].startswith("decode failed: video decoding failed (ZeroDivisionError")
    # a file that cannot be read at all fails every set that reads the media, and only those
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video\n" * 30)
    out = process(Task("junk", str(junk), ("audio", "frames", "text"), [lib, fst, txt], "hello", "csv"), bad)
    assert out["results"][lib.key].startswith("decode failed") and out["results"][fst.key].startswith("decode failed")
    assert isinstance(out["results"][txt.key], Feature)


# -- C: every file is either a clip or reported; symlinked folders; a wide extension list ------------

CONTAINERS = {  # extension -> (video codec, audio codec, audio rate) that this FFmpeg can write
    ".3gp": ("libx264", "aac", 16000), ".ts": ("libx264", "aac", 16000), ".mts": ("libx264", "aac", 16000),
    ".m2ts": ("libx264", "aac", 16000), ".wmv": ("wmv2", None, 0), ".mpg": ("mpeg1video", "mp2", 16000),
    ".mpeg": ("mpeg2video", "mp2", 16000), ".m4v": ("mpeg4", None, 0), ".ogg": (None, "libopus", 48000),
    ".opus": (None, "libopus", 48000), ".aac": (None, "aac", 16000),
}


def test_the_default_extensions_cover_the_containers_people_bring(tmp_path):
    from extract import ExtractConfig, extract
    from extract.synth import frames_pattern, write_media

    assert set(CONTAINERS) <= set(ExtractConfig().extensions)
    videos = tmp_path / "v"
    for i, (ext, (vcodec, acodec, rate)) in enumerate(CONTAINERS.items()):
        write_media(videos / f"c{i}{ext}", frames_pattern(15, (48, 64), seed=i) if vcodec else None, 25,
                    tone(0.8, rate, freq=150 + 20 * i) if acodec else None, rate or 16000, vcodec=vcodec, acodec=acodec)
    summary = extract(videos, tmp_path / "cache", features="librosa,frame-stats", progress=False)
    c = FeatureCache(tmp_path / "cache")
    lib, fst = c.feature_set(c.resolve("librosa")), c.feature_set(c.resolve("frame-stats"))
    for i, (ext, (vcodec, acodec, _)) in enumerate(CONTAINERS.items()):
        assert (f"c{i}" in lib.done_ids()) == bool(acodec), ext
        assert (f"c{i}" in fst.done_ids()) == bool(vcodec), ext
    assert summary.files_skipped == [] and summary.clips == len(CONTAINERS)


def test_symlinked_folders_are_followed_once_and_loops_end(tmp_path):
    from extract import extract

    videos, elsewhere = tmp_path / "videos", tmp_path / "elsewhere"
    make_clip(videos / "a.mp4", seconds=0.4, size=(32, 32))
    make_clip(elsewhere / "b.mp4", seconds=0.4, size=(32, 32))
    (videos / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(videos, target_is_directory=True)  # videos/linked/loop -> videos
    (videos / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    found = media.scan(videos)
    assert sorted(found.files) == ["a", "linked/b"]
    reasons = {p.relative_to(videos).as_posix(): why for p, why in found.skipped}
    assert reasons == {"linked/loop": media.SEEN_FOLDER, "gone.mp4": media.BROKEN_LINK}
    summary = extract(videos, tmp_path / "cache", features="librosa", progress=False)
    assert FeatureCache(tmp_path / "cache").feature_set(summary.keys[0]).done_ids() == {"a", "linked/b"}
    assert ("gone.mp4", "broken symlink") in summary.files_skipped


def test_the_summary_says_what_was_skipped_and_which_extensions_were_seen(tmp_path):
    videos = tmp_path / "v"
    make_clip(videos / "a.mp4", seconds=0.4, size=(32, 32))
    make_clip(videos / "b.wav", seconds=0.4, video=False)
    (videos / "notes.txt").write_text("x")
    (videos / "take1.mxv").write_bytes(b"\0" * 10)
    (videos / "._a.mp4").write_bytes(b"\0" * 10)  # macOS resource fork: not media
    (videos / ".hidden").mkdir()
    make_clip(videos / ".hidden" / "c.mp4", seconds=0.4, size=(32, 32))
    res = run(["extract", str(videos), "--cache", str(tmp_path / "cache"), "--features", "librosa", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "2 clips in" in res.output
    assert "skipped 4 files under" in res.output
    assert "2 extension not in --extensions" in res.output and "2 hidden" in res.output
    assert "notes.txt: extension not in --extensions" in res.output and "take1.mxv" in res.output
    seen = res.output.split("extensions seen: ", 1)[1].splitlines()[0]
    assert {part.rsplit(" ", 1)[0] for part in seen.split(", ")} == {".mp4", ".wav", ".txt", ".mxv"}
    # --extensions replaces the list: the .mxv file is now a clip (and a recorded failure: not media)
    res = run(["extract", str(videos), "--cache", str(tmp_path / "cache2"), "--features", "librosa",
               "--extensions", "mp4,.MXV", "--no-progress"])
    assert res.exit_code == 0, res.output
    c = FeatureCache(tmp_path / "cache2")
    fs = c.feature_set(c.resolve("librosa"))
    assert fs.done_ids() == {"a"} and "decode failed" in fs.failures()["take1"]
    assert "b.wav: extension not in --extensions" in res.output


def test_a_folder_without_media_is_a_usage_error_naming_it_and_the_extensions(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run(["extract", str(empty), "--cache", str(tmp_path / "c"), "--features", "librosa", "--no-progress"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"no media files in {empty}" in res.output and ".mp4" in res.output and ".3gp" in res.output
    assert "it is empty" in res.output
    (empty / "a.wav").write_bytes(b"RIFF")
    res = run(["extract", str(empty), "--cache", str(tmp_path / "c"), "--features", "librosa", "--extensions", ".mp4",
               "--no-progress"])
    assert res.exit_code == 2 and "looked for .mp4," in res.output and ".wav 1" in res.output
    assert not (tmp_path / "c").exists()


def test_names_that_differ_only_by_unicode_form_are_reported_with_code_points(tmp_path):
    import unicodedata

    videos = tmp_path / "v"
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    make_clip(videos / f"{nfc}.mp4", seconds=0.4, size=(32, 32))
    try:
        make_clip(videos / f"{nfd}.mp4", seconds=0.4, size=(32, 32))
    except OSError:
        pytest.skip("this file system folds NFC and NFD names")
    if len(list(videos.iterdir())) < 2:
        pytest.skip("this file system folds NFC and NFD names")
    res = run(["extract", str(videos), "--cache", str(tmp_path / "c"), "--features", "librosa", "--no-progress"])
    assert res.exit_code == 1  # the only clip id is ambiguous
    assert "U+00E9" in res.output and "U+0301" in res.output and "not NFC" in res.output


# -- B: phone videos come out upright ------------------------------------------------------------

def write_rotated(path: Path, degrees: int, n: int = 5, size=(32, 64)) -> Path:
    """A clip whose frames have a white top half, with a display matrix saying: show it turned
    ``degrees`` counter-clockwise (as phones write it; PyAV reads it back as frame.rotation)."""
    import av

    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = 255
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=5)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.set_display_rotation(degrees)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 5)
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


def white_side(frame: np.ndarray) -> str:
    gray = frame.mean(axis=2)
    h, w = gray.shape
    halves = {"top": gray[: h // 2], "bottom": gray[h - h // 2:], "left": gray[:, : w // 2], "right": gray[:, w - w // 2:]}
    return max(halves, key=lambda k: halves[k].mean())


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
@pytest.mark.parametrize("degrees,shape,side", [(0, (32, 64), "top"), (90, (64, 32), "left"),
                                                 (-90, (64, 32), "right"), (180, (32, 64), "bottom")])
def test_display_rotation_is_applied_and_recorded(tmp_path, ext, degrees, shape, side):
    path = write_rotated(tmp_path / f"r{ext}", degrees)
    clip = media.decode(path, "r", ("frames",), media.DecodeConfig(fps=5))
    assert clip.frames.shape[1:3] == shape
    assert all(white_side(f) == side for f in clip.frames)
    assert clip.rotation == degrees % 360 and clip.info["video"]["rotation"] == degrees % 360
    raw = media.decode(path, "r", ("frames",), media.DecodeConfig(fps=5, upright=False))
    assert raw.frames.shape[1:3] == (32, 64) and white_side(raw.frames[0]) == "top" and raw.rotation == 0


def test_upright_frames_get_their_own_key_and_the_run_says_which_clips_were_turned(tmp_path):
    from extract import extract
    from extract.registry import build, load_all

    load_all()
    videos = tmp_path / "v"
    videos.mkdir()
    write_rotated(videos / "phone.mp4", -90)
    write_rotated(videos / "plain.mp4", 0)
    summary = extract(videos, tmp_path / "cache", features="frame-stats", progress=False)
    assert summary.rotated == {"phone": 270}
    assert any("1 clips carry a display rotation" in n and "270 degrees" in n for n in summary.notes)
    meta = FeatureCache(tmp_path / "cache").feature_set(summary.keys[0]).meta
    assert meta["decode"]["upright"] is True
    assert build("frame-stats").key != build("frame-stats", decode=media.DecodeConfig(upright=False)).key
    assert build("librosa").key == build("librosa", decode=media.DecodeConfig(upright=False)).key


# -- E: no orphans --------------------------------------------------------------------------------

def _gone(proc) -> bool:
    import psutil

    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _left_after(procs, seconds: float) -> list:
    """The processes of ``procs`` still there (not ended, not a zombie) after up to ``seconds``."""
    import time

    deadline = time.time() + seconds
    while time.time() < deadline and not all(_gone(p) for p in procs):
        time.sleep(0.1)
    return [p for p in procs if not _gone(p)]


def _describe(proc) -> str:
    try:
        return f"{proc.pid} {proc.status()} {' '.join(proc.cmdline())[:160]} threads={proc.num_threads()}"
    except Exception:  # noqa: BLE001 - gone meanwhile
        return str(proc.pid)


def test_workers_exit_when_the_main_process_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from extract.synth import write_media

    videos = tmp_path / "v"
    for i in range(4):  # pyin on 40 s of audio keeps a worker busy far longer than the bound below
        write_media(videos / f"long{i}.wav", audio=tone(40.0, 16000, freq=140 + 30 * i, seed=i), rate=16000)
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "extract", str(videos), "--cache",
                             str(tmp_path / "cache"), "--features", "librosa:pitch=pyin", "--jobs", "3",
                             "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    main = psutil.Process(proc.pid)
    workers = []
    try:
        deadline = time.time() + 180
        # --jobs 3: two worker processes (the main process computes clips too)
        while time.time() < deadline and proc.poll() is None:  # until two workers are computing
            busy = []
            for child in main.children(recursive=True):
                try:
                    if child.cpu_times().user > 1.0 and "python" in child.name().lower():
                        busy.append(child)
                except psutil.NoSuchProcess:
                    pass
            if len(busy) >= 2:
                workers = busy
                break
            time.sleep(0.2)
        assert len(workers) >= 2, "the workers never started computing"
        descendants = main.children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left = [_describe(p) for p in _left_after(descendants, 8)]
        assert not left, f"processes {left} outlived their killed parent"
    finally:
        for p in [main, *workers]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


GIL_HOLDING_WORKER = """
import os, sys, time
from extract.runner import watch_parent
watch_parent(os.getppid(), poll=0.2)
open(sys.argv[1], "w").write(str(os.getpid()))
sum(range(10 ** 12))  # one C call that never lets the watchdog thread run (as numba code without nogil)
"""

MAIN_OF_A_WORKER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(600)
"""


def test_a_worker_holding_the_gil_still_ends_with_its_killed_parent(tmp_path):
    """The watchdog thread cannot run while the worker's main thread holds the GIL (librosa's pyin
    Viterbi does for seconds): the outside watchdog ends the worker anyway."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    ready = tmp_path / "worker.pid"
    main = subprocess.Popen([sys.executable, "-c", MAIN_OF_A_WORKER, GIL_HOLDING_WORKER, str(ready)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    worker = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (ready.exists() and ready.read_text()):
            time.sleep(0.1)
        worker = psutil.Process(int(ready.read_text()))
        time.sleep(0.5)  # inside the long call
        assert worker.status() != psutil.STATUS_ZOMBIE
        os.kill(main.pid, signal.SIGKILL)
        main.wait()
        assert not _left_after([worker], 8), f"{_describe(worker)} outlived its killed parent"
    finally:
        if worker is not None:
            try:
                worker.kill()
            except psutil.NoSuchProcess:
                pass
        main.kill()


# -- F: silence, clipping, shards per clips, and only the tool's own messages on the terminal -------

def write_float_wav(path: Path, audio: np.ndarray, rate: int = 16000) -> Path:
    """32-bit float PCM, which can hold samples beyond full scale (|x| > 1)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_f32le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio.reshape(1, -1), np.float32), format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for p in [*stream.encode(frame), *stream.encode()]:
            out.mux(p)
    return path


def test_silent_and_clipped_audio_are_noted_per_audio_set(tmp_path):
    from extract import extract
    from extract.synth import write_media

    videos = tmp_path / "v"
    write_media(videos / "silent.wav", audio=np.zeros((1, 16000), np.float32), rate=16000)
    write_media(videos / "railed.wav", audio=np.clip(tone(1.0, 16000, amp=3.0), -1, 1), rate=16000)  # s16 on the rails
    write_float_wav(videos / "over.wav", tone(1.0, 16000, amp=3.0)[0])  # float samples beyond full scale
    write_media(videos / "fine.wav", audio=tone(1.0, 16000, amp=0.5), rate=16000)
    make_clip(videos / "quiet video.mp4", seconds=1.0, size=(32, 32), audio=False)
    summary = extract(videos, tmp_path / "cache", features="librosa,egemaps,frame-stats", progress=False)
    lib, ege, fst = summary.keys
    notes = {(cid, key): note for cid, key, note in summary.clip_notes}
    for key in (lib, ege):  # one note per audio set; the values are stored all the same
        assert notes[("silent", key)].startswith("silent audio (peak -inf dBFS")
        assert notes[("railed", key)].startswith("clipped audio")
        assert notes[("over", key)].startswith("clipped audio")
        assert ("fine", key) not in notes
    assert not any(key == fst for _, key in notes)  # frames never carry an audio note
    assert {"silent", "railed", "over", "fine"} <= FeatureCache(tmp_path / "cache").feature_set(lib).done_ids()
    silent = FeatureCache(tmp_path / "cache").read(lib, ["silent"]).data
    assert np.isfinite(silent).all()
    log = (tmp_path / "cache" / "extract.log").read_text()
    assert f"silent [{lib}]: silent audio" in log and "skipped" not in log


def test_flush_every_counts_clips_not_results(tmp_path):
    from extract import extract

    videos = tmp_path / "v"
    for i in range(5):
        make_clip(videos / f"c{i}.mp4", seconds=0.4, size=(32, 32), seed=i)
    summary = extract(videos, tmp_path / "cache", features="librosa,frame-stats", flush_every=2, progress=False)
    c = FeatureCache(tmp_path / "cache")
    for key in summary.keys:  # 5 clips, a shard every 2 clips: 3 shards per set (not 5: 2 results per clip)
        assert len(c.feature_set(key).shards()) == 3, key


def _cli(args, tmp_path):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-W", "default", str(ROOT / "cli.py"), "extract", *args, "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_library_chatter_goes_to_the_log_unless_verbose(tmp_path):
    from extract.synth import write_media

    videos = tmp_path / "v"
    make_clip(videos / "a.mp4", seconds=1.0, size=(64, 64))
    write_media(videos / "silent.wav", audio=np.zeros((1, 16000), np.float32), rate=16000)
    (videos / "readme.txt").write_text("not a clip")
    quiet = _cli([str(videos), "--cache", str(tmp_path / "c1"), "--features", "face-au,librosa"], tmp_path)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert quiet.stderr == ""  # MediaPipe's W0000 lines, TFLite's INFO line, numpy warnings: none here
    assert "note: silent audio: 1 clips (silent)" in quiet.stdout and "log: " in quiet.stdout
    log = (tmp_path / "c1" / "extract.log").read_text()
    assert "W0000" in log or "TensorFlow Lite" in log  # what MediaPipe printed is kept, in the log
    assert "skipped readme.txt: extension not in --extensions" in log
    loud = _cli([str(videos), "--cache", str(tmp_path / "c2"), "--features", "face-au,librosa", "--jobs", "2",
                 "--verbose"], tmp_path)
    assert loud.returncode == 0, loud.stdout + loud.stderr
    assert "W0000" in loud.stderr or "TensorFlow Lite" in loud.stderr
    assert "skipped readme.txt" in loud.stderr
