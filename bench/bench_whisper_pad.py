"""How far whisper's zero padding can be cut (issue 14: latency): EmoDB, leave-one-speaker-out, the
pooled mean+std of tiny.en's encoder frames with each chunk padded to P seconds instead of Whisper's
30-s window, a tuned standardised logistic regression (bench_emodb.logreg_loso); one thread.
Prints UAR, weighted F1 and milliseconds per 2-s clip for each P; no assertion.

The extractor has pad=true (30 s) and pad=false only; this script sets the window of a loaded
extractor to P seconds to measure what the values in between would give.

    python bench/bench_whisper_pad.py [--pads 30,10,6]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bench_emodb import EMODB, emodb_clips, logreg_loso, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pads", default="30,10,6", help="seconds each chunk is padded to")
    args = ap.parse_args()
    if not EMODB.is_dir():
        print(f"skipped: {EMODB} is not here")
        return
    from threadpoolctl import threadpool_limits

    from extract import media, registry

    registry.load_all()
    ids, y, spk = emodb_clips()
    clips = [media.decode(EMODB / "wav" / f"{i}.wav", i, ("audio",)) for i in ids]
    ex = registry.build("whisper")
    ex.run_threads = 1
    ex.ensure_loaded()
    print(f"EmoDB, {len(ids)} clips, leave-one-speaker-out, whisper tiny.en pooled + tuned logistic regression:")
    with threadpool_limits(limits=1, user_api="blas"):
        for pad in (float(p) for p in args.pads.split(",")):
            ex.window, ex.max_mel = int(pad * 16000), int(pad * 100)  # samples, mel frames of the padded chunk
            ex.chunk_samples = ex.window
            t0 = time.perf_counter()
            x = np.stack([ex.extract(c).pooled for c in clips])
            ms = (time.perf_counter() - t0) / len(clips) * 1000
            uar, wf1 = scores(y, logreg_loso(x, y, spk, None))
            print(f"  pad to {pad:4.1f} s: UAR {uar:.3f}, weighted F1 {wf1:.3f}, {ms:.0f} ms per clip", flush=True)
    ex.close()


if __name__ == "__main__":
    main()
