"""LightGBM experts for vector features (``--head lgbm``).

Inside the MoE an LGBM expert is a :class:`models.heads.ProbExpert`: its logits are the booster's
log-probabilities and the router/fused expert see a learned projection of them. So that the router
does not learn to trust a booster's (over-fitted) predictions on its own training rows, the training
rows get *cross-fitted* probabilities (inner folds of the training fold); held-out and unlabeled rows
get the booster fitted on the whole training fold.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

LOG_FLOOR = np.log(1e-6)


class LGBMExpert:
    """A small, deterministic LightGBM classifier (sklearn conventions: ``fit`` returns self,
    ``predict_proba`` columns follow ``classes_`` = 0..C-1 even if a class is absent)."""

    def __init__(self, n_classes: int, seed: int = 0, n_estimators: int = 200, learning_rate: float = 0.05,
                 num_leaves: int = 15, n_jobs: int = 1):
        self.n_classes = n_classes
        self.params = dict(objective="multiclass", num_class=n_classes, learning_rate=learning_rate,
                           num_leaves=num_leaves, min_data_in_leaf=5, feature_fraction=0.5,
                           bagging_fraction=0.8, bagging_freq=1, lambda_l2=1.0, seed=seed,
                           deterministic=True, force_col_wise=True, num_threads=n_jobs, verbose=-1)
        self.n_estimators = n_estimators

    def fit(self, x, y, sample_weight=None):
        import lightgbm as lgb

        ds = lgb.Dataset(np.asarray(x, np.float32), label=np.asarray(y), weight=sample_weight, free_raw_data=True)
        self.booster_ = lgb.train(self.params, ds, num_boost_round=self.n_estimators)
        self.classes_ = np.arange(self.n_classes)
        return self

    def predict_proba(self, x):
        p = self.booster_.predict(np.asarray(x, np.float32))
        return np.asarray(p, np.float64).reshape(len(x), self.n_classes)

    def to_string(self) -> str:
        return self.booster_.model_to_string()

    @classmethod
    def from_string(cls, text: str, n_classes: int) -> "LGBMExpert":
        import lightgbm as lgb

        obj = cls(n_classes)
        obj.booster_ = lgb.Booster(model_str=text)
        obj.classes_ = np.arange(n_classes)
        return obj


def log_proba(p: np.ndarray) -> np.ndarray:
    return np.maximum(np.log(np.clip(p, 1e-12, None)), LOG_FLOOR).astype(np.float32)


def crossfit_proba(x, y, w, groups, n_classes: int, seed: int, inner_folds: int = 3, n_jobs: int = 1) -> np.ndarray:
    """Out-of-fold probabilities of the rows ``x`` (inner K-fold, grouped when groups are given)."""
    k = max(2, min(inner_folds, int(np.bincount(y).max())))
    if groups is not None and len(set(groups)) >= k:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(x, y, groups)
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y)
    out = np.zeros((len(x), n_classes))
    with warnings.catch_warnings():   # a rare class in a small training fold: expected, not the user's problem
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splits)
    for tr, va in splits:
        model = LGBMExpert(n_classes, seed=seed, n_jobs=n_jobs).fit(x[tr], y[tr], None if w is None else w[tr])
        out[va] = model.predict_proba(x[va])
    return out
