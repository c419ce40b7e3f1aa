"""The experts whose class probabilities come from an estimator fitted outside the network
(``--head lgbm``, ``--head logreg``): one registry of how each is made, cross-fitted and loaded.

In the MoE such an expert is a :class:`models.heads.ProbExpert` over its log-probabilities. Its own
training rows get cross-fitted probabilities (inner folds of the training fold), every other row
the estimator fitted on the whole training fold, so the router learns from held-out probabilities.
Model files store each fitted estimator as text (``to_string``), never as a pickle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from models import lgbm, logreg


@dataclass(frozen=True)
class ProbHead:
    make: Callable  # (n_classes, seed, n_jobs) -> an unfitted expert: fit(x, y, w, groups), predict_proba, to_string
    crossfit: Callable  # (x, y, w, groups, n_classes, seed, n_jobs) -> out-of-fold probabilities (n, n_classes)
    load: Callable  # (text, n_classes) -> a fitted expert


PROB_HEADS = {
    "lgbm": ProbHead(make=lambda c, seed, n_jobs: lgbm.LGBMExpert(c, seed=seed, n_jobs=n_jobs),
                     crossfit=lambda x, y, w, g, c, seed, n_jobs: lgbm.crossfit_proba(x, y, w, g, c, seed, n_jobs=n_jobs),
                     load=lgbm.LGBMExpert.from_string),
    "logreg": ProbHead(make=lambda c, seed, n_jobs: logreg.LogRegExpert(c, seed=seed),
                       crossfit=lambda x, y, w, g, c, seed, n_jobs: logreg.crossfit_proba(x, y, w, g, c, seed),
                       load=logreg.LogRegExpert.from_string),
}
