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
