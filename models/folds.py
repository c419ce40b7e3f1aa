"""The one place cross-validation splits are made: the outer folds of ``fit`` (models.train), the
inner folds that cross-fit LightGBM experts (models.lgbm) and the tuning folds of ``ensemble``
(ensemble.pipeline). Each caller decides whether its rows are grouped or stratified; the splitter,
its shuffling and its seed come from here, so one input gives one split everywhere.
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold


def make_splitter(n_splits: int, seed: int, y=None, groups=None):
    """A shuffled scikit-learn splitter seeded with ``seed``: StratifiedGroupKFold when ``groups``
    are given (groups never straddle folds, classes balanced), StratifiedKFold when only ``y`` is,
    KFold when neither is."""
    if groups is not None:
        if y is None:
            raise ValueError("make_splitter: groups need y (the grouped splitter is stratified)")
        return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    if y is not None:
        return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return KFold(n_splits=n_splits, shuffle=True, random_state=seed)


def split(n_splits: int, seed: int, y=None, groups=None, n_rows: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) row indices of every fold of :func:`make_splitter`; ``n_rows`` is
    needed only when there is no ``y``."""
    n = len(y) if y is not None else n_rows
    if n is None:
        raise ValueError("split: give y or n_rows")
    splitter = make_splitter(n_splits, seed, y, groups)
    return list(splitter.split(np.zeros(n), y, groups))


def crossfit_splitter(y, groups, inner_folds: int, seed: int):
    """The inner folds that cross-fit a probability expert on its own training rows (models.lgbm,
    models.logreg): ``inner_folds`` (at least 2, at most the largest class's count), grouped when there
    are at least that many groups. Returns (splitter, the groups it splits by or None)."""
    k = max(2, min(inner_folds, int(np.bincount(np.asarray(y)).max())))
    if groups is not None and len(set(groups)) < k:
        groups = None
    return make_splitter(k, seed, y=y, groups=groups), groups
