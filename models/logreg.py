"""Tuned logistic-regression experts for vector features (``--head logreg``), for small data.

On a few hundred clips a transformer + MLP head per vector feature loses to a standardised
logistic regression whose C is chosen by an inner search (EmoDB leave-one-speaker-out, pool:
librosa 0.691 vs 0.724 UAR, eGeMAPS 0.594 vs 0.671; bench/bench_emodb.py). This head *is* that
model: z-score with the training rows' statistics, multinomial logistic regression (lbfgs), C
from :data:`CS` by an inner (speaker-grouped when the fit has groups) cross-validation on
balanced accuracy, sample weights as given (``--class-weight``). Inside the MoE it is a
:class:`models.heads.ProbExpert`, cross-fitted on its own training rows like the LightGBM head
(models.lgbm), so the router learns how far to trust its held-out probabilities.

The fitted model is five arrays (mean, scale, coefficients, intercepts, classes) and C, stored as
JSON text in the model file: no pickle; ``predict_proba`` computes the softmax from those arrays,
so a loaded expert predicts exactly what the fitted one did.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
from scipy.special import softmax
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.folds import crossfit_splitter, make_splitter

#: the C grid of the inner search (the benchmark's tuned baseline searches the same grid)
CS = (0.01, 0.1, 1.0)
INNER_FOLDS = 3
MAX_ITER = 2000


class LogRegExpert:
    """One fold's logistic-regression expert as models.train uses it (like models.lgbm.LGBMExpert):
    ``fit``, ``predict_proba`` with ``n_classes`` columns (a class absent from the training rows gets
    probability 0), ``to_string``/``from_string`` for model files."""

    def __init__(self, n_classes: int = 2, seed: int = 0, cs: tuple = CS, inner_folds: int = INNER_FOLDS):
        self.n_classes = n_classes
        self.seed = seed
        self.cs = cs
        self.inner_folds = inner_folds

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, x, y, sample_weight=None, groups=None) -> "LogRegExpert":
        """StandardScaler + LogisticRegression, C by scikit-learn's GridSearchCV over :data:`CS`
        (balanced accuracy; inner folds from models.folds, grouped when there are enough groups; a
        tie keeps the smaller C); the arrays of the refitted best pipeline are kept."""
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.int64)
        w = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        self.classes_ = np.unique(y)
        pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
        fit_params = {} if w is None else {"logisticregression__sample_weight": w}
        with warnings.catch_warnings():  # small inner folds: lbfgs limits, a class missing from a fold
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", FitFailedWarning)
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true", category=UserWarning)
            if len(self.classes_) == 1:  # one class seen: it is certain (lbfgs needs two)
                scaler = StandardScaler().fit(x)
                self.C_, self.coef_, self.intercept_ = float(self.cs[-1]), np.zeros((1, x.shape[1])), np.zeros(1)
            else:
                folds = self._inner_folds(y, groups)
                if folds is None or len(self.cs) == 1:
                    best = pipe.set_params(logisticregression__C=self.cs[-1]).fit(x, y, **fit_params)
                else:
                    search = GridSearchCV(pipe, {"logisticregression__C": list(self.cs)}, cv=folds,
                                          scoring="balanced_accuracy", error_score=np.nan, n_jobs=1)
                    best = search.fit(x, y, **fit_params).best_estimator_
                scaler, lr = best.named_steps["standardscaler"], best.named_steps["logisticregression"]
                self.C_, self.coef_, self.intercept_ = float(lr.C), lr.coef_, lr.intercept_
                if len(self.classes_) == 2:  # one row for two classes: softmax(-f/2, f/2) = sigmoid(f)
                    self.coef_ = np.vstack([-self.coef_[0] / 2, self.coef_[0] / 2])
                    self.intercept_ = np.array([-self.intercept_[0] / 2, self.intercept_[0] / 2])
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        return self

    def _inner_folds(self, y, groups):
        counts = np.bincount(y)
        k = min(self.inner_folds, int(counts[counts > 0].min()))
        if k < 2:
            return None
        if groups is not None and len(set(groups)) < k:
            groups = None
        return list(make_splitter(k, self.seed, y=y, groups=groups).split(np.zeros(len(y)), y, groups))

    # -- prediction ----------------------------------------------------------------------------------
    def predict_proba(self, x) -> np.ndarray:
        z = (np.asarray(x, np.float64) - self.mean_) / self.scale_
        p = softmax(z @ self.coef_.T + self.intercept_, axis=1)
        out = np.zeros((len(z), self.n_classes))
        out[:, self.classes_] = p
        return out

    def predict(self, x) -> np.ndarray:
        return self.predict_proba(x).argmax(1)

    # -- model files ---------------------------------------------------------------------------------
    def to_string(self) -> str:
        return json.dumps({"kind": "logreg", "C": self.C_, "classes": self.classes_.tolist(),
                           "mean": self.mean_.tolist(), "scale": self.scale_.tolist(),
                           "coef": self.coef_.tolist(), "intercept": self.intercept_.tolist()})

    @classmethod
    def from_string(cls, text: str, n_classes: int) -> "LogRegExpert":
        d = json.loads(text)
        obj = cls(n_classes)
        obj.C_ = float(d["C"])
        obj.classes_ = np.asarray(d["classes"], np.int64)
        obj.mean_, obj.scale_ = np.asarray(d["mean"], np.float64), np.asarray(d["scale"], np.float64)
        obj.coef_, obj.intercept_ = np.asarray(d["coef"], np.float64), np.asarray(d["intercept"], np.float64)
        if obj.coef_.shape != (len(obj.classes_), len(obj.mean_)) or obj.classes_.max(initial=0) >= n_classes:
            raise ValueError("logreg expert: arrays do not match each other or the run's classes")
        return obj


def crossfit_proba(x, y, w, groups, n_classes: int, seed: int, inner_folds: int = INNER_FOLDS) -> np.ndarray:
    """Out-of-fold probabilities of the rows ``x``: each inner fold's expert (its own C search) on the
    rows it did not see; the inner folds are models.lgbm's (models.folds.crossfit_splitter). A loop,
    not ``cross_val_predict``, which would re-encode the labels of a training fold that lacks a class."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.int64)
    out = np.zeros((len(y), n_classes))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splitter, groups = crossfit_splitter(y, groups, inner_folds, seed)
        folds = list(splitter.split(x, y, groups))
    for tr, va in folds:
        expert = LogRegExpert(n_classes, seed).fit(x[tr], y[tr], None if w is None else np.asarray(w)[tr],
                                                   None if groups is None else np.asarray(groups)[tr])
        out[va] = expert.predict_proba(x[va])
    return out
