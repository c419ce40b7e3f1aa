"""Vote + rules as one estimator: ``fit`` on out-of-fold rows, ``run`` on any rows, stage by stage.

``fit(split, y)`` tunes the voter (reliance weights and exponent) and then each rule in order
(auto thresholds, labeled prior), every rule seeing the out-of-fold state left by the vote and the
rules before it. ``run(split)`` returns the vote and the state after every rule, with the rows each
rule changed. ``cross_fit`` scores the whole recipe honestly on out-of-fold rows: each row is
predicted by a pipeline fitted on the other folds of the tuning rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, clone

from .reranking import Context, RuleSet, State
from .voting import Voter, VoteResult


@dataclass
class Stage:
    name: str  # "vote:reliance" or "<i>:<rule label>"
    labels: np.ndarray
    scores: np.ndarray
    changed: np.ndarray  # rows whose label this stage changed (all False for the vote)
    info: dict = field(default_factory=dict)


@dataclass
class Result:
    ids: list[str]
    vote: VoteResult
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def changed_by(self) -> list[str]:
        """Per row: the rules that changed its label, ';'-joined (empty if none)."""
        rule_stages = self.stages[1:]
        if not rule_stages:
            return [""] * len(self.ids)
        flags = np.stack([s.changed for s in rule_stages])
        names = [s.name for s in rule_stages]
        return [";".join(names[k] for k in np.flatnonzero(flags[:, i])) for i in range(len(self.ids))]


class EnsemblePipeline(BaseEstimator):
    """scikit-learn conventions: ``__init__`` stores the parameters, ``fit`` sets the attributes that
    end in ``_`` (``voter_``, ``rules_``, ``ctx_``, ``fit_result_``), and ``sklearn.base.clone`` gives
    an unfitted copy with deep copies of the parameters (so of the rules and the annotator).

    The ``rules`` given are tuned in place (``rules_`` is that same RuleSet): the caller reads what
    was tuned (``tuned_``, ``notes_``) from the RuleSet it holds. A clone tunes its own copies."""

    def __init__(self, classes, vote: str = "reliance", power="auto", rules: RuleSet | None = None,
                 annotator=None):
        self.classes = classes
        self.vote = vote
        self.power = power
        self.rules = rules
        self.annotator = annotator

    def _rule_set(self) -> RuleSet:
        return self.rules if self.rules is not None else RuleSet(None, [])

    def _stage_names(self) -> list[str]:
        return [f"vote:{self.vote}"] + [f"{i}:{r.label}" for i, r in enumerate(self._rule_set().rules, 1)]

    def _walk(self, split, y=None) -> Result:
        """Vote, then each rule in order. With ``y``, first fit the voter, and each rule on the state the
        vote and the rules before it left (then apply it, as ``run`` does)."""
        if y is not None:
            self.voter_ = Voter(self.vote, self.power).fit(split.probs, split.present, y, len(self.classes))
            self.rules_ = self._rule_set()
            self.ctx_ = Context(list(self.classes), self.annotator)
        v = self.voter_.predict(split.probs, split.present)
        names = self._stage_names()
        state = State(split.ids, v.scores, v.labels)
        stages = [Stage(names[0], v.labels, v.scores, np.zeros(len(v.labels), bool))]
        for name, rule in zip(names[1:], self.rules_.rules):
            if y is not None:
                rule.fit(state, y, self.ctx_)
            out = rule.apply(state, self.ctx_)
            state = out.state
            stages.append(Stage(name, state.labels, state.scores, out.changed, out.info))
        return Result(split.ids, v, stages)

    def fit(self, split, y) -> "EnsemblePipeline":
        """Tune on ``split``; ``fit_result_`` is what ``run(split)`` returns (kept, as it is computed anyway)."""
        self.fit_result_ = self._walk(split, np.asarray(y, np.int64))
        return self

    def run(self, split) -> Result:
        return self._walk(split)

    def describe(self, member_names=None) -> dict:
        v = self.voter_
        names = member_names or [f"m{i}" for i in range(len(v.weights_))]
        return {"vote": self.vote, "power": v.power_, "power_requested": self.power,
                "power_grid_oof_weighted_f1": {str(k): round(s, 6) for k, s in v.grid_scores_.items()},
                "chance_weighted_f1": v.chance_f1_,
                "members": [{"member": n, "oof_weighted_f1": None if np.isnan(f) else float(f), "weight": float(w)}
                            for n, f, w in zip(names, v.member_f1_, v.weights_)],
                "rules": self.rules_.describe()}


def tuning_folds(y: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds of the tuning rows: stratified when every class present has ``n_splits`` rows, else plain."""
    from models.folds import split

    counts = np.bincount(y)
    counts = counts[counts > 0]
    stratify = len(counts) > 1 and counts.min() >= n_splits
    return split(n_splits, seed, y=y if stratify else None, n_rows=len(y))


def cross_fit(pipeline: EnsemblePipeline, split, y, n_splits: int = 5, seed: int = 0):
    """Stage labels for every tuning row, each from a pipeline fitted on the other folds.

    Returns (stage names, list of (N,) label arrays, list of (N,) changed flags), or None if there
    are too few rows (< 2 per fold).
    """
    y = np.asarray(y, np.int64)
    if len(y) < 2 * n_splits:
        return None
    names = pipeline._stage_names()
    labels = [np.zeros(len(y), np.int64) for _ in names]
    changed = [np.zeros(len(y), bool) for _ in names]
    for train, held in tuning_folds(y, n_splits, seed):
        p = clone(pipeline).fit(split.take(train), y[train])
        res = p.run(split.take(held))
        for k, st in enumerate(res.stages):
            labels[k][held] = st.labels
            changed[k][held] = st.changed
    return names, labels, changed
