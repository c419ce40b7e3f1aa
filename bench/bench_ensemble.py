"""Benchmark of `ensemble.ensemble` (the library behind `cli.py ensemble`; prints figures, no assertion).

(a) Speed: 20,000 rows to predict x 20 members (4 synthetic RUN_DIRs of 3 experts + fused + routed,
    7,369 labeled out-of-fold rows as in MER2025-SEMI, 6 classes), reliance vote with p tuned, and
    rules class_priority + prior_correction + annotator_override (auto thresholds), annotator answers
    for every id. Wall time of a whole `ensemble()` call, i.e. the command's work (read CSVs, tune,
    vote, rules, cross-fitted OOF table, write outputs), and of the vote + rules alone. Target: <= 2 s.

(b) Quality on ../shared/data/emo-av with RUN_DIRs fitted on it (``--runs``; skipped without them):
    out-of-fold weighted F1 (speaker-grouped folds are the fit's job) of the best single member, the
    soft vote, the reliance vote and the reliance vote + rules (emo-av sample: prior correction and
    annotator override with annotator.jsonl), in-sample and cross-fitted; and the same on the runs'
    predicted ids where emo-av's labels.csv knows them (the unlabeled role, scored only). Each vote
    is one `ensemble()` call scored by `evaluate()`; the best single member is picked from the
    members `ensemble` reads (ensemble.members), which no API call returns on its own.

    python bench/bench_ensemble.py [--rows 20000] [--members 20] [--runs RUN_DIR ...] [--skip-speed]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ensemble.synth import write_run_dir

REPO = Path(__file__).resolve().parents[1]
EMO_AV = REPO.parent / "shared" / "data" / "emo-av"
MER = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
RULES_YAML = """rules:
  - rule: class_priority
    name: worried-yields
    when_top: [worried]
    prefer: [sad, surprise, neutral]
    margin: 0.10
  - rule: prior_correction
    target: labeled
    method: ipf
    strength: 0.5
  - rule: annotator_override
    margin: auto
    confidence: auto
"""


def build_speed_case(root: Path, n_rows: int, n_members: int, n_labeled: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    C = len(MER)
    lab_ids = [f"lab{i:06d}" for i in range(n_labeled)]
    test_ids = [f"tst{i:06d}" for i in range(n_rows)]
    y_lab, y_test = rng.integers(0, C, n_labeled), rng.integers(0, C, n_rows)
    labels = {n: MER[k] for n, k in zip(lab_ids, y_lab)}
    per_run = 5
    # members share most of their errors (one clip is hard for every model): a common per-clip noise
    shared = {"lab": 1.2 * rng.normal(size=(n_labeled, C)), "tst": 1.2 * rng.normal(size=(n_rows, C))}

    def probs(y, keep, skill, part):
        logits = skill * np.eye(C)[y[keep]] + shared[part][keep] + 0.8 * rng.normal(size=(int(keep.sum()), C))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    runs = []
    for r in range(max(1, n_members // per_run)):
        oof, test = {}, {}
        for name, skill, cov in [("expert-audio", 0.8, 0.95), ("expert-face", 1.2, 0.85), ("expert-text", 0.2, 1.0),
                                 ("fused", 1.6, 1.0), ("routed", 1.7, 1.0)]:
            for ids, y, store, part in ((lab_ids, y_lab, oof, "lab"), (test_ids, y_test, test, "tst")):
                keep = rng.random(len(ids)) < cov
                store[name] = ([i for i, kk in zip(ids, keep) if kk], probs(y, keep, skill + 0.1 * r, part))
        runs.append(write_run_dir(root / f"run{r}", MER, labels, oof, test))
    ann = root / "annotator.jsonl"
    with open(ann, "w") as fh:
        for n, k in [*zip(lab_ids, y_lab), *zip(test_ids, y_test)]:
            said = MER[k] if rng.random() < 0.6 else str(rng.choice(MER + ["contempt"]))
            fh.write(json.dumps({"name": n, "label": said, "scores": {said: float(rng.uniform(0.4, 1.0))}}) + "\n")
    (root / "rules.yaml").write_text(RULES_YAML)
    return runs, ann, root / "rules.yaml"


def bench_speed(args) -> None:
    from ensemble import ensemble
    from extract.annotator import load_annotator
    from ensemble.members import load_members
    from ensemble.pipeline import EnsemblePipeline
    from ensemble.reranking import load_rules

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.time()
        runs, ann, rules = build_speed_case(root, args.rows, args.members, args.labeled)
        print(f"(a) built {len(runs)} RUN_DIRs x 5 members, {args.rows} rows to predict, {args.labeled} OOF rows "
              f"in {time.time() - t:.1f} s")
        walls, cpus = [], []
        for _ in range(args.repeat):  # the same output each time: ensemble() replaces its own predictions
            t, c = time.perf_counter(), time.process_time()
            res = ensemble(runs, root / "pred.csv", rules=str(rules), annotator=str(ann), progress=False)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        print(_summary(res))
        t = time.perf_counter()
        ms = load_members(runs)
        t_load = time.perf_counter() - t
        rs = load_rules(rules, ms.classes)
        annotator = load_annotator(ann)
        t = time.perf_counter()
        pipe = EnsemblePipeline(ms.classes, "reliance", "auto", rs, annotator).fit(ms.tuning, ms.y)
        t_fit = time.perf_counter() - t
        t = time.perf_counter()
        out = pipe.run(ms.target)
        t_run = time.perf_counter() - t
        n_members = len(ms.members)
        print(f"(a) {len(ms.target.ids)} rows x {n_members} members, {len(rs.rules)} rules: "
              f"whole `ensemble()` call {min(walls):.2f} s wall, {min(cpus):.2f} s CPU (best of {len(walls)}; "
              f"target <= 2 s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); "
              f"of which read RUN_DIRs {t_load:.2f} s, tune on OOF {t_fit:.2f} s, vote + rules on the "
              f"{len(out.ids)} rows {t_run:.3f} s")


def _summary(res) -> str:
    """What `cli.py ensemble` prints of a result, in short."""
    m = res.meta
    vote = f"vote {m['vote']}" + (f" (p = {m['power']})" if m["vote"] == "reliance" else "")
    lines = [f"ensemble: {len(res.run_dirs)} runs, {m['counts']['members']} members, {vote}, tuned on "
             f"{m['tuned_on']['rows']} out-of-fold rows; predicted {len(res.labels)} ids"]
    lines += [f"  rule {name}: changed {n} labels" for name, n in res.changes.items()]
    if res.stages:
        first, last = res.stages[0], res.stages[-1]
        lines.append(f"  out-of-fold weighted F1: {first['weighted_f1_in_sample']:.4f} after the vote -> "
                     f"{last['weighted_f1_in_sample']:.4f} after the rules (cross-fitted "
                     f"{first.get('weighted_f1_cross_fitted', float('nan')):.4f} -> "
                     f"{last.get('weighted_f1_cross_fitted', float('nan')):.4f})")
    return "\n".join(lines)


def _load_truth(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        return {r["name"]: r["discrete"] for r in csv.DictReader(fh)}


def bench_emo_av(args) -> None:
    if not EMO_AV.is_dir():
        print(f"(b) skipped: {EMO_AV} is absent")
        return
    if not args.runs:
        print("(b) skipped: no RUN_DIR fitted on emo-av given. Fit one first, e.g.\n"
              "    python cli.py fit --cache CACHE --labels LABELED.csv --features ... --groups speaker "
              "--out runs/emo-av\n    then: python bench/bench_ensemble.py --skip-speed --runs runs/emo-av")
        return
    from ensemble import ensemble, evaluate
    from ensemble.members import load_members
    from ensemble.pipeline import tuning_folds
    from ensemble.voting import fast_weighted_f1

    ms = load_members(args.runs)
    C = len(ms.classes)
    truth = _load_truth(EMO_AV / "labels.csv")
    cidx = {c: i for i, c in enumerate(ms.classes)}
    scored = [i for i, n in enumerate(ms.target.ids) if truth.get(n) in cidx]
    y_tgt = np.array([cidx[truth[ms.target.ids[i]]] for i in scored], np.int64)
    print(f"(b) emo-av: {len(ms.runs)} runs, {len(ms.members)} members, {len(ms.y)} OOF rows, "
          f"{len(ms.target.ids)} predicted ids ({len(scored)} with a label in emo-av/labels.csv, scored only)")
    rows = []
    f1s = [(fast_weighted_f1(ms.y[ms.tuning.present[m]], ms.tuning.probs[m, ms.tuning.present[m]].argmax(1), C), m)
           for m in range(len(ms.members)) if ms.tuning.present[m].all()]
    best_f1, best = max(f1s)
    tgt_best = ms.target.probs[best, scored]
    ok = ~np.isnan(tgt_best).any(axis=1)
    full = [m for _, m in f1s]
    cf_pred = np.zeros(len(ms.y), np.int64)  # cross-fitted: pick the best member on the other folds
    for train, held in tuning_folds(ms.y, 5, 0):
        pick_m = max(full, key=lambda m: fast_weighted_f1(ms.y[train], ms.tuning.probs[m, train].argmax(1), C))
        cf_pred[held] = ms.tuning.probs[pick_m, held].argmax(1)
    rows.append((f"best single member ({ms.names[best]})", best_f1, fast_weighted_f1(ms.y, cf_pred, C),
                 fast_weighted_f1(y_tgt[ok], tgt_best[ok].argmax(1), C) if ok.any() else float("nan")))
    recipes = [("soft vote", "soft", None), ("reliance vote", "reliance", None),
               ("reliance vote + rules (emo-av.yaml)", "reliance", args.rules)]
    nan = float("nan")
    with tempfile.TemporaryDirectory() as tmp:  # fresh outputs: predictions and reports of this bench only
        for k, (title, vote, rules) in enumerate(recipes):
            res = ensemble(args.runs, Path(tmp) / f"recipe{k}.csv", vote=vote, rules=rules,
                           annotator=str(EMO_AV / "annotator.jsonl") if rules else None, progress=False)
            last = res.stages[-1] if res.stages else {}  # out-of-fold, after the vote and every rule
            held = evaluate(res.predictions, EMO_AV / "labels.csv").metrics["weighted_f1"] if scored else nan
            rows.append((title, last.get("weighted_f1_in_sample", nan), last.get("weighted_f1_cross_fitted", nan),
                         held))
    width = max(len(r[0]) for r in rows)
    print(f"    {'weighted F1':<{width}}  OOF in-sample  OOF cross-fitted  predicted ids")
    for title, a, b, c in rows:
        print(f"    {title:<{width}}  {a:>13.4f}  {b:>16.4f}  {c:>13.4f}")
    groups = sorted({str(r.config.get("groups")) for r in ms.runs})
    print(f"    OOF folds grouped by: {', '.join(groups)} (face sequences recur across speakers within a role, so "
          "face-feature OOF figures are optimistic); 'predicted ids' is the honest role split when the runs were "
          "fitted on the labeled role only")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--labeled", type=int, default=7369)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runs", nargs="*", default=[], help="RUN_DIRs fitted on emo-av, for (b)")
    ap.add_argument("--rules", default="emo-av", help="rules for (b): file or shipped sample name")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    if not args.skip_speed:
        bench_speed(args)
    bench_emo_av(args)


if __name__ == "__main__":
    main()
