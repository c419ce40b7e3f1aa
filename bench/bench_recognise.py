"""Latency of recognising new clips with an exported bundle (prints figures; no assertion).

(a) one 2-s clip end to end in a cold process: `python cli.py recognise BUNDLE clip.mp4` (Python start,
    imports, bundle checks, model loading, decode, every extractor, every model, vote, rules);
    (by default a clip's audio sets in a worker process while the face sets are computed here; with
    --cache, in one process: both are timed)
(b) clips/s through a loaded `Recogniser` (models and extractors loaded once), one clip per call and
    a batch per call (in one process, and with jobs=2: `recognise --jobs 2`), on fresh 2-s clips;
(c) the audio worker's split of the audio sets balanced by measured cost vs all of them in the worker.

The bundle is the offline default system: `ensemble.demo.run_demo` (synthetic clips, the default
features librosa, egemaps, whisper, hf-text MiniLM, face-au, face-cnn; two runs, ensemble with the paper's
rules) unless --bundle gives one; --features trains it on other specs (a latency-bound variant:
`librosa,egemaps,whisper:pad=false,hf-text:model=minilm,face-au,face-cnn`). Targets (issue 14):
cold <= 10 s, warm >= 2 clips/s per core.

    python bench/bench_recognise.py [--bundle DIR | --features SPECS] [--clips 10] [--repeat 5] [--warm-repeat 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from extract.defaults import DEFAULT_FEATURES

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="an exported bundle (default: train the demo system)")
    ap.add_argument("--features", default=DEFAULT_FEATURES,
                    help="train the demo system on these specs instead of the default set (e.g. whisper:pad=false)")
    ap.add_argument("--clips", type=int, default=10, help="fresh clips for the warm figures")
    ap.add_argument("--repeat", type=int, default=5, help="cold runs (median)")
    ap.add_argument("--warm-repeat", type=int, default=3,
                    help="passes over the fresh clips for the warm figures (median)")
    args = ap.parse_args()
    from ensemble.demo import make_fresh_clips, run_demo
    from ensemble.recogniser import Recogniser

    work = Path(tempfile.mkdtemp(prefix="bench-recognise-"))
    if args.bundle is None:
        t0 = time.time()
        res = run_demo(work / "demo", jobs=2, features=args.features)
        bundle = res.bundle
        print(f"bundle: the demo system ({args.features}), trained in "
              f"{time.time() - t0:.0f} s -> {bundle}")
    else:
        bundle = Path(args.bundle)
    from extract.extractors.whisper import cpu_has_bf16, encoder_cpu_auto

    print(f"this CPU: bfloat16 products {cpu_has_bf16()}; whisper's compute_type=auto here: {encoder_cpu_auto()}")
    classes = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    fresh = make_fresh_clips(work / "fresh", [classes[i % len(classes)] for i in range(args.clips)], seed=123)
    clips = sorted(fresh.glob("*.mp4"))
    if len(clips) < args.clips:  # one file per class name: make the rest under other names
        for k in range(len(clips), args.clips):
            src = clips[k % len(clips)]
            dst = fresh / f"copy{k}-{src.name}"
            dst.write_bytes(src.read_bytes())
        clips = sorted(fresh.glob("*.mp4"))

    cold, alone = [], []
    for k in range(args.repeat):  # both variants back to back in each repeat
        cmd = [sys.executable, "cli.py", "recognise", str(bundle), str(clips[k % len(clips)])]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # --cache: one process extracts (no audio worker)
        subprocess.run(cmd + ["--cache", tempfile.mkdtemp(prefix="cold-cache-", dir=work)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        alone.append(time.perf_counter() - t0)
    print(f"(a) cold process, one 2-s clip end to end: median {statistics.median(cold):.2f} s "
          f"(runs: {', '.join(f'{c:.2f}' for c in cold)}; target <= 10 s); in one process (--cache, no audio "
          f"worker) median {statistics.median(alone):.2f} s (runs: {', '.join(f'{c:.2f}' for c in alone)}); "
          f"paired ratio {statistics.median(a / c for a, c in zip(alone, cold)):.2f}x")

    t0 = time.perf_counter()
    rec = Recogniser.load(bundle)
    rec.predict(clips[0])  # loads the extractors' models once
    load = time.perf_counter() - t0
    rec.predict_many(clips, jobs=2)  # starts the second process, which loads its models once
    one, batch, batch2 = [], [], []
    for _ in range(args.warm_repeat):  # the three ways in turn in each repeat
        t0 = time.perf_counter()
        for c in clips:
            rec.predict(c)
        one.append(len(clips) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        rec.predict_many(clips)
        batch.append(len(clips) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        rec.predict_many(clips, jobs=2)
        batch2.append(len(clips) / (time.perf_counter() - t0))
    worker = rec._audio_worker
    paired = {True: ([], []), False: ([], [])}
    if worker is not None:  # (c) the audio worker's balanced split vs every audio set in it, in turn
        for r in range(args.warm_repeat):
            for balanced in ((True, False) if r % 2 == 0 else (False, True)):
                worker.balanced = balanced
                t0 = time.perf_counter()
                for c in clips:
                    rec.predict(c)
                paired[balanced][0].append(len(clips) / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                rec.predict_many(clips)
                paired[balanced][1].append(len(clips) / (time.perf_counter() - t0))
        worker.balanced = True
        here = [ex.name for ex in worker.audio if ex not in worker.plan()]
    rec.close()
    import torch

    cores = os.cpu_count() or 1

    def rate(runs: list[float]) -> str:
        m = statistics.median(runs)
        return f"{m:.2f} clips/s ({m / cores:.2f} per core; runs {', '.join(f'{r:.2f}' for r in runs)})"

    print(f"(b) loaded Recogniser ({load:.1f} s to load and warm up; torch threads {torch.get_num_threads()}, "
          f"{cores} cores; medians of {args.warm_repeat}): one clip per call {rate(one)}; a batch of {len(clips)} "
          f"per call {rate(batch)}; with jobs=2 (clips split over two processes) {rate(batch2)}; "
          "target >= 2 clips/s per core")
    if worker is not None:
        print(f"(c) the audio worker's sets balanced by measured cost (audio sets computed here: "
              f"{', '.join(here) or 'none'}) vs all in the worker, in turn: one clip per call "
              f"{statistics.median(paired[True][0]):.2f} vs {statistics.median(paired[False][0]):.2f} clips/s, a batch "
              f"{statistics.median(paired[True][1]):.2f} vs {statistics.median(paired[False][1]):.2f} clips/s")


if __name__ == "__main__":
    main()
