"""Benchmark of `models.fit`, the library behind `cli.py fit` (prints figures; no assertion).

(a) MER-sized synthetic features: 7,369 clips x 6 experts x 1024-d vectors, 6 classes, 5 folds x 1
    seed: wall time and peak RSS of the MoE and of the attention baseline, each fitted in its own
    process (target: MoE <= 3 min on 2 cores).
(b) A cache extracted from ../shared/data/emo-av (pass --cache; skipped with a message when absent):
    the labeled-role clips are cross-validated grouped by speaker (4 speakers -> 4 folds) and the
    unlabeled-role clips (other speakers, other faces) are predicted; for each --normalize mode the
    weighted F1 of every expert, fused, routed (MoE) and the attention baseline, out-of-fold and on
    the held-out role (whose labels are read only here, to score).

    python bench/bench_fit.py                      # (a) and, if --cache is given, (b)
    python bench/bench_fit.py --part b --cache cache/emo-av
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMO_AV = REPO.parent / "shared" / "data" / "emo-av"


def _child(args) -> None:
    """Fit one model in this process and print one JSON line (time, peak RSS, routed metrics). Each model
    is fitted in a process of its own so that its peak RSS is its own (ru_maxrss never goes down)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from models import fit, open_run

    t0 = time.time()
    res = fit(args.cache, args.labels, args.features, args.out, model=args.model, folds=args.folds,
              seeds="0", epochs=args.epochs, batch_size=args.batch_size, patience=args.patience,
              device="cpu", progress=False)
    seconds = time.time() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run = open_run(res.run_dir)  # the learning curves: curves/fold<k>_seed<s>.csv of the run's record
    curves = sorted(rel for rel in run.record["files"] if rel.startswith("curves/") and rel.endswith(".csv"))
    epochs = [sum(1 for _ in open(run.root / c)) - 1 for c in curves]
    main = [r for r in res.metrics if r["kind"] == "routed"][0]
    print(json.dumps({"model": args.model, "seconds": seconds, "peak_rss_mb": rss, "epochs": epochs,
                      "weighted_f1": main["weighted_f1"], "threads": torch.get_num_threads()}))


def part_a(args) -> None:
    from models.synth import make_mer_like_cache

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_fit_"))
    cache = work / "mer_cache"
    t0 = time.time()
    syn = make_mer_like_cache(cache, n=args.n, n_experts=args.experts, dim=args.dim, seed=0)
    print(f"(a) synthetic cache: {args.n} clips x {args.experts} experts x {args.dim}-d written in "
          f"{time.time() - t0:.1f} s to {cache}")
    features = ",".join(syn.keys.values())
    rows = []
    load0 = os.getloadavg()[0]
    for model in ("moe", "attention"):
        cmd = [sys.executable, __file__, "--child", "--model", model, "--cache", str(cache), "--labels",
               str(syn.labels_csv), "--features", features, "--out", str(work / f"run_{model}"),
               "--folds", str(args.folds), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--patience", str(args.patience)] + (["--threads", str(args.threads)] if args.threads else [])
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if res.returncode:
            print(res.stderr[-3000:])
            raise SystemExit(f"fit of {model} failed")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    load1 = os.getloadavg()[0]
    print(f"\n(a) MER-sized fit: {args.n} clips x {args.experts} experts x {args.dim}-d, 6 classes, "
          f"{args.folds} folds x 1 seed, --batch-size {args.batch_size} --epochs {args.epochs} "
          f"--patience {args.patience}, {rows[0]['threads']} torch threads, "
          f"load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores")
    print("| model | wall time (s) | peak RSS (MB) | epochs per fold | OOF weighted F1 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{sum(r['epochs']) / len(r['epochs']):.1f} (max {max(r['epochs'])}) | {r['weighted_f1']:.3f} |")
    moe = rows[0]["seconds"]
    print(f"target MoE <= 180 s: {'met' if moe <= 180 else 'NOT met'} ({moe:.0f} s)")


def _read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def part_b(args) -> None:
    from extract.cache import FeatureCache
    from models import fit, open_run
    from models.metrics import scores

    logging.getLogger("moe.models").setLevel(logging.ERROR)  # figures only: each fit keeps its warnings in .notes
    if not EMO_AV.is_dir():
        print(f"(b) skipped: {EMO_AV} is absent")
        return
    if not args.cache or not FeatureCache(args.cache).keys():
        print(f"(b) skipped: no emo-av feature cache (pass --cache DIR of `cli.py extract` run on {EMO_AV})")
        return
    fc = FeatureCache(args.cache)
    keys = [fc.resolve(k) for k in args.features.split(",")] if args.features else [
        k for k in fc.keys() if fc.feature_set(k).kind != "record"]
    labels = {r["name"]: r for r in _read_csv(EMO_AV / "labels.csv")}
    role = {r["name"]: r["role"] for r in _read_csv(EMO_AV / "split.csv")}
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_fit_b_"))
    work.mkdir(parents=True, exist_ok=True)
    train_csv, groups_csv = work / "labeled_role.csv", work / "speakers.csv"
    with open(train_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "discrete", "speaker"])
        for n, r in sorted(labels.items()):
            if role.get(n) == "labeled":
                w.writerow([n, r["discrete"], r["speaker"]])
    with open(groups_csv, "w", newline="") as fh:      # speaker of every clip: metadata, not a label
        w = csv.writer(fh)
        w.writerow(["name", "group"])
        for n, r in sorted(labels.items()):
            w.writerow([n, r["speaker"]])
    folds = len({r["speaker"] for n, r in labels.items() if role.get(n) == "labeled"})
    print(f"(b) emo-av: features {', '.join(keys)}; labeled role cross-validated by speaker ({folds} folds, "
          f"seeds {args.seeds}); unlabeled role held out")
    table: dict = {}
    for mode in ("fold", "pool", "group"):
        for model in ("moe", "attention"):
            out = work / f"run_{model}_{mode}"
            t0 = time.time()
            res = fit(args.cache, train_csv, keys, out, model=model, folds=folds, seeds=args.seeds,
                      groups="speaker", normalize=mode, group_table=str(groups_csv), epochs=args.b_epochs,
                      batch_size=32, patience=args.b_patience, device="cpu", progress=False)
            run = open_run(res.run_dir)
            for r in res.metrics:
                ids, p = run.probs("test", r["member"])
                y = [run.classes.index(labels[i]["discrete"]) for i in ids]
                held = scores(y, p.argmax(1)) if len(ids) else {"weighted_f1": float("nan")}
                name = r["member"] if r["kind"] != "routed" else ("MoE (routed)" if model == "moe" else "attention")
                table.setdefault(name, {})[mode] = (r["weighted_f1"], held["weighted_f1"])
            print(f"  {model:9s} --normalize {mode:5s}: {time.time() - t0:.0f} s")
    print("\n(b) weighted F1 on emo-av, out-of-fold (labeled role, speaker-grouped) / held-out role")
    print("| member | fold | pool | group |")
    print("|---|---|---|---|")
    for name, by in table.items():
        cells = [f"{by[m][0]:.3f} / {by[m][1]:.3f}" if m in by else "-" for m in ("fold", "pool", "group")]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["a", "b", "all"], default="all")
    ap.add_argument("--cache", help="(b) emo-av feature cache; (child) the cache")
    ap.add_argument("--features", help="(b) feature keys (default: every numeric feature set of the cache)")
    ap.add_argument("--work", help="working directory (default: a new temp dir)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    ap.add_argument("--n", type=int, default=7369)
    ap.add_argument("--experts", type=int, default=6)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seeds", default="0,1,2", help="(b) seeds")
    ap.add_argument("--b-epochs", type=int, default=60)
    ap.add_argument("--b-patience", type=int, default=15)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="moe", help=argparse.SUPPRESS)
    ap.add_argument("--labels", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    if args.part in ("a", "all"):
        part_a(args)
    if args.part in ("b", "all"):
        part_b(args)


if __name__ == "__main__":
    main()
