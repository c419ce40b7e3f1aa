"""The MER metrics: weighted F1 (main), macro F1, accuracy."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score


def scores(y_true, y_pred) -> dict:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if len(y_true) == 0:
        return {"weighted_f1": float("nan"), "macro_f1": float("nan"), "accuracy": float("nan")}
    return {"weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred))}


def weighted_f1(y_true, y_pred) -> float:
    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0)) if len(y_true) else 0.0
