"""Which modality drove a decision: the router weights ``fit`` stores per clip (router/oof.csv,
router/test.csv), summarised per true class for the report and listed per clip by ``recognise``."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def short(member: str) -> str:
    """``expert-librosa-ff175773bc`` -> ``librosa``; ``fused`` stays."""
    if member.startswith("expert-"):
        member = member[len("expert-"):]
        head, _, tail = member.rpartition("-")
        return head if head and len(tail) == 10 and all(c in "0123456789abcdef" for c in tail) else member
    return member


def router_by_class(run) -> dict | None:
    """Mean out-of-fold router weight per expert per true class of one run (None: no router weights)."""
    got = run.router("oof")
    if got is None:
        return None
    ids, w, names = got
    labels = run.labels()
    classes = list(run.classes)
    rows, counts = [], []
    y = np.array([classes.index(labels[i]) if labels.get(i) in classes else -1 for i in ids])
    for k in range(len(classes)):
        sel = y == k
        counts.append(int(sel.sum()))
        rows.append(w[sel].mean(axis=0) if sel.any() else np.full(len(names), np.nan))
    return {"run": run.root.name, "classes": classes, "experts": [short(n) for n in names],
            "weights": np.array(rows), "counts": counts}


def table_rows(summary: dict) -> list[dict]:
    out = []
    for cls, row, n in zip(summary["classes"], summary["weights"], summary["counts"]):
        out.append({"true class": cls, "n": n, **{e: float(v) for e, v in zip(summary["experts"], row)}})
    return out


def plot_router_heatmap(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = summary["weights"]
    n_c, n_e = w.shape
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * n_e, 1.0 + 0.55 * n_c), dpi=110)
    ax.imshow(np.nan_to_num(w), cmap="Greens", vmin=0, vmax=max(float(np.nanmax(w)) if np.isfinite(w).any() else 1, 1e-6))
    for i in range(n_c):
        for j in range(n_e):
            ax.text(j, i, "" if np.isnan(w[i, j]) else f"{w[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(n_e), summary["experts"], rotation=45, ha="right")
    ax.set_yticks(range(n_c), [f"{c} ({n})" for c, n in zip(summary["classes"], summary["counts"])])
    ax.set_xlabel("expert")
    ax.set_ylabel("true class (clips)")
    ax.set_title(f"mean router weight, out-of-fold: {summary['run']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def top_experts(weights: np.ndarray, names: list[str], k: int = 2) -> list[list[tuple[str, float]]]:
    """Per row: the ``k`` experts with the largest router weight, as (short name, weight)."""
    out = []
    for row in np.asarray(weights):
        order = np.argsort(-row, kind="stable")[:k]
        out.append([(short(names[j]), float(row[j])) for j in order])
    return out
