"""Voting across members: hard majority, soft (mean probability) and reliance-weighted soft vote.

Inputs are a ``Split``-like pair: ``probs`` (M members, N rows, C classes; NaN where absent) and
``present`` (M, N). Every row is voted on by the members present on it; a row without any member
gets the labeled-set prior as its scores and is counted (``VoteResult.no_member``).

**Scores.** hard: the share of present members voting for each class (each member votes its
argmax); soft and reliance: the weighted mean probability over present members, weights renormalised
per row over the members present on that row. Rows of scores sum to 1.

**Ties** are broken deterministically: among the classes with the highest score, the one with the
higher summed (unweighted) probability over present members wins; if still tied, the class that
comes first in the class order (``classes.json``) wins.

**Reliance weights.** Each member's reliance is its out-of-fold weighted F1 measured on the tuning
rows where it is present, minus the weighted F1 that chance reaches on those labels::

    F1_chance = sum_c pi_c ** 2        (pi = class shares of the tuning labels; the expected
                                        weighted F1 of guessing with the label distribution)
    w_m       = max(F1_m - F1_chance, 0) ** p  /  sum_k max(F1_k - F1_chance, 0) ** p

A member no better than chance gets weight 0. The exponent ``p`` sharpens the weights (p -> 0:
uniform over better-than-chance members; large p: the best member alone). The default p = 1 makes
weights proportional to skill above chance; ``power="auto"`` picks p from ``POWER_GRID`` by the
weighted F1 of the voted out-of-fold predictions (ties go to the earlier grid entry, p = 1 first).
Only out-of-fold rows of labeled ids are used: never the rows being predicted. If every member is
at or below chance, the weights fall back to uniform (a plain soft vote) and this is noted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator

POWER_GRID = (1.0, 0.5, 2.0, 4.0, 8.0)


@dataclass
class VoteResult:
    scores: np.ndarray  # (N, C) rows sum to 1
    labels: np.ndarray  # (N,) class index
    n_members: np.ndarray  # (N,) members present
    no_member: np.ndarray  # (N,) bool


def pick(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Argmax of ``primary`` per row; ties -> higher ``secondary``; then the first class."""
    top = primary.max(axis=1, keepdims=True)
    tied = np.isclose(primary, top, rtol=0, atol=1e-9)
    sec = np.where(tied, secondary, -np.inf)
    return sec.argmax(axis=1)


def _prepare(probs: np.ndarray, present: np.ndarray):
    p0 = np.where(present[..., None], probs, 0.0).astype(np.float64)
    return p0, present.sum(axis=0)


def _finish(scores, summed, n_present, prior) -> VoteResult:
    none = n_present == 0
    if none.any():
        scores[none] = prior
        summed[none] = prior
    return VoteResult(scores, pick(scores, summed), n_present.astype(np.int64), none)


def _uniform_prior(C: int) -> np.ndarray:
    return np.full(C, 1.0 / C)


def hard_vote(probs, present, weights=None, prior=None) -> VoteResult:
    """Majority of the members' argmax labels (unweighted unless ``weights`` is given)."""
    M, N, C = probs.shape
    p0, n_present = _prepare(probs, present)
    w = np.ones(M) if weights is None else np.asarray(weights, np.float64)
    votes = np.zeros((N, C))
    tops = p0.argmax(axis=2)
    rows = np.arange(N)
    for m in range(M):
        np.add.at(votes, (rows[present[m]], tops[m, present[m]]), w[m])
    total = votes.sum(axis=1, keepdims=True)
    scores = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
    return _finish(scores, p0.sum(axis=0), n_present, _uniform_prior(C) if prior is None else prior)


def soft_vote(probs, present, weights=None, prior=None) -> VoteResult:
    """Weighted mean probability over present members (weights renormalised per row).

    Rows whose present members all have weight 0 use the plain mean of those members instead.
    """
    p0, n_present = _prepare(probs, present)
    return _soft(p0, present, n_present, weights, prior)


def _soft(p0, present, n_present, weights=None, prior=None) -> VoteResult:
    M, N, C = p0.shape
    w = np.ones(M) if weights is None else np.asarray(weights, np.float64)
    num = np.einsum("m,mnc->nc", w, p0)
    den = present.T.astype(np.float64) @ w
    summed = p0.sum(axis=0)
    zero_w = (den <= 0) & (n_present > 0)
    num[zero_w] = summed[zero_w]
    den[zero_w] = n_present[zero_w]
    scores = np.divide(num, den[:, None], out=np.zeros_like(num), where=den[:, None] > 0)
    return _finish(scores, summed, n_present, _uniform_prior(C) if prior is None else prior)


VOTES = {"hard": hard_vote, "soft": soft_vote, "reliance": soft_vote}


def _check_vote(method, power) -> None:
    if method not in VOTES:
        raise ValueError(f"unknown vote {method!r}; choose one of {', '.join(VOTES)}")
    if power != "auto":
        try:
            p = float(power)
        except (TypeError, ValueError):
            raise ValueError(f"--power must be 'auto' or a number > 0, got {power!r}") from None
        if not p > 0:
            raise ValueError(f"--power must be 'auto' or a number > 0, got {p}")


def chance_f1(y: np.ndarray, n_classes: int) -> float:
    pi = np.bincount(y, minlength=n_classes) / max(len(y), 1)
    return float((pi ** 2).sum())


def member_f1(probs, present, y, n_classes: int) -> np.ndarray:
    """Out-of-fold weighted F1 of every member on the rows where it is present (NaN if none)."""
    out = np.full(probs.shape[0], np.nan)
    for m in range(probs.shape[0]):
        rows = present[m]
        if rows.any():
            pred = probs[m, rows].argmax(axis=1)
            out[m] = fast_weighted_f1(y[rows], pred, n_classes)
    return out


def reliance_weights(f1: np.ndarray, chance: float, power: float) -> np.ndarray:
    skill = np.clip(np.nan_to_num(f1, nan=chance) - chance, 0, None)
    if not (skill > 0).any():
        return np.full(len(f1), 1.0 / len(f1))
    w = np.where(skill > 0, skill ** power, 0.0)
    return w / w.sum()


def fast_weighted_f1(y, pred, n_classes: int) -> float:
    """sklearn's ``f1_score(average="weighted", zero_division=0)`` over all classes, via one bincount."""
    y = np.asarray(y, np.int64)
    if not len(y):
        return float("nan")
    cm = np.bincount(y * n_classes + np.asarray(pred, np.int64), minlength=n_classes * n_classes)
    cm = cm.reshape(n_classes, n_classes)
    support, predicted, tp = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    den = support + predicted
    f1 = np.divide(2.0 * tp, den, out=np.zeros(n_classes), where=den > 0)
    return float((f1 * support).sum() / support.sum())


class Voter(BaseEstimator):
    """Fit on out-of-fold rows (labels known), then vote on any rows. scikit-learn conventions:
    ``__init__`` stores the parameters (checked, never changed, so ``sklearn.base.clone`` works),
    ``fit`` returns self and sets the attributes that end in ``_``."""

    def __init__(self, method: str = "reliance", power: float | str = "auto", grid: tuple = POWER_GRID):
        self.method = method
        self.power = power
        self.grid = grid
        _check_vote(method, power)

    @property
    def notes(self) -> list[str]:
        """What the user should know about the last fit (``notes_``)."""
        return self.notes_

    def fit(self, probs, present, y, n_classes: int) -> "Voter":
        y = np.asarray(y)
        self.notes_ = []
        self.n_classes_ = n_classes
        self.prior_ = np.bincount(y, minlength=n_classes) / len(y) if len(y) else _uniform_prior(n_classes)
        self.member_f1_ = member_f1(probs, present, y, n_classes) if len(y) else np.full(probs.shape[0], np.nan)
        self.chance_f1_ = chance_f1(y, n_classes) if len(y) else 1.0 / n_classes
        self.grid_scores_ = {}
        self.power_ = None
        if self.method != "reliance":
            self.weights_ = np.full(probs.shape[0], 1.0 / probs.shape[0])
            return self
        if not len(y):
            raise ValueError("reliance voting needs out-of-fold rows of labeled ids (none found in the RUN_DIRs); "
                             "use --vote soft")
        if not (np.nan_to_num(self.member_f1_, nan=0) > self.chance_f1_).any():
            self.notes_.append("no member beats chance on the out-of-fold rows: reliance falls back to uniform weights")
        if self.power == "auto":
            p0, n_present = _prepare(probs, present)
            for p in self.grid:
                w = reliance_weights(self.member_f1_, self.chance_f1_, p)
                res = _soft(p0, present, n_present, w, self.prior_)
                self.grid_scores_[p] = fast_weighted_f1(y, res.labels, n_classes)
            best = max(self.grid_scores_.values())
            self.power_ = next(p for p in self.grid if self.grid_scores_[p] == best)
        else:
            self.power_ = float(self.power)
        self.weights_ = reliance_weights(self.member_f1_, self.chance_f1_, self.power_)
        return self

    def predict(self, probs, present) -> VoteResult:
        fn = VOTES[self.method]
        weights = self.weights_ if self.method == "reliance" else None
        return fn(probs, present, weights, self.prior_)
