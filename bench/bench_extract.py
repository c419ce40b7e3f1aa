"""Extraction benchmark (issue 2). Prints figures; not a test.

    python bench/bench_extract.py [--data ../shared/data/emo-av] [--clips N]

On emo-av (synthetic clips when it is absent) with librosa + egemaps + a tiny image encoder
(hf-image with a random CLIP vision tower built from a config; frame-stats if hf-image is not
installed):
 (a) one-pass extraction vs. the same extractors run one after another, each decoding itself;
 (b) decode-only time, and one-pass wall time as a multiple of (decode once + extractor compute);
 (c) an unchanged re-run as a fraction of the first run;
 (d) peak RSS of a whole `cli.py extract` process for 50 vs 200 clips (the one part run as a subprocess
     of the CLI: it measures the command itself).

Every other part calls the Python API (`extract.extract`).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "emo-av"


def tiny_image_model(dirpath: Path) -> str | None:
    from extract.registry import load_all

    if "hf-image" not in load_all():
        return None
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, projection_dim=16)
    CLIPVisionModel(cfg).save_pretrained(dirpath)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(dirpath)
    return str(dirpath)


def clip_folder(data: Path, n: int, tmp: Path) -> Path:
    """A folder of n clips: symlinks to the real data (never copied), or synthetic clips."""
    out = tmp / f"clips{n}"
    out.mkdir(exist_ok=True)
    if data.is_dir():
        for src in sorted(data.glob("*.mp4"))[:n]:
            (out / src.name).symlink_to(src.resolve())
    else:
        from extract.synth import make_clip

        for i in range(n):
            make_clip(out / f"s{i:04d}.mp4", seconds=2.0, size=(320, 320), rate=22050, freq=120 + 3 * i, seed=i)
    return out


def timed_run(folder, specs, cache):
    """Wall time and Summary of one `extract.extract` call (default decoding, --jobs 1, on the CPU)."""
    from extract import extract

    t = time.perf_counter()
    summary = extract(folder, cache, features=tuple(specs), jobs=1, device="cpu", progress=False)
    return time.perf_counter() - t, summary


def peak_rss(folder: Path, specs: list[str], cache: Path) -> float:
    """Peak RSS (MiB) of a whole `cli.py extract` process. A subprocess on purpose: the figure is the memory
    of the command a user runs (imports, click and all), which an in-process call cannot measure; so this
    one part keeps the CLI rather than `extract.extract`."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cmd = [sys.executable, "-c", code, sys.executable, str(ROOT / "cli.py"), "extract", str(folder), "--cache",
           str(cache), "--features", ",".join(specs), "--no-progress"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return int(out.strip().splitlines()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--clips", type=int, default=100, help="clips for (a)-(c)")
    args = ap.parse_args()
    from extract.media import DecodeConfig, decode, discover

    source = "emo-av" if args.data.is_dir() else "synthetic (emo-av absent)"
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        img = tiny_image_model(tmp / "tiny-clip")
        specs = ["librosa", "egemaps", f"hf-image:model={img},crop=frame" if img else "frame-stats"]
        folder = clip_folder(args.data, args.clips, tmp)
        files, _ = discover(folder)
        # warm-up (numba JIT of librosa, model load) so that no variant pays it alone
        timed_run(clip_folder(args.data, 2, tmp), specs, tmp / "warm")

        # best of two rounds each, interleaved, so that warm-up effects favour neither variant
        t_sep = t_one = float("inf")
        for r in range(2):
            t_sep = min(t_sep, sum(timed_run(folder, [s], tmp / f"sep{r}{i}")[0] for i, s in enumerate(specs)))
            t, s = timed_run(folder, specs, tmp / f"one{r}")
            if t < t_one:
                t_one, s_one = t, s
        t0 = time.perf_counter()
        for cid, path in files.items():
            decode(path, cid, ("audio", "frames"), DecodeConfig())
        t_decode = time.perf_counter() - t0
        compute = sum(v for k, v in s_one.compute_seconds.items() if k != "decode")
        t_rerun, s_rerun = timed_run(folder, specs, tmp / "one1")
        rss50 = peak_rss(clip_folder(args.data, 50, tmp), specs, tmp / "rss50")
        rss200 = peak_rss(clip_folder(args.data, 200, tmp), specs, tmp / "rss200")

    n = len(files)
    print(f"extraction benchmark: {n} clips ({source}); extractors: {', '.join(s.split(':')[0] for s in specs)}"
          f"{' (tiny random CLIP vision tower)' if img else ''}; {os.cpu_count()} cores, --jobs 1")
    print(f"(a) one pass {t_one:.1f} s vs one extractor at a time (each decoding) {t_sep:.1f} s: "
          f"ratio {t_sep / t_one:.2f}x")
    print(f"(b) decode only {t_decode:.1f} s ({1000 * t_decode / n:.0f} ms/clip); extractor compute {compute:.1f} s; "
          f"one pass = {t_one / (t_decode + compute):.2f} x (decode once + compute)")
    print(f"(c) unchanged re-run {t_rerun:.2f} s = {t_rerun / t_one:.3f} of the first run "
          f"({s_rerun.decoded} clips decoded)")
    print(f"(d) peak RSS of `cli.py extract`: 50 clips {rss50:.0f} MiB, 200 clips {rss200:.0f} MiB")


if __name__ == "__main__":
    main()
