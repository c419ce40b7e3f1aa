"""Whisper tiny.en's padded encoder in PyTorch on the CPU, in bfloat16 and in float32
(compute_type=bfloat16 / torch_float32), vs CTranslate2 float32 (issue 14: latency): EmoDB, 408
clips, leave-one-speaker-out, the pooled mean+std of the encoder frames, a tuned standardised
logistic regression (bench_emodb.logreg_loso); one thread, the three variants on every clip in turn
(same clip, same moment). Prints UAR, weighted F1, the median milliseconds per clip of each, and how
far each PyTorch variant's pooled values moved from CTranslate2 float32's (in units of each value's
spread over the clips); no assertion.

bfloat16 on the CPU is `whisper`'s compute_type=auto where the CPU has bfloat16 dot products
(AVX512_BF16 / AMX); on a CPU without them it runs, but slowly (no native products).

    python bench/bench_whisper_bf16.py [--clips N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bench_emodb import EMODB, emodb_clips, logreg_loso, scores

REFERENCE = "CTranslate2 float32"  # the runtime the others are compared with


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=0, help="the first N clips only (0: all 408; UAR needs all)")
    args = ap.parse_args()
    if not EMODB.is_dir():
        print(f"skipped: {EMODB} is not here")
        return
    import torch
    from threadpoolctl import threadpool_limits

    from extract import media, registry
    from extract.extractors import whisper as W

    registry.load_all()
    ids, y, spk = (part[: args.clips or None] for part in emodb_clips())
    variants = {REFERENCE: registry.build("whisper:compute_type=float32", device="cpu"),
                "PyTorch bfloat16": registry.build("whisper:compute_type=bfloat16", device="cpu"),
                "PyTorch float32": registry.build("whisper:compute_type=torch_float32", device="cpu")}
    torch.set_num_threads(1)
    for ex in variants.values():
        ex.run_threads = 1
        ex.ensure_loaded()
    print(f"EmoDB, {len(ids)} clips, whisper tiny.en padded to 30 s, one thread; CPU bfloat16 dot products: "
          f"{W.cpu_has_bf16()} (auto on this CPU: {W.encoder_cpu_auto()})")
    pooled = {name: [] for name in variants}
    ms = {name: [] for name in variants}
    with threadpool_limits(limits=1, user_api="blas"):
        for cid in ids:
            clip = media.decode(EMODB / "wav" / f"{cid}.wav", cid, ("audio",))
            for name, ex in variants.items():
                t0 = time.perf_counter()
                pooled[name].append(ex.extract(clip).pooled)
                ms[name].append((time.perf_counter() - t0) * 1000)
    for ex in variants.values():
        ex.close()
    stacked = {name: np.stack(v) for name, v in pooled.items()}
    a = stacked[REFERENCE]
    for name, b in stacked.items():
        if name == REFERENCE:
            continue
        moved = np.abs(a - b) / (a.std(0) + 1e-12)
        print(f"  {name}: pooled values moved from {REFERENCE}'s by (x their spread over clips): median "
              f"{np.median(moved):.3f}, 99th percentile {np.percentile(moved, 99):.3f}, max {moved.max():.3f}")
    for name, x in stacked.items():
        line = f"  {name:20s} {np.median(ms[name]):4.0f} ms per clip (median)"
        if len(set(spk)) > 1:
            uar, wf1 = scores(y, logreg_loso(x, y, spk, None))
            line += f", UAR {uar:.3f}, weighted F1 {wf1:.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
