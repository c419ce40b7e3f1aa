"""Speech encoders on EmoDB (issue 15). Prints figures; not a test.

    python bench/bench_speech.py [--data ../shared/data/emodb] [--limit N] [--cache DIR] [--tune]

EmoDB (408 utterances of 2.00 s, 8 speakers, 7 emotions; see ../shared/data/README.md), leave-one-
speaker-out, a standardised logistic regression (StandardScaler + LogisticRegression, C=1; with --tune, C chosen
by an inner leave-one-speaker-out over the training speakers from 0.01/0.1/1) on the pooled features; UAR (mean per-class recall) and weighted F1 over the out-of-fold predictions
of all clips:

* `whisper` (tiny.en-offline, mean+std of the encoder frames): padded to 30 s and unpadded, each with
  the int8 and float32 CPU compute types (what chose ``pad`` and ``compute_type=auto`` on the CPU);
* `speaker` (Resemblyzer's 256-d voice embedding), `egemaps` (88 functionals);
* concatenations: whisper + egemaps, whisper + speaker, whisper + speaker + egemaps.

Extraction seconds per clip of each feature set: its compute seconds in the run (model loading
included, decoding excluded) over its clips, from one `extract.extract` call (one decode per clip,
--jobs 1, --threads 1; CTranslate2 uses up to 4 threads, the cores here). The cache is built with
the Python API and read with `extract.cache.FeatureCache`; --cache keeps it (a re-run only reads it,
and then prints no timing).

Measured here (408 clips, C=1, 2 cores shared with other work, so the times are upper bounds):

| features | dims | UAR | weighted F1 | s per clip |
|---|---|---|---|---|
| whisper padded, int8 | 768 | 0.793 | 0.813 | 0.365 |
| whisper unpadded, int8 | 768 | 0.709 | 0.738 | 0.011 |
| whisper padded, float32 (the default) | 768 | 0.794 | 0.815 | 0.373 |
| whisper unpadded, float32 | 768 | 0.726 | 0.755 | 0.018 |
| speaker | 256 | 0.646 | 0.677 | 0.023 |
| egemaps | 88 | 0.681 | 0.707 | 0.041 |
| whisper + egemaps | 856 | 0.828 | 0.850 | |
| whisper + speaker | 1024 | 0.816 | 0.834 | |
| speaker + egemaps | 344 | 0.721 | 0.750 | |
| whisper + speaker + egemaps | 1112 | 0.835 | 0.852 | |
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "emodb"

SETS = {  # label -> SPEC
    "whisper pad int8": "whisper:pad=true,compute_type=int8",
    "whisper nopad int8": "whisper:pad=false,compute_type=int8",
    "whisper pad float32": "whisper:pad=true,compute_type=float32",
    "whisper nopad float32": "whisper:pad=false,compute_type=float32",
    "whisper pad bfloat16": "whisper:pad=true,compute_type=bfloat16",  # PyTorch on the CPU
    "whisper nopad bfloat16": "whisper:pad=false,compute_type=bfloat16",
    "speaker": "speaker",
    "egemaps": "egemaps",
}
COMBINED = {  # label -> labels of SETS concatenated; "whisper" is the default (pad, auto compute type)
    "whisper + egemaps": ("whisper", "egemaps"),
    "whisper + speaker": ("whisper", "speaker"),
    "speaker + egemaps": ("speaker", "egemaps"),
    "whisper + speaker + egemaps": ("whisper", "speaker", "egemaps"),
}
GRID = (0.01, 0.1, 1.0)


def read_labels(data: Path) -> list[dict]:
    with open(data / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if (data / "wav" / f"{r['name']}.wav").is_file()]
    return sorted(rows, key=lambda r: r["name"])


def subset(rows: list[dict], limit: int | None) -> list[dict]:
    """``limit`` clips taken round-robin over the speakers (every speaker stays in the test folds)."""
    if not limit or limit >= len(rows):
        return rows
    by_speaker = defaultdict(list)
    for r in rows:
        by_speaker[r["speaker"]].append(r)
    out, i = [], 0
    while len(out) < limit:
        for spk in sorted(by_speaker):
            if i < len(by_speaker[spk]) and len(out) < limit:
                out.append(by_speaker[spk][i])
        i += 1
    return sorted(out, key=lambda r: r["name"])


def clip_folder(data: Path, rows: list[dict], root: Path) -> Path:
    folder = root / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        link = folder / f"{r['name']}.wav"
        if not link.exists():
            link.symlink_to((data / "wav" / f"{r['name']}.wav").resolve())
    return folder


def model(C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))


def loso(x: np.ndarray, y: np.ndarray, groups: np.ndarray, tune: bool) -> tuple[float, float, list[float]]:
    """Leave-one-speaker-out out-of-fold predictions -> (UAR, weighted F1, C chosen per fold)."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    pred = np.empty_like(y)
    chosen = []
    for spk in np.unique(groups):
        train, test = groups != spk, groups == spk
        C = 1.0
        if tune:
            scores = []
            for c in GRID:
                inner = np.empty(train.sum(), dtype=y.dtype)
                xt, yt, gt = x[train], y[train], groups[train]
                for s2 in np.unique(gt):
                    m = model(c).fit(xt[gt != s2], yt[gt != s2])
                    inner[gt == s2] = m.predict(xt[gt == s2])
                scores.append(balanced_accuracy_score(yt, inner))
            C = GRID[int(np.argmax(scores))]
        chosen.append(C)
        pred[test] = model(C).fit(x[train], y[train]).predict(x[test])
    return balanced_accuracy_score(y, pred), f1_score(y, pred, average="weighted"), chosen


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=None, help="at most N clips, round-robin over the speakers")
    ap.add_argument("--cache", type=Path, default=None, help="keep the feature cache here (default: a temp dir)")
    ap.add_argument("--tune", action="store_true", help="choose C by an inner leave-one-speaker-out (slow: ~10 "
                    "min per feature set here) instead of C=1")
    args = ap.parse_args(argv)
    if not (args.data / "labels.csv").is_file():
        print(f"no EmoDB at {args.data} (labels.csv + wav/): nothing to measure")
        return 0

    from extract import extract
    from extract.cache import FeatureCache
    from extract.extractors import whisper as W

    rows = subset(read_labels(args.data), args.limit)
    tmp = tempfile.TemporaryDirectory(prefix="bench-speech-")
    work = args.cache or Path(tmp.name)
    clips = clip_folder(args.data, rows, work)
    cache = work / "cache"
    specs = dict(SETS)
    print(f"EmoDB: {len(rows)} clips, {len({r['speaker'] for r in rows})} speakers, "
          f"{len({r['emotion'] for r in rows})} classes; cache {cache}")
    t0 = time.perf_counter()
    summary = extract(clips, cache, features=tuple(specs.values()), jobs=1, threads=1, device="cpu", progress=False)
    wall = time.perf_counter() - t0
    if summary.failures:
        print(f"{len(summary.failures)} failures, e.g. {summary.failures[:3]}")
    keys = dict(zip(specs, summary.keys))
    print(f"\nextraction ({wall:.0f} s wall for {summary.decoded} decoded clips, one decode per clip, 2 cores)")
    print("| feature set | key | dims | s per clip |")
    print("|---|---|---|---|")
    fc = FeatureCache(cache)
    ids = [r["name"] for r in rows]
    feats = {}
    for label, key in keys.items():
        batch = fc.read(key, ids, pooled=True)
        feats[label] = (np.asarray(batch.data, np.float64), np.asarray(batch.present, bool))
        done = summary.done.get(key, 0)
        per = f"{summary.compute_seconds.get(key, 0.0) / done:.3f}" if done else "(cached)"
        print(f"| {label} | {key} | {feats[label][0].shape[1]} | {per} |")
    if summary.decoded:
        print(f"| (decode) | | | {summary.compute_seconds.get('decode', 0.0) / summary.decoded:.3f} |")

    default = f"whisper {'pad' if W.DEFAULT_PAD else 'nopad'} {W.encoder_cpu_auto()}"  # auto on this CPU
    feats["whisper"] = feats[default]
    y = np.array([r["emotion"] for r in rows])
    groups = np.array([r["speaker"] for r in rows])
    print(f"\nleave-one-speaker-out, StandardScaler + LogisticRegression "
          f"({'C by inner LOSO from ' + str(GRID) if args.tune else 'C=1'}); 'whisper' = the default: {default}")
    print("| features | dims | UAR | weighted F1 | C per fold |")
    print("|---|---|---|---|---|")
    for label in list(SETS) + list(COMBINED):
        parts = COMBINED.get(label, (label,))
        x = np.concatenate([feats[p][0] for p in parts], axis=1)
        ok = np.all([feats[p][1] for p in parts], axis=0)
        uar, wf1, cs = loso(x[ok], y[ok], groups[ok], args.tune)
        note = "" if ok.all() else f" ({ok.sum()} clips with every part)"
        print(f"| {label}{note} | {x.shape[1]} | {uar:.3f} | {wf1:.3f} | {','.join(f'{c:g}' for c in cs)} |",
              flush=True)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
