"""Benchmark of consensus pseudo-labels and stage-2 training on ../shared/data/emo-av (prints figures).

1. A feature cache (librosa, egemaps, face-au) of the 287 clips: reused when --cache already holds
   those three extractors, else `extract.extract` fills it (default: OUT/cache, git-ignored).
2. Stage 1: `models.fit` on the labeled role only (speakers 03 08 09 10), cross-validated grouped by
   speaker, --normalize pool, 1 torch thread; the unlabeled role (speakers 11-14, other faces) is
   predicted.
3. `models.pseudo_label` with annotator.jsonl over the 160 unlabeled-role clips at a few --min-confidence
   values: coverage (kept / 160) and precision against the withheld labels, per class too.
4. Stage 2 (`--stage2 joint` and `pretrain-finetune`, --pseudo-weight 0.5 (the CLI default) and 1.0)
   on the pseudo file of one threshold fixed in advance (--stage2-threshold): out-of-fold weighted F1
   on the labeled role, and weighted F1 on the unlabeled role: over all 160 clips (the pseudo-labeled
   ones were trained on with their pseudo label) and over the clips that were NOT pseudo-labeled.

Label hygiene (../shared/data/README.md): the run only ever sees `discrete` of labeled-role rows;
unlabeled-role labels are read by `_Truth` and used only to score, after every fit and pseudo-label
step. Clip names are opaque ids.

    python bench/bench_pseudo.py [--cache DIR] [--out DIR] [--seeds 0,1,2]
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMO_AV = REPO.parent / "shared" / "data" / "emo-av"
FEATURES = ("librosa", "egemaps", "face-au")
CLASSES = "angry,disgust,fear,happy,sad"


def _read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write_csv(path, header, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return Path(path)


class _Truth:
    """The withheld labels of the unlabeled role: read only to score finished outputs."""

    def __init__(self, labels_csv, unlabeled: list[str]):
        rows = {r["name"]: r["discrete"] for r in _read_csv(labels_csv)}
        self.label = {n: rows[n] for n in unlabeled}


def ensure_cache(cache: Path) -> tuple[Path, list[str]]:
    """Keys of the three feature sets, extracting the missing ones once."""
    from extract.cache import CacheError, FeatureCache

    def have():
        fc = FeatureCache(cache) if cache.is_dir() else None
        found = {}
        for name in FEATURES:
            try:
                found[name] = fc.resolve(name) if fc is not None else None
            except CacheError:  # not in the cache (or ambiguous): extract it
                found[name] = None
        return found

    found = have()
    missing = [n for n, k in found.items() if k is None]
    if missing:
        from extract import extract

        print(f"extracting {', '.join(missing)} into {cache}: extract({str(EMO_AV)!r}, {str(cache)!r}, "
              f"features={','.join(missing)!r}, jobs=2)", flush=True)
        summary = extract(EMO_AV, cache, features=",".join(missing), jobs=2, progress=sys.stderr.isatty())
        print(f"  {summary.clips} clips, {summary.decoded} decoded, {len(summary.failures)} failures "
              f"in {summary.seconds:.0f} s", flush=True)
        found = have()
        if any(k is None for k in found.values()):
            raise SystemExit(f"cache {cache} still lacks {[n for n, k in found.items() if k is None]} after extract")
    else:
        print(f"reusing cache {cache}: {', '.join(found.values())}")
    fc = FeatureCache(cache)
    n = len(fc.all_ids())
    if n < 287:
        print(f"warning: cache {cache} knows {n} clips, fewer than the 287 of emo-av")
    return cache, list(found.values())


def wf1(truth: dict, ids, probs, classes, subset=None) -> tuple[float, int, set]:
    """Weighted F1 over ``ids`` (restricted to ``subset``), its n, and the set of correct ids."""
    from models.metrics import weighted_f1

    rows = [k for k, i in enumerate(ids) if subset is None or i in subset]
    y = [classes.index(truth[ids[k]]) for k in rows]
    p = [int(probs[k].argmax()) for k in rows]
    correct = {ids[k] for k, a, b in zip(rows, y, p) if a == b}
    return weighted_f1(y, p), len(rows), correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", help="emo-av feature cache (default: OUT/cache); reused when it holds "
                                    + ", ".join(FEATURES))
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "pseudo"), help="working folder (git-ignored)")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of every fit")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--thresholds", default="0,0.5,0.7", help="--min-confidence values to measure")
    ap.add_argument("--stage2-threshold", type=float, default=0.0,
                    help="--min-confidence of the pseudo file used for stage 2 (fixed before looking)")
    ap.add_argument("--weights", default="0.5,1.0", help="--pseudo-weight values of stage 2")
    args = ap.parse_args()

    if not EMO_AV.is_dir():
        print(f"skipped: {EMO_AV} is absent (the emo-av data set; see ../shared/data/README.md)")
        return
    import torch

    torch.set_num_threads(1)  # the CPU is shared: same as `cli.py fit --threads 1`
    from models import fit, open_run, pseudo_label

    # warnings of fit / pseudo_label go to the moe.* loggers (and each result's .notes): print them as before
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    moe_log = logging.getLogger("moe")
    moe_log.addHandler(handler)
    moe_log.propagate = False

    t_all = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache, keys = ensure_cache(Path(args.cache).resolve() if args.cache else out / "cache")
    features = ",".join(keys)

    role = {r["name"]: r["role"] for r in _read_csv(EMO_AV / "split.csv")}
    unlabeled = sorted(n for n, r in role.items() if r == "unlabeled")
    labeled_rows = [(r["name"], r["discrete"], r["speaker"]) for r in _read_csv(EMO_AV / "labels.csv")
                    if role.get(r["name"]) == "labeled"]  # discrete of labeled-role rows only
    train_csv = _write_csv(out / "labeled_role.csv", ["name", "discrete", "speaker"], sorted(labeled_rows))
    folds = len({s for _, _, s in labeled_rows})
    common = dict(classes=CLASSES, groups="speaker", folds=folds, seeds=args.seeds, normalize="pool",
                  epochs=args.epochs, patience=args.patience, device="cpu", progress=False)
    print(f"emo-av: {len(labeled_rows)} labeled-role clips ({folds} speaker folds, seeds {args.seeds}), "
          f"{len(unlabeled)} unlabeled-role clips; features {features}; --normalize pool, 1 thread")

    timings = {}
    t0 = time.time()
    s1 = out / "stage1"
    fit(cache, train_csv, keys, s1, **common)
    timings["stage 1 fit"] = time.time() - t0
    print(f"stage 1: {timings['stage 1 fit']:.0f} s -> {s1}", flush=True)

    thresholds = [float(t) for t in args.thresholds.split(",")]
    if args.stage2_threshold not in thresholds:
        thresholds.append(args.stage2_threshold)
    t0 = time.time()
    sels = {}
    for thr in thresholds:
        path = out / f"pseudo_min{thr:g}.csv"
        # candidates: the unlabeled-role names only (no label)
        res = pseudo_label(s1, cache, EMO_AV / "annotator.jsonl", path, ids=unlabeled, min_confidence=thr,
                           device="cpu", progress=False)
        sels[thr] = (res.path, res)
    timings["pseudo-label"] = time.time() - t0

    runs = {"stage 1": s1}
    t0 = time.time()
    pseudo_path = sels[args.stage2_threshold][0]
    for mode in ("joint", "pretrain-finetune"):
        for w in (float(x) for x in args.weights.split(",")):
            name = f"stage 2 {mode} w={w:g}"
            d = out / f"stage2_{mode}_w{w:g}"
            t1 = time.time()
            fit(cache, train_csv, keys, d, pseudo=str(pseudo_path), stage2=mode, pseudo_weight=w, **common)
            print(f"{name}: {time.time() - t1:.0f} s -> {d}", flush=True)
            runs[name] = d
    timings["stage 2 fits"] = time.time() - t0

    # ---- scoring: the withheld labels of the unlabeled role are read from here on only ----
    truth = _Truth(EMO_AV / "labels.csv", unlabeled).label
    run1 = open_run(s1)
    classes = run1.classes
    n_un = len(unlabeled)
    ann = {}
    with open(EMO_AV / "annotator.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                o = json.loads(line)
                ann[o["name"]] = o["label"]
    ann_acc = sum(ann.get(n) == truth[n] for n in unlabeled) / n_un
    ann_out = sum(ann.get(n) not in classes for n in unlabeled)
    ids1, p1 = run1.probs("test", run1.routed_member())
    s1_acc = sum(classes[int(p.argmax())] == truth[i] for i, p in zip(ids1, p1)) / len(ids1)

    print(f"\n### Consensus pseudo-labels on the {n_un} unlabeled-role clips (stage-1 routed MoE == annotator)\n")
    print(f"Judges alone on these clips: stage-1 routed accuracy {s1_acc:.3f}; annotator accuracy {ann_acc:.3f} "
          f"({ann_out} answers are surprise/neutral, outside the 5 classes).\n")
    print("| --min-confidence | agree | kept / 160 | precision | " + " | ".join(classes) + " |")
    print("|---|---|---|---|" + "---|" * len(classes))
    for thr in thresholds:
        path, sel = sels[thr]
        rows = _read_csv(path)
        ok = [r["discrete"] == truth[r["name"]] for r in rows]
        per = []
        for c in classes:
            kc = [o for r, o in zip(rows, ok) if r["discrete"] == c]
            per.append(f"{sum(kc)}/{len(kc)}" if kc else "0/0")
        prec = sum(ok) / len(ok) if ok else float("nan")
        print(f"| {thr:g} | {sel.counts['agree']} | {len(rows)} ({len(rows) / n_un:.0%}) | {prec:.3f} | "
              + " | ".join(per) + " |")
    print("(per class: correct / kept with that pseudo label)")

    pseudo_ids = {r["name"] for r in _read_csv(pseudo_path)}
    rest = set(unlabeled) - pseudo_ids
    print(f"\n### Stage 1 vs stage 2 (pseudo file: --min-confidence {args.stage2_threshold:g}, "
          f"{len(pseudo_ids)} clips), weighted F1\n")
    print(f"OOF = out-of-fold on the {len(labeled_rows)} labeled-role clips, speaker-grouped (faces recur "
          f"across speakers within a role, so it is optimistic; in stage 2 the pseudo labels also come from "
          f"stage-1 models that saw the validation folds). Unlabeled role: all {n_un} clips (stage 2 "
          f"trained on {len(pseudo_ids)} of them with their pseudo label) / the {len(rest)} clips NOT "
          f"pseudo-labeled (the honest held-out figure). fixed/broken: clips of those {len(rest)} that stage 2 "
          f"gets right and stage 1 wrong / the reverse.\n")
    print("| run | member | OOF labeled | unlabeled, all 160 | unlabeled, not pseudo-labeled | fixed/broken |")
    print("|---|---|---|---|---|---|")
    base = {}
    for name, d in runs.items():
        run = open_run(d)
        metrics = {m: float(r["weighted_f1"]) for m, r in run.metrics().items()}
        for member in ("routed", "fused"):
            ids, p = run.probs("test", member, classes)
            f_all, _, _ = wf1(truth, ids, p, classes)
            f_rest, n_rest, correct = wf1(truth, ids, p, classes, rest)
            if name == "stage 1":
                base[member] = correct
                fb = "-"
            else:
                fb = f"+{len(correct - base[member])}/-{len(base[member] - correct)}"
            print(f"| {name} | {member} | {metrics[member]:.3f} | {f_all:.3f} | {f_rest:.3f} (n={n_rest}) | {fb} |")

    # post-hoc only: which withheld clips show a face already seen, with its pseudo label, in stage 2
    face = {r["name"]: r["face_sequence"] for r in _read_csv(EMO_AV / "sources.csv")}
    subject = {r["name"]: r["face_subject"] for r in _read_csv(EMO_AV / "labels.csv")}
    seen_seq = {face[n] for n in pseudo_ids}
    seen_subj = {subject[n] for n in pseudo_ids}
    print(f"\nOf the {len(rest)} clips not pseudo-labeled, {sum(face[n] in seen_seq for n in rest)} show a face "
          f"sequence that stage 2 trained on (same frames, same class) and {sum(subject[n] in seen_subj for n in rest)} "
          f"a face subject (same person, other expression) of a pseudo-labeled clip.")
    by_mode: dict = {}
    for name, d in runs.items():
        if name != "stage 1":
            by_mode.setdefault(name.rsplit(" w=", 1)[0], []).append(d)
    for mode, dirs in by_mode.items():
        probs = [open_run(d).probs("test", "routed", classes)[1] for d in dirs]
        if len(probs) > 1 and all((p == probs[0]).all() for p in probs[1:]):
            print(f"{mode}: identical predictions for every --pseudo-weight (the pseudo rows are alone in "
                  f"the pre-training loss, whose weighted mean cancels a uniform weight).")

    wall = time.time() - t_all
    print("\nwall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {wall:.0f} s ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
    print(f"outputs: {out}")


if __name__ == "__main__":
    main()
