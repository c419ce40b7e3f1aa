"""How far to trust a final score: temperature scaling fitted on out-of-fold rows, expected
calibration error, a reliability diagram and a coverage-vs-accuracy curve.

The ensemble's final scores (vote, then rules) are class scores that sum to one but are not
calibrated. ``TemperatureScaler`` learns one temperature T on the labeled out-of-fold rows only
(the rows the vote and the rules were tuned on) by minimising the negative log-likelihood of
``softmax(log(score) / T)`` (Guo et al. 2017); T > 1 softens over-confident scores. The argmax never
changes, so calibration changes confidences, never labels.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-12
T_BOUNDS = (0.05, 20.0)


def _log(scores: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(scores, np.float64), EPS, None))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class TemperatureScaler:
    """``fit(scores, y)`` returns self; ``temperature_``; ``transform(scores)`` -> calibrated probabilities."""

    def __init__(self, temperature: float | None = None):
        self.temperature = temperature

    def fit(self, scores, y) -> "TemperatureScaler":
        from scipy.optimize import minimize_scalar

        logs, y = _log(scores), np.asarray(y, np.int64)
        if self.temperature is not None or not len(y):
            self.temperature_ = float(self.temperature or 1.0)
            return self

        def nll(log_t):
            p = softmax(logs / np.exp(log_t))
            return -np.log(np.clip(p[np.arange(len(y)), y], EPS, None)).mean()

        res = minimize_scalar(nll, bounds=tuple(np.log(T_BOUNDS)), method="bounded", options={"xatol": 1e-6})
        self.temperature_ = float(np.exp(res.x))
        self.n_ = int(len(y))
        return self

    def transform(self, scores) -> np.ndarray:
        return softmax(_log(scores) / self.temperature_)


def ece(probs, y, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence (equal-width bins)."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y, np.int64)
    if not len(y):
        return float("nan")
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == y).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.sum() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total / len(y))


def reliability(probs, y, n_bins: int = 10) -> list[dict]:
    """Per confidence bin: mean confidence, accuracy, count."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y, np.int64)
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return [{"bin": f"{b / n_bins:.1f}-{(b + 1) / n_bins:.1f}", "confidence": float(conf[bins == b].mean()),
             "accuracy": float(correct[bins == b].mean()), "n": int((bins == b).sum())}
            for b in range(n_bins) if (bins == b).any()]


def coverage_curve(probs, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, accuracy of the kept rows, confidence threshold) when keeping the most confident rows."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y, np.int64)
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y)
    order = np.argsort(-conf, kind="stable")
    kept = np.arange(1, len(y) + 1)
    return kept / max(len(y), 1), np.cumsum(correct[order]) / kept, conf[order]


def plot_calibration(before, after, y, reliability_path, coverage_path, title: str = "") -> None:
    """Reliability diagram (before / after calibration) and coverage-vs-accuracy curve, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for probs, name in ((before, f"raw (ECE {ece(before, y):.3f})"), (after, f"calibrated (ECE {ece(after, y):.3f})")):
        rows = reliability(probs, y)
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title or "reliability", fontsize=10)
    fig.tight_layout()
    fig.savefig(reliability_path)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    cov, acc, _ = coverage_curve(after, y)
    ax.plot(cov, acc)
    ax.set_xlabel("coverage (share of clips kept, most confident first)")
    ax.set_ylabel("accuracy of the kept clips")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("coverage vs accuracy", fontsize=10)
    fig.tight_layout()
    fig.savefig(coverage_path)
    plt.close(fig)
