"""Inputs benchmark (issue 12). Prints figures; not a test.

    python bench/bench_inputs.py [--sizes 2s,10m,60m] [--sets audio,default] [--no-rss] [--no-bad]

 (a) peak RSS of `extract.extract` on one clip of 2 s, 10 min and 60 min of audio, for the audio set
     (`librosa,egemaps`) and the default set (`extract/defaults.py`), each run in a fresh process of
     its own (ru_maxrss of that process alone). The clip is an MKV with 16 kHz mono PCM speech-like
     audio (gliding harmonic tone in bursts with pauses) and a 1 fps 128x128 video of a face
     (scikit-image's astronaut; grey squares without scikit-image), with a transcript, so every
     member of the default set has its input. The 60-minute default-set run takes several minutes
     of CPU; ``--sizes 2s,10m`` leaves it out. Sizes are ``<n>s`` or ``<n>m``.
 (b) every bad input tried, and its outcome: extracted (per feature set), recorded (the reason
     stored as that clip's failure), usage error (the message; nothing was done), plus the notes
     the run printed (skipped files, silent/clipped audio, rotation).

Everything goes through the Python API (`from extract import extract`); media is made with PyAV.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RATE = 16000
AUDIO_SET = "librosa,egemaps"
TEXT = "i am very happy today"


# -- media -------------------------------------------------------------------------------------------
def speechlike(n: int, start: int = 0, rate: int = RATE, amp: float = 0.3) -> np.ndarray:
    """n samples from sample ``start`` on of a gliding harmonic tone in bursts, plus a little noise."""
    rng = np.random.default_rng(start)
    t = (start + np.arange(n)) / rate
    phase = 2 * np.pi * (150 * t - 40 / (2 * np.pi * 0.3) * np.cos(2 * np.pi * 0.3 * t))
    x = amp * (np.sin(phase) + 0.3 * np.sin(2 * phase)) * (np.sin(2 * np.pi * 0.25 * t) > -0.3)
    return (x + 0.01 * rng.standard_normal(n)).astype(np.float32)


def face_image(size: int = 128) -> np.ndarray:
    try:
        from skimage.data import astronaut
        from PIL import Image

        img = astronaut()[0:300, 80:380]  # head and shoulders
        return np.asarray(Image.fromarray(img).resize((size, size)))
    except ImportError:
        from extract.synth import frames_pattern

        return frames_pattern(1, (size, size))[0]


def write_clip(path: Path, seconds: float, audio=True, video=True, fps: int = 1, size: int = 128,
               signal=None, rotation: int | None = None) -> Path:
    """An MKV/MP4 (by extension) with PCM (MKV) or AAC (MP4) mono audio written block by block
    (the writer stays small for an hour) and/or a small video at ``fps``; ``signal(n, start)`` makes
    the audio (default: speech-like)."""
    import av

    signal = signal or speechlike
    img = face_image(size)
    with av.open(str(path), "w") as out:
        vs = as_ = None
        if video:
            vs = out.add_stream("libx264", rate=fps)
            vs.width = vs.height = size
            vs.pix_fmt = "yuv420p"
            if rotation is not None:
                vs.set_display_rotation(rotation)
        if audio:
            codec = "pcm_s16le" if path.suffix in (".mkv", ".wav") else "aac"
            as_ = out.add_stream(codec, rate=RATE)
            as_.layout = "mono"
        n = int(seconds * RATE)
        block = 10 * RATE
        for start in range(0, n, block) if as_ is not None else ():
            x = signal(min(block, n - start), start)
            if as_.codec_context.name == "pcm_s16le":
                data, fmt = (np.clip(x, -1, 1) * 32767).astype(np.int16).reshape(1, -1), "s16"
            else:
                data, fmt = np.clip(x, -1, 1).astype(np.float32).reshape(1, -1), "fltp"
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
            for p in as_.encode(frame):
                out.mux(p)
        if as_ is not None:
            for p in as_.encode():
                out.mux(p)
        for i in range(max(1, int(seconds * fps))) if vs is not None else ():
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in vs.encode(frame):
                out.mux(p)
        if vs is not None:
            for p in vs.encode():
                out.mux(p)
    return path


def parse_size(text: str) -> float:
    text = text.strip().lower()
    if text.endswith("m"):
        return float(text[:-1]) * 60
    return float(text.rstrip("s"))


def label(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


# -- (a) peak RSS ------------------------------------------------------------------------------------
RUN = """
import json, sys, time
sys.path.insert(0, sys.argv[5])
from extract import extract
t = time.perf_counter()
s = extract(sys.argv[1], sys.argv[2], features=sys.argv[3], transcripts=sys.argv[4], jobs=1, device="cpu",
            progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "done": dict(s.done),
                  "failed": [[k, r] for _, k, r in s.failures]}))
"""
MEASURE = """
import resource, subprocess, sys
out = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True).stdout
print(out.strip().splitlines()[-1] + "\\t" + str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
"""


def peak_rss(folder: Path, cache: Path, features: str, transcripts: Path) -> tuple[float, dict]:
    """Peak RSS (MiB) of one extract in a fresh process (the intermediate process waits for that
    one child only, so RUSAGE_CHILDREN is its figure), and what the run reported."""
    line = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-c", RUN, str(folder), str(cache),
                           features, str(transcripts), str(ROOT)], check=True, capture_output=True,
                          text=True).stdout.strip()
    report, rss = line.rsplit("\t", 1)
    return int(rss) / 1024, json.loads(report)


def bench_rss(tmp: Path, sizes: list[float], sets: list[str]) -> None:
    from extract.defaults import DEFAULT_FEATURES

    features = {"audio": AUDIO_SET, "default": DEFAULT_FEATURES}
    rows: dict[str, dict[float, tuple[float, dict]]] = {s: {} for s in sets}
    for seconds in sizes:
        folder = tmp / f"rss-{seconds:g}"
        folder.mkdir()
        t = time.perf_counter()
        write_clip(folder / "clip.mkv", seconds)
        made = time.perf_counter() - t
        transcripts = tmp / f"rss-{seconds:g}.csv"
        transcripts.write_text(f"name,text\nclip,{TEXT}\n")
        for name in sets:
            rss, report = peak_rss(folder, tmp / f"cache-{name}-{seconds:g}", features[name], transcripts)
            rows[name][seconds] = (rss, report)
            print(f"  {name:7s} {label(seconds):>7s}: peak RSS {rss:6.0f} MiB, {report['seconds']:6.1f} s "
                  f"(clip written in {made:.1f} s); done {sorted(report['done'])}"
                  + (f"; failed {report['failed']}" if report["failed"] else ""), flush=True)
    print("\n(a) peak RSS of extract (MiB; one clip, each run in a fresh process)\n")
    head = "| feature set | " + " | ".join(label(s) for s in sizes) + " | longest / shortest |"
    print(head)
    print("|" + "---|" * (len(sizes) + 2))
    for name in sets:
        figures = [rows[name][s][0] for s in sizes]
        cells = [f"{rows[name][s][0]:.0f} MiB ({rows[name][s][1]['seconds']:.0f} s)" for s in sizes]
        print(f"| {name} (`{features[name]}`) | " + " | ".join(cells) + f" | {figures[-1] / figures[0]:.2f}x |")


# -- (b) bad inputs ----------------------------------------------------------------------------------
BAD_SET = "librosa,egemaps,frame-stats,face-au"


def shorter(text: str, folder: Path, limit: int = 200) -> str:
    text = text.replace(str(folder), "<folder>")
    text = re.sub(r"\(looked for ([.\w ]+),", lambda m: f"(looked for {len(m.group(1).split())} extensions,",
                  text)  # the default extension list, counted
    return text if len(text) <= limit else text[: limit - 3] + "..."


def outcome(folder: Path, cache: Path, features: str = BAD_SET, **options) -> str:
    """What one extract call made of a folder: per feature set extracted (with the clip ids stored) /
    recorded reason, or the usage error; then the notes it printed."""
    from extract import extract
    from extract.cache import CacheError, FeatureCache
    from extract.errors import UserError
    from extract.registry import SpecError
    from extract.runner import UsageError

    try:
        s = extract(folder, cache, features=features, progress=False, device="cpu", **options)
    except (UsageError, SpecError, CacheError, UserError) as exc:
        return f"usage error: {shorter(str(exc), folder)}"
    short = {k: k.rsplit("-", 1)[0] for k in s.keys}
    parts = []
    ok = [short[k] for k in s.keys if s.done[k]]
    if ok:
        ids = sorted({cid for k in s.keys if s.done[k] for cid in FeatureCache(cache).feature_set(k).done_ids()})
        parts.append("extracted: " + ", ".join(ok) + " (ids " + ", ".join(repr(i) for i in ids) + ")")
    reasons: dict[str, list[str]] = {}
    for cid, key, reason in s.failures:
        reasons.setdefault(shorter(reason, folder), []).append(short[key])
    for reason, keys in reasons.items():
        parts.append(f"recorded ({', '.join(keys)}): {reason}")
    notes = sorted({f"{short[k]}: {n}" for _, k, n in s.clip_notes})
    if s.rotated:
        notes.append("rotated " + ", ".join(f"{c!r} {d} deg" for c, d in s.rotated.items()))
    if s.files_skipped:
        notes.append("skipped " + ", ".join(f"{p!r} ({why})" for p, why in s.files_skipped))
    if notes:
        parts.append("notes: " + "; ".join(notes))
    return "; ".join(parts) or "nothing done"


def bad_inputs(tmp: Path) -> list[tuple[str, str]]:
    from extract.synth import frames_pattern, tone, write_media

    root = tmp / "bad"
    root.mkdir()
    rows: list[tuple[str, str]] = []
    n = [0]

    def case(title: str, files: dict[str, object] | None = None, features: str = BAD_SET, prepare=None,
             **options) -> None:
        n[0] += 1
        folder = root / f"case{n[0]:02d}"
        folder.mkdir()
        for name, make in (files or {}).items():
            make(folder / name)
        if prepare is not None:
            folder = prepare(folder)
        t = time.perf_counter()
        result = outcome(folder, tmp / f"bad-cache{n[0]:02d}", features, **options)
        rows.append((title, result))
        print(f"  {title}: {result} ({time.perf_counter() - t:.1f} s)", flush=True)

    good = lambda p: write_clip(p, 2.0, fps=5)  # noqa: E731 - a 2 s clip with a face and speech
    rnd = np.random.default_rng(0)

    def truncated(p):
        good(p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 3])

    def zero_length(p):  # a container with a video and an audio stream and not one frame or sample
        import av

        with av.open(str(p), "w") as out:
            vs = out.add_stream("libx264", rate=5)
            vs.width = vs.height = 64
            vs.pix_fmt = "yuv420p"
            a = out.add_stream("aac", rate=RATE)
            a.layout = "mono"
            out.start_encoding()  # header (and trailer) written, no packet

    def squares(p):  # video and speech, but no face
        write_media(p, frames_pattern(10, (96, 128)), fps=5, audio=tone(2.0, RATE)[:, :], rate=RATE)

    def symlinked(folder):
        real = folder.parent / (folder.name + "-real")
        real.mkdir()
        good(real / "clip.mp4")
        (folder / "linked").symlink_to(real, target_is_directory=True)
        return folder

    case("normal clip (2 s, face, speech) - for comparison", {"clip.mp4": good})
    case("corrupt file (random bytes named .mp4)", {"corrupt.mp4": lambda p: p.write_bytes(rnd.bytes(50_000))})
    case("truncated mp4 (first third of a clip)", {"cut.mp4": truncated})
    case("text file named .mp4", {"notes.mp4": lambda p: p.write_text("not a video\n" * 100)})
    case("empty file (0 bytes)", {"empty.mp4": lambda p: p.write_bytes(b"")})
    case("zero-length video (streams, no frame, no sample)", {"zero.mp4": zero_length})
    case("audio only (.wav)", {"speech.wav": lambda p: write_clip(p, 2.0, video=False)})
    case("no audio track (video only)", {"mute.mp4": lambda p: write_clip(p, 2.0, audio=False, fps=5)})
    case("no face (grey squares)", {"squares.mp4": squares})
    case("silent audio", {"silent.mp4": lambda p: write_clip(p, 2.0, fps=5, signal=lambda n, s: np.zeros(n, np.float32))})
    case("clipped audio (2x full scale)", {"loud.mp4": lambda p: write_clip(p, 2.0, fps=5,
                                                                              signal=lambda n, s: speechlike(n, s, amp=2.0))})
    case("audio shorter than 0.1 s", {"blip.wav": lambda p: write_media(p, audio=tone(0.05, RATE), rate=RATE)})
    case("odd name: comma (a,b.mp4)", {"a,b.mp4": good})
    case("odd name: newline (new\\nline.mp4)", {"new\nline.mp4": good})
    case("odd name: spaces ( two  spaces .mp4)", {" two  spaces .mp4": good})
    case("odd name: non-ASCII (café 日本語.mp4)", {"café 日本語.mp4": good})
    case("NFC and NFD spellings of one name (caf\u00e9 / cafe\u0301)",
         {"caf\u00e9.mp4": good, "cafe\u0301.mp4": good})
    case("one id, two files (a.mp4 + a.wav)", {"a.mp4": good, "a.wav": lambda p: write_clip(p, 2.0, video=False)})
    case("rotated phone video (display matrix 90 deg)", {"phone.mp4": lambda p: write_clip(p, 2.0, fps=5, rotation=90)})
    case("symlinked folder", prepare=symlinked)
    case("unknown extension beside a clip (.xyz)", {"clip.mp4": good, "data.xyz": lambda p: p.write_bytes(b"x" * 10)})
    case("only an unknown extension (.xyz)", {"data.xyz": lambda p: p.write_bytes(b"x" * 10)})
    case("empty folder")
    case("--fps 0", {"clip.mp4": good}, fps=0)
    case("--jobs 0", {"clip.mp4": good}, jobs=0)
    case("--max-frames 0", {"clip.mp4": good}, max_frames=0)
    case("--features nosuch", {"clip.mp4": good}, features="nosuch")
    case("--features librosa:n_mfcc=0", {"clip.mp4": good}, features="librosa:n_mfcc=0")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2s,10m,60m", help="audio lengths for (a), e.g. 2s,10m,60m")
    ap.add_argument("--sets", default="audio,default", help="feature sets for (a): audio, default")
    ap.add_argument("--no-rss", action="store_true", help="leave out (a)")
    ap.add_argument("--no-bad", action="store_true", help="leave out (b)")
    args = ap.parse_args()
    sizes = sorted(parse_size(s) for s in args.sizes.split(",") if s.strip())
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = set(sets) - {"audio", "default"}
    if unknown:
        ap.error(f"--sets: unknown {', '.join(sorted(unknown))} (audio, default)")
    with tempfile.TemporaryDirectory(prefix="bench-inputs-") as tmp:
        tmp = Path(tmp)
        if not args.no_rss:
            print("(a) peak RSS, one fresh process per run:", flush=True)
            bench_rss(tmp, sizes, sets)
        if not args.no_bad:
            print("\n(b) bad inputs (features: " + BAD_SET + "):", flush=True)
            rows = bad_inputs(tmp)
            print("\n| input | outcome |\n|---|---|")
            for title, result in rows:
                print(f"| {title} | {result.replace('|', '/').replace(chr(10), ' ')} |")


if __name__ == "__main__":
    main()
