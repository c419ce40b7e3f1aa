"""EmoDB, leave-one-speaker-out: each audio expert alone and the audio MoE, under --normalize pool,
cluster (speaker clusters without speaker labels) and group (true speakers), against a tuned
standardised logistic regression on the same features (prints figures; no assertion).

    python bench/bench_emodb.py [--cache DIR] [--features librosa,egemaps,speaker,whisper] [--epochs 40]
                                [--heads mlp,logreg] [--modes pool,cluster,group] [--class-weight balanced]

UAR = balanced accuracy (the field's figure for EmoDB); weighted F1 too. The folds are the 8 speakers
(`fit --groups speaker --folds 8` = leave-one-speaker-out). The logistic regression is tuned by an
inner speaker-grouped search over C and z-scores the features with the same statistics as the MoE
(pool: all clips; cluster: per speaker cluster; group: per true speaker). The cache is built with
the Python API when --cache does not hold it (default: a temporary folder).
"""
from __future__ import annotations

import argparse
import csv
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EMODB = ROOT.parent / "shared" / "data" / "emodb"


def labels_csv(work: Path) -> tuple[Path, dict, dict]:
    rows = list(csv.DictReader(open(EMODB / "labels.csv", encoding="utf-8")))
    out = work / "emodb_labels.csv"
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "discrete", "speaker"])
        w.writerows((r["name"], r["emotion"], r["speaker"]) for r in rows)
    return out, {r["name"]: r["emotion"] for r in rows}, {r["name"]: r["speaker"] for r in rows}


def emodb_clips() -> tuple[list[str], np.ndarray, np.ndarray]:
    """EmoDB's clip ids (sorted) with their emotions and speakers, for scripts that need no labels file."""
    rows = sorted(csv.DictReader(open(EMODB / "labels.csv", encoding="utf-8")), key=lambda r: r["name"])
    return [r["name"] for r in rows], np.array([r["emotion"] for r in rows]), np.array([r["speaker"] for r in rows])


def scores(y, p) -> tuple[float, float]:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    return balanced_accuracy_score(y, p), f1_score(y, p, average="weighted")


def logreg_loso(x: np.ndarray, y: np.ndarray, spk: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Out-of-fold predictions of a tuned StandardScaler + LogisticRegression, leave-one-speaker-out;
    features z-scored per ``groups`` first (None: pool statistics)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = x.astype(np.float64).copy()
    if groups is not None:
        for g in np.unique(groups):
            sel = groups == g
            if g and sel.sum() >= 5:
                x[sel] = (x[sel] - x[sel].mean(0)) / (x[sel].std(0) + 1e-6)
    pred = np.empty(len(y), dtype=object)
    for tr, te in LeaveOneGroupOut().split(x, y, spk):
        model = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced")),
                             {"logisticregression__C": [0.01, 0.1, 1.0]}, cv=LeaveOneGroupOut(), n_jobs=1)
        model.fit(x[tr], y[tr], groups=spk[tr])
        pred[te] = model.predict(x[te])
    return pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--features", default="librosa,egemaps,speaker,whisper")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--heads", default="mlp,logreg", help="expert heads of the MoE to compare")
    ap.add_argument("--class-weight", default="balanced",
                    help="fit's --class-weight (balanced: as the logistic-regression baseline weighs its classes)")
    ap.add_argument("--modes", default="pool,cluster,group", help="normalisations to compare")
    args = ap.parse_args()
    if not EMODB.is_dir():
        print(f"skipped: {EMODB} is not here")
        return
    logging.getLogger("moe").setLevel(logging.ERROR)
    from extract import extract
    from extract.cache import FeatureCache
    from extract.registry import load_all
    from models import fit, open_run

    work = Path(tempfile.mkdtemp(prefix="bench-emodb-"))
    cache = Path(args.cache) if args.cache else work / "cache"
    names = [f for f in args.features.split(",") if f in load_all()]
    t0 = time.time()
    s = extract(EMODB / "wav", cache, features=",".join(names), progress=False, jobs=1)
    print(f"cache {cache}: {', '.join(s.keys)} ({s.clips} clips, {time.time() - t0:.0f} s)")
    lab_csv, truth, spk_of = labels_csv(work)
    fc = FeatureCache(cache)
    keys = {k.rsplit('-', 1)[0]: k for k in s.keys}  # this run's keys (a cache may hold older configs too)
    ids = sorted(truth)
    y = np.array([truth[i] for i in ids])
    spk = np.array([spk_of[i] for i in ids])
    cluster_feature = keys.get("speaker")
    audio = [n for n in names if n != "speaker"] or names
    modes = [m for m in args.modes.split(",") if m != "cluster" or cluster_feature]
    rows = []
    for mode in modes:
        groups_by_id = None
        extra = {}
        if mode == "group":
            groups_by_id = spk
        opts = dict(groups="speaker", folds=8, seeds=args.seeds, epochs=args.epochs, normalize=mode, threads=1,
                    class_weight=args.class_weight,
                    progress=False, **({"cluster_feature": cluster_feature} if mode == "cluster" else {}))
        t1 = time.time()
        for head in args.heads.split(","):
            res = fit(cache, lab_csv, [keys[n] for n in audio], work / f"run-{mode}-{head}", head=head, **opts)
            run = open_run(res.run_dir)
            for m in run.members:
                got_ids, p = run.probs("oof", m["member"])
                pos = {i: k for k, i in enumerate(got_ids)}
                keep = [i for i in ids if i in pos]
                pred = np.array(run.classes)[p[[pos[i] for i in keep]].argmax(1)]
                uar, wf1 = scores(np.array([truth[i] for i in keep]), pred)
                rows.append((mode, m["member"], f"MoE {head}", uar, wf1))
        if mode == "cluster":
            cl = run.clusters()
            from extract.cache import read_features

            emb = read_features(cache, cluster_feature, ids)
            groups_by_id = cl.assign(np.asarray(emb.data), emb.present)
            from sklearn.metrics import adjusted_rand_score

            extra = {"k": len(cl.sizes), "ari": adjusted_rand_score(spk, groups_by_id)}
        for n in audio:
            b = fc.read(keys[n], ids)
            x = np.asarray(b.data).reshape(len(ids), -1)
            ok = b.present & np.isfinite(x).all(1)
            pred = logreg_loso(x[ok], y[ok], spk[ok], None if groups_by_id is None else groups_by_id[ok])
            uar, wf1 = scores(y[ok], pred)
            rows.append((mode, f"expert-{keys[n]}", "logreg", uar, wf1))
        print(f"  {mode}: fit {time.time() - t1:.0f} s" + (f"; {extra['k']} clusters, ARI with the true speakers "
                                                          f"{extra['ari']:.3f}" if extra else ""))
    print(f"\nEmoDB, leave-one-speaker-out (8 speakers, 7 classes, {len(ids)} clips), UAR / weighted F1:")
    print(f"{'normalize':<9} {'member':<34} {'model':<11} {'UAR':>6} {'wF1':>6}")
    for mode, member, model, uar, wf1 in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
        print(f"{mode:<9} {member:<34} {model:<11} {uar:6.3f} {wf1:6.3f}")


if __name__ == "__main__":
    main()
