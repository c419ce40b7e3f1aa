"""Evaluation report: metrics, per-class table, confusion matrix PNG, per-member table, and the
out-of-fold metric before and after each rule.

Metrics follow MER2025: weighted F1 is sklearn's ``f1_score(average="weighted")``; macro F1 and
accuracy are secondary. Out-of-fold stage figures come in two columns: *in-sample* (the pipeline
fitted on all tuning rows and scored on them, i.e. what ``ensemble`` used) and *cross-fitted* (each
tuning row scored by a pipeline fitted on the other folds: the honest estimate).
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from extract.outputs import WRITTEN_BY

from .pipeline import EnsemblePipeline, cross_fit
from .voting import fast_weighted_f1

REPORT_RECORD = "report.json"  # which command wrote the report folder, and its files


def classification_metrics(y, pred, classes) -> dict:
    from sklearn.metrics import precision_recall_fscore_support

    from models.metrics import scores

    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    if not len(y):
        return {"n": 0, **scores(y, pred), "per_class": []}
    all_labels = np.arange(len(classes))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=all_labels, zero_division=0)
    return {
        "n": int(len(y)),
        **scores(y, pred),  # weighted_f1, macro_f1, accuracy
        "per_class": [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                       "support": int(s[i]), "predicted": int((pred == i).sum())} for i, c in enumerate(classes)],
    }


def confusion(y, pred, n_classes) -> np.ndarray:
    return np.bincount(np.asarray(y) * n_classes + np.asarray(pred), minlength=n_classes ** 2).reshape(
        n_classes, n_classes)


def plot_confusion(cm: np.ndarray, classes, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * n, 1.0 + 0.7 * n), dpi=110)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def member_table(ms, pipeline: EnsemblePipeline) -> list[dict]:
    """Per member: kind, coverage of the tuning rows, OOF weighted/macro F1 and accuracy, vote weight.

    ``pipeline`` must be fitted on ``ms.tuning`` and ``ms.y`` (with at least one row): the weighted F1
    is the one its voter measured there (``voter_.member_f1_``)."""
    from sklearn.metrics import accuracy_score, f1_score

    rows = []
    for m, mem in enumerate(ms.members):
        here = ms.tuning.present[m]
        row = {"member": mem.name, "kind": mem.kind, "coverage": int(here.sum()), "of": int(len(here))}
        if here.any():
            pred = ms.tuning.probs[m, here].argmax(axis=1)
            yy = ms.y[here]
            row.update(weighted_f1=float(pipeline.voter_.member_f1_[m]),
                       macro_f1=float(f1_score(yy, pred, average="macro", zero_division=0)),
                       accuracy=float(accuracy_score(yy, pred)))
        else:
            row.update(weighted_f1=float("nan"), macro_f1=float("nan"), accuracy=float("nan"))
        row["weight"] = float(pipeline.voter_.weights_[m])
        rows.append(row)
    return rows


def oof_stage_table(ms, pipeline: EnsemblePipeline, n_splits: int = 5, seed: int = 0,
                    cross_fitted: bool = True) -> list[dict]:
    """Metric after the vote and after each rule on the tuning rows: in-sample and cross-fitted.

    In-sample stages come from the pipeline's fit when it was fitted on ``ms.tuning`` (as both
    callers do), else from running it there."""
    from sklearn.metrics import f1_score

    C = len(ms.classes)
    fitted = pipeline.fit_result_
    res = fitted if fitted.ids is ms.tuning.ids else pipeline.run(ms.tuning)
    cf = cross_fit(pipeline, ms.tuning, ms.y, n_splits, seed) if cross_fitted else None

    def block(how, labels, changed) -> dict:
        return {f"changed_{how}": int(changed.sum()), f"weighted_f1_{how}": fast_weighted_f1(ms.y, labels, C),
                f"macro_f1_{how}": float(f1_score(ms.y, labels, average="macro", zero_division=0)),
                f"accuracy_{how}": float((labels == ms.y).mean())}

    rows = []
    for k, st in enumerate(res.stages):
        row = {"stage": st.name, **block("in_sample", st.labels, st.changed)}
        if cf is not None:
            _, labels, changed = cf
            row.update(block("cross_fitted", labels[k], changed[k]))
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if np.isnan(v) else f"{v:.4f}"
    return str(v)


def _md_table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "(none)\n"
    cols = cols or list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def tuned_on_text(meta: dict | None) -> str:
    if not meta:
        return ("No predictions.meta.json was found next to the predictions: how they were tuned is unknown.")
    t = meta.get("tuned_on", {})
    return t.get("text", "unknown")


def write_report(out_dir: Path, metrics: dict, cm: np.ndarray, classes, counts: dict, meta: dict | None,
                 members: list[dict] | None = None, stages: list[dict] | None = None,
                 notes: list[str] | None = None, sources: dict | None = None, calibration: dict | None = None,
                 routers: list[dict] | None = None) -> dict[str, Path]:
    """``calibration``: {"raw", "calibrated" (n, C) scores, "y", "temperature"} of the scored rows;
    ``routers``: per run, ensemble.explain.router_by_class summaries."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / "report.md", "metrics": out_dir / "metrics.json",
             "per_class": out_dir / "per_class.csv", "confusion": out_dir / "confusion.png"}
    plot_confusion(cm, classes, paths["confusion"],
                   f"weighted F1 {metrics['weighted_f1']:.4f}  (n={metrics['n']})")
    _write_csv(paths["per_class"], metrics["per_class"])
    if members:
        paths["members"] = out_dir / "members.csv"
        _write_csv(paths["members"], members)
    if stages:
        paths["oof_stages"] = out_dir / "oof_stages.csv"
        _write_csv(paths["oof_stages"], stages)
    cal_rows = None
    if calibration is not None:
        from .calibration import ece, plot_calibration

        paths["reliability"], paths["coverage"] = out_dir / "reliability.png", out_dir / "coverage.png"
        raw, cal, yy = calibration["raw"], calibration["calibrated"], calibration["y"]
        plot_calibration(raw, cal, yy, paths["reliability"], paths["coverage"],
                         f"reliability, T = {calibration['temperature']:.3f}")
        cal_rows = [{"scores": "raw (vote + rules)", "ECE": ece(raw, yy), "mean confidence": float(raw.max(1).mean())},
                    {"scores": f"calibrated (T = {calibration['temperature']:.3f})", "ECE": ece(cal, yy),
                     "mean confidence": float(cal.max(1).mean())}]
    router_rows = []
    for k, summary in enumerate(routers or []):
        from .explain import plot_router_heatmap, table_rows

        paths[f"router_{k}"] = plot_router_heatmap(summary, out_dir / f"router_weights_{k}.png")
        router_rows.append((summary, table_rows(summary), paths[f"router_{k}"].name))
    payload = {"metrics": metrics, "confusion": cm.tolist(), "classes": list(classes), "counts": counts,
               "sources": sources or {}, "tuned_on": tuned_on_text(meta), "members": members, "oof_stages": stages,
               "notes": notes or [], "calibration": cal_rows,
               "router_weights": [{"run": sm["run"], "rows": rows} for sm, rows, _ in router_rows]}
    paths["metrics"].write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")

    md = ["# Evaluation report", ""]
    for k, v in (sources or {}).items():
        md.append(f"- {k}: `{v}`")
    md += ["", "## What it was tuned on", "", tuned_on_text(meta), ""]
    if meta:
        md.append(f"Vote: **{meta.get('vote')}**"
                  + (f", reliance exponent p = {meta.get('power')}" if meta.get("vote") == "reliance" else "")
                  + f"; rules: {meta.get('rules_file') or 'none'}.")
        md.append("")
    md += ["## Scores", "",
           f"Scored on {counts.get('matched', metrics['n'])} ids that have both a prediction and a label "
           f"({counts.get('predictions', '?')} predictions, {counts.get('labels', '?')} labels; "
           f"{counts.get('predictions_without_label', 0)} predictions without a label were not scored, "
           f"{counts.get('labels_without_prediction', 0)} labeled ids have no prediction).", "",
           _md_table([{"weighted F1": metrics["weighted_f1"], "macro F1": metrics["macro_f1"],
                       "accuracy": metrics["accuracy"], "n": metrics["n"]}]),
           "### Per class", "", _md_table(metrics["per_class"]),
           "### Confusion matrix (rows: true, columns: predicted)", "", "![confusion matrix](confusion.png)", ""]
    if members:
        md += ["## Members (out-of-fold, on the tuning rows)", "",
               _md_table(members, ["member", "kind", "coverage", "of", "weighted_f1", "macro_f1", "accuracy",
                                   "weight"])]
    if stages:
        md += ["## Out-of-fold metric before and after each rule", "",
               "In-sample: the pipeline fitted on all tuning rows and scored on them (what `ensemble` used). "
               "Cross-fitted: each tuning row predicted by a pipeline fitted on the other folds (honest).", "",
               _md_table(stages)]
    if cal_rows:
        md += ["## Calibration", "",
               "Temperature scaling of the final scores, fitted on the labeled out-of-fold rows (never on these). "
               "Expected calibration error (15 bins) on the scored ids:", "", _md_table(cal_rows),
               "![reliability diagram](reliability.png) ![coverage vs accuracy](coverage.png)", ""]
    for summary, rows, png in router_rows:
        md += [f"## Router weights: {summary['run']}", "",
               "Mean router weight of each expert (and the fused expert) per true class, on the out-of-fold rows: "
               "which modality the model relied on.", "", _md_table(rows), f"![router weights]({png})", ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    paths["report"].write_text("\n".join(md), encoding="utf-8")
    record = {WRITTEN_BY: "evaluate", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "files": sorted(p.name for p in paths.values())}
    (out_dir / REPORT_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return paths
