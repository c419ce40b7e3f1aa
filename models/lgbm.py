"""LightGBM experts for vector features (``--head lgbm``).

Inside the MoE an LGBM expert is a :class:`models.heads.ProbExpert`: its logits are the booster's
log-probabilities and the router/fused expert see a learned projection of them. So that the router
does not learn to trust a booster's (over-fitted) predictions on its own training rows, the training
rows get *cross-fitted* probabilities (inner folds of the training fold, by scikit-learn's
``cross_val_predict``); held-out and unlabeled rows get the booster fitted on the whole training fold.

The booster is LightGBM's scikit-learn estimator (:func:`lgbm_classifier`), always with the softmax
(multiclass) objective, deterministic for a seed. It learns the classes present in its training rows;
their columns are laid on the run's classes 0..C-1 by ``classes_`` and a class it never saw gets
probability 0 (``log_proba`` floors it at ``LOG_FLOOR``).
"""
from __future__ import annotations

import inspect
import warnings

import numpy as np
from lightgbm import LGBMClassifier
from sklearn.model_selection import cross_val_predict

from models.folds import crossfit_splitter

LOG_FLOOR = np.log(1e-6)
CLASSES_TAG = "moe-emotion-lgbm-classes="  # first line of a saved booster that did not see every class


class Classifier(LGBMClassifier):
    """LightGBM's estimator with one ``predict_proba`` column per class of ``classes_``: trained on a
    single class, LightGBM still returns two columns (one of a class that does not exist)."""

    def predict_proba(self, X, *args, **kwargs):
        return super().predict_proba(X, *args, **kwargs)[:, :len(self.classes_)]


def lgbm_classifier(seed: int = 0, n_jobs: int = 1, n_estimators: int = 200, learning_rate: float = 0.05,
                    num_leaves: int = 15) -> Classifier:
    """The expert's estimator: small, deterministic for ``seed`` and ``n_jobs``.

    ``objective="multiclass"`` keeps the softmax with two classes too (LightGBM's estimator would
    switch to the binary objective); ``num_class`` is what LightGBM needs then and is replaced by
    the estimator with the number of classes seen when there are more."""
    return Classifier(objective="multiclass", num_class=2, n_estimators=n_estimators, learning_rate=learning_rate,
                      num_leaves=num_leaves, min_child_samples=5, colsample_bytree=0.5, subsample=0.8,
                      subsample_freq=1, reg_lambda=1.0, random_state=seed, n_jobs=n_jobs, deterministic=True,
                      force_col_wise=True, verbose=-1)


def on_classes(p: np.ndarray, seen: np.ndarray, n_classes: int) -> np.ndarray:
    """Columns of the classes ``seen`` (in that order) laid on 0..n_classes-1; the others are 0."""
    out = np.zeros((len(p), n_classes))
    out[:, np.asarray(seen, np.int64)] = p[:, :len(seen)]
    return out


class LGBMExpert:
    """One fold's LightGBM expert as models.train uses it: ``fit`` trains :func:`lgbm_classifier`,
    ``predict_proba`` gives the run's ``n_classes`` columns (from the booster, so a booster loaded
    with :meth:`from_string` predicts the same), ``to_string``/``from_string`` are what model files
    store."""

    def __init__(self, n_classes: int, seed: int = 0, n_estimators: int = 200, learning_rate: float = 0.05,
                 num_leaves: int = 15, n_jobs: int = 1):
        self.n_classes = n_classes
        self.seed, self.n_jobs = seed, n_jobs
        self.n_estimators, self.learning_rate, self.num_leaves = n_estimators, learning_rate, num_leaves

    def fit(self, x, y, sample_weight=None, groups=None) -> "LGBMExpert":  # groups: not used by a booster
        est = lgbm_classifier(self.seed, self.n_jobs, self.n_estimators, self.learning_rate, self.num_leaves)
        est.fit(np.asarray(x, np.float32), np.asarray(y), sample_weight=sample_weight)
        self.booster_, self.classes_ = est.booster_, np.asarray(est.classes_, np.int64)
        return self

    def predict_proba(self, x) -> np.ndarray:
        p = np.asarray(self.booster_.predict(np.asarray(x, np.float32)), np.float64)
        return on_classes(p.reshape(len(x), self.booster_.num_model_per_iteration()), self.classes_, self.n_classes)

    def to_string(self) -> str:
        """LightGBM's model text; a booster that did not see every class is preceded by a line
        naming the classes it saw (its columns, in order)."""
        text = self.booster_.model_to_string()
        if np.array_equal(self.classes_, np.arange(self.n_classes)):
            return text
        return CLASSES_TAG + ",".join(str(int(c)) for c in self.classes_) + "\n" + text

    @classmethod
    def from_string(cls, text: str, n_classes: int) -> "LGBMExpert":
        import lightgbm as lgb

        classes = np.arange(n_classes)
        if text.startswith(CLASSES_TAG):
            head, text = text.split("\n", 1)
            classes = np.array([int(c) for c in head[len(CLASSES_TAG):].split(",")], np.int64)
        obj = cls(n_classes)
        obj.booster_, obj.classes_ = lgb.Booster(model_str=text), classes
        return obj


def log_proba(p: np.ndarray) -> np.ndarray:
    return np.maximum(np.log(np.clip(p, 1e-12, None)), LOG_FLOOR).astype(np.float32)


# scikit-learn < 1.4 names cross_val_predict's fit parameters fit_params
_FIT_PARAMS = "params" if "params" in inspect.signature(cross_val_predict).parameters else "fit_params"


def crossfit_proba(x, y, w, groups, n_classes: int, seed: int, inner_folds: int = 3, n_jobs: int = 1) -> np.ndarray:
    """Out-of-fold probabilities of the rows ``x`` (inner K-fold, grouped when there are enough groups)."""
    y = np.asarray(y)
    splitter, groups = crossfit_splitter(y, groups, inner_folds, seed)
    fit_params = {} if w is None else {_FIT_PARAMS: {"sample_weight": np.asarray(w)}}
    with warnings.catch_warnings():   # a rare class in a small training fold: expected, not the user's problem
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        warnings.filterwarnings("ignore", message="Number of classes in training fold", category=RuntimeWarning)
        p = cross_val_predict(lgbm_classifier(seed, n_jobs), np.asarray(x, np.float32), y, groups=groups,
                              cv=splitter, method="predict_proba", **fit_params)
    return on_classes(p, np.unique(y), n_classes)
