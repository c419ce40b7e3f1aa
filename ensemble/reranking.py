"""Declarative re-ranking rules (the paper's "human preference alignment"), read from YAML.

A rules file is a list of entries applied in order, each ``rule: <name>`` plus its parameters::

    description: free text (optional)
    rules:
      - rule: class_priority          # "worried" yields to sad, surprise or neutral when close
        when_top: [worried]
        prefer: [sad, surprise, neutral]
        margin: 0.10
      - rule: prior_correction
        target: labeled               # or {neutral: 0.3, angry: 0.2, ...}
        method: ipf                   # or logit_adjust
      - rule: annotator_override
        margin: auto                  # tuned on out-of-fold rows
        confidence: 0.8

Every rule reads the current state (per-row class scores and labels) and returns a new one plus
the rows whose label it changed. The whole file is validated against the classes before any work:
an unknown rule, unknown key, unknown class or a threshold out of range is an error naming the file
and the entry. A threshold may be ``auto`` when the rule has a grid for it: it is then tuned on the
out-of-fold rows only (after the vote and the rules before it), picking the grid point with the best
weighted F1; grids run from "change nothing" to aggressive and ties go to the more conservative
point.

Rules (the registry ``RULES``; add one by subclassing ``Rule`` and decorating with ``@register``):

* ``class_priority``: when the current label is in ``when_top`` and a class of ``prefer`` scores
  closer than ``margin`` below it (score[label] - score[preferred] < margin), take the preferred
  class (the best-scoring one; ties follow the order of ``prefer``).
* ``prior_correction``: move the predicted class distribution toward ``target`` (``labeled``: the
  class shares of the labeled tuning rows; or a mapping class -> share, every class given).
  ``ipf`` (default) finds class factors v by iterative proportional fitting so that the mean of the
  renormalised p*v over the rows equals the target (Saerens et al. 2002 style, using only the
  predicted probabilities of the rows it is applied to, never their labels); ``logit_adjust``
  multiplies p by (target / source) with source = the rows' mean prediction (``source: predicted``)
  or the labeled shares (``source: labeled``). ``strength`` in [0, 1] scales the correction in log
  space. A row's label changes only where the correction changes its top class.
* ``annotator_override`` (the paper's "Gemini modification"): where the ensemble's margin
  (score of the current label minus the best other score) is below ``margin`` and the annotator's
  confidence is above ``confidence``, take the annotator's label. Annotator labels outside the
  classes are ignored and counted; ``trust`` optionally limits the override to some annotator labels.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .voting import fast_weighted_f1, pick

RULES: dict[str, type["Rule"]] = {}
SAMPLES_DIR = Path(__file__).resolve().parent / "rules"
AUTO = "auto"


class RulesError(ValueError):
    """A rules file that cannot be used (message names the file and the entry)."""


def register(cls):
    if cls.name in RULES:
        raise ValueError(f"rule {cls.name!r} registered twice")
    RULES[cls.name] = cls
    return cls


@dataclass
class State:
    ids: list[str]
    scores: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)

    def margins(self) -> np.ndarray:
        """score of the current label minus the best other score (negative if not the top)."""
        n = len(self.labels)
        cur = self.scores[np.arange(n), self.labels]
        other = self.scores.copy()
        other[np.arange(n), self.labels] = -np.inf
        return cur - other.max(axis=1) if self.scores.shape[1] > 1 else cur


@dataclass
class Context:
    classes: list[str]
    annotator: object | None = None  # extract.annotator.Annotator


@dataclass
class Outcome:
    state: State
    changed: np.ndarray  # (N,) bool
    info: dict = field(default_factory=dict)


# -- parameter checks (each names the file and the entry) ------------------------------------------

def _class_list(value, classes, where, key) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise RulesError(f"{where}: '{key}' must be a class name or a list of class names, got {value!r}")
    unknown = [v for v in items if v not in classes]
    if unknown:
        raise RulesError(f"{where}: unknown class {', '.join(map(repr, unknown))} in '{key}'; "
                         f"the runs' classes are {', '.join(classes)}")
    return list(dict.fromkeys(items))


def _fraction(value, where, key, allow_auto) -> float | str:
    if allow_auto and value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= float(value) <= 1):
        hint = " or 'auto'" if allow_auto else ""
        raise RulesError(f"{where}: '{key}' must be a number in [0, 1]{hint}, got {value!r}")
    return float(value)


class Rule:
    """Base class. Subclasses declare ``name``, ``keys`` (allowed entry keys -> default, ``...`` for
    required), ``grids`` (params that may be 'auto' -> candidate values, conservative first), and
    implement ``_check`` (validate/convert params) and ``_apply``; ``_prepare`` optionally computes
    what ``_apply`` needs that does not depend on the params (once per fit, not per grid point)."""

    name: ClassVar[str]
    keys: ClassVar[dict] = {}
    grids: ClassVar[dict] = {}
    needs_annotator: ClassVar[bool] = False
    notes_: tuple = ()  # fit() replaces it with a list of things the user should know

    def __init__(self, entry: dict, classes: list[str], where: str):
        self.entry = dict(entry)
        self.classes = list(classes)
        self.where = where
        self.label = str(entry.get("name") or self.name)
        unknown = [k for k in entry if k not in self.keys and k not in ("rule", "name")]
        if unknown:
            raise RulesError(f"{where}: unknown key {', '.join(map(repr, unknown))}; "
                             f"'{self.name}' takes {', '.join(self.keys)}")
        missing = [k for k, d in self.keys.items() if d is ... and k not in entry]
        if missing:
            raise RulesError(f"{where}: '{self.name}' needs {', '.join(map(repr, missing))}")
        self.params = {k: entry.get(k, d) for k, d in self.keys.items()}
        self._check()
        self.tuned_: dict = {}

    def _check(self) -> None:
        raise NotImplementedError

    def _prepare(self, state: State, ctx: Context) -> dict:
        """Param-independent inputs of ``_apply`` for ``state`` (computed once by ``fit`` and by ``apply``)."""
        return {}

    def _apply(self, state: State, ctx: Context, params: dict, prep: dict) -> Outcome:
        raise NotImplementedError

    def fit(self, state: State, y: np.ndarray, ctx: Context) -> "Rule":
        """Learn what the rule needs from labeled out-of-fold rows (auto thresholds)."""
        auto = [k for k in self.grids if self.params.get(k) == AUTO]
        self.grid_scores_ = {}
        self.fitted_params_ = dict(self.params)
        self.notes_ = []
        if not auto:
            return self
        if not len(y):
            raise RulesError(f"{self.where}: 'auto' thresholds are tuned on out-of-fold rows of labeled ids, and the "
                             "RUN_DIRs have none: give numbers instead of 'auto'")
        C = len(self.classes)
        prep = self._prepare(state, ctx)
        best, best_score = None, -1.0
        for combo in itertools.product(*(self.grids[k] for k in auto)):
            params = {**self.params, **dict(zip(auto, combo))}
            score = fast_weighted_f1(y, self._apply(state, ctx, params, prep).state.labels, C)
            self.grid_scores_[combo] = score
            if score > best_score + 1e-12:
                best, best_score = params, score
        self.fitted_params_ = best
        self.tuned_ = {k: best[k] for k in auto}
        return self

    def apply(self, state: State, ctx: Context) -> Outcome:
        params = getattr(self, "fitted_params_", None)
        if params is None:
            if any(v == AUTO for v in self.params.values()):
                raise RuntimeError(f"{self.where}: fit the rule before applying it (it has 'auto' thresholds)")
            params = self.params
        return self._apply(state, ctx, params, self._prepare(state, ctx))

    def describe(self) -> dict:
        out = {"rule": self.name, "name": self.label}
        out.update(getattr(self, "fitted_params_", None) or self.params)
        if self.tuned_:
            out["tuned_on_oof"] = sorted(self.tuned_)
        return out


def _relabel(state: State, new_labels: np.ndarray, scores: np.ndarray | None = None) -> Outcome:
    changed = new_labels != state.labels
    return Outcome(State(state.ids, state.scores if scores is None else scores, new_labels), changed)


@register
class ClassPriority(Rule):
    name = "class_priority"
    keys = {"when_top": ..., "prefer": ..., "margin": ...}
    grids = {"margin": (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)}

    def _check(self):
        p = self.params
        p["when_top"] = _class_list(p["when_top"], self.classes, self.where, "when_top")
        p["prefer"] = _class_list(p["prefer"], self.classes, self.where, "prefer")
        both = set(p["when_top"]) & set(p["prefer"])
        if both:
            raise RulesError(f"{self.where}: {', '.join(sorted(both))} is both in 'when_top' and 'prefer'")
        p["margin"] = _fraction(p["margin"], self.where, "margin", allow_auto=True)

    def _apply(self, state, ctx, params, prep):
        cidx = {c: i for i, c in enumerate(self.classes)}
        top = np.array([cidx[c] for c in params["when_top"]])
        pref = np.array([cidx[c] for c in params["prefer"]])
        n = len(state.labels)
        cur = state.scores[np.arange(n), state.labels]
        cand = state.scores[:, pref]
        ok = np.isin(state.labels, top)[:, None] & (cur[:, None] - cand < params["margin"])
        best = np.where(ok, cand, -np.inf).argmax(axis=1)
        new = np.where(ok.any(axis=1), pref[best], state.labels)
        return _relabel(state, new)


def _ipf(p: np.ndarray, target: np.ndarray, iters: int = 200, tol: float = 1e-6) -> np.ndarray:
    v = np.ones(p.shape[1])
    for _ in range(iters):
        q = p * v
        q /= np.clip(q.sum(axis=1, keepdims=True), 1e-300, None)
        m = q.mean(axis=0)
        if np.abs(m - target).max() < tol:
            break
        v = np.clip(v * np.where(m > 0, target / np.clip(m, 1e-12, None), 1.0), 1e-8, 1e8)
    return v


@register
class PriorCorrection(Rule):
    name = "prior_correction"
    keys = {"target": "labeled", "method": "ipf", "strength": 1.0, "source": "predicted"}
    METHODS = ("ipf", "logit_adjust")
    SOURCES = ("predicted", "labeled")

    def _check(self):
        p = self.params
        if p["method"] not in self.METHODS:
            raise RulesError(f"{self.where}: 'method' must be one of {', '.join(self.METHODS)}, got {p['method']!r}")
        if p["source"] not in self.SOURCES:
            raise RulesError(f"{self.where}: 'source' must be one of {', '.join(self.SOURCES)}, got {p['source']!r}")
        p["strength"] = _fraction(p["strength"], self.where, "strength", allow_auto=False)
        t = p["target"]
        if isinstance(t, dict):
            _class_list(list(t), self.classes, self.where, "target")
            missing = [c for c in self.classes if c not in t]
            if missing:
                raise RulesError(f"{self.where}: 'target' gives no share for {', '.join(missing)}; give every class")
            vals = [t[c] for c in self.classes]
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in vals) or sum(vals) <= 0:
                raise RulesError(f"{self.where}: 'target' shares must be numbers >= 0 with a positive sum, got {t}")
            p["target"] = {c: float(t[c]) / float(sum(vals)) for c in self.classes}
        elif t != "labeled":
            raise RulesError(f"{self.where}: 'target' must be 'labeled' or a mapping class -> share, got {t!r}")

    def fit(self, state, y, ctx):
        super().fit(state, y, ctx)
        C = len(self.classes)
        if not len(y) and (self.params["target"] == "labeled" or self.params["source"] == "labeled"):
            raise RulesError(f"{self.where}: 'labeled' needs out-of-fold rows of labeled ids and the RUN_DIRs have "
                             "none: give the target shares as a mapping class -> share")
        self.labeled_prior_ = np.bincount(y, minlength=C) / max(len(y), 1) if len(y) else np.full(C, 1 / C)
        return self

    def _target(self, params) -> np.ndarray:
        t = params["target"]
        if isinstance(t, dict):
            return np.array([t[c] for c in self.classes])
        return self._labeled_prior("target")

    def _labeled_prior(self, key: str) -> np.ndarray:
        """The labeled class shares, for ``key`` ('target' or 'source') set to 'labeled'."""
        if not hasattr(self, "labeled_prior_"):
            raise RuntimeError(f"{self.where}: {key} 'labeled' needs the rule to be fitted on labeled rows")
        return self.labeled_prior_

    def _apply(self, state, ctx, params, prep):
        p = np.clip(state.scores, 0, None)
        if not len(p):
            return _relabel(state, state.labels.copy())
        target = self._target(params)
        if params["method"] == "ipf":
            v = _ipf(p, target)
        else:
            src = p.mean(axis=0) if params["source"] == "predicted" else self._labeled_prior("source")
            v = np.where(src > 0, target / np.clip(src, 1e-12, None), 1.0)
        v = np.clip(v, 1e-8, None) ** params["strength"]
        q = p * v
        q /= np.clip(q.sum(axis=1, keepdims=True), 1e-300, None)
        before = pick(state.scores, state.scores)
        after = pick(q, state.scores)
        new = np.where(after != before, after, state.labels)
        out = _relabel(state, new, q)
        out.info = {"factors": dict(zip(self.classes, np.round(v / v.max(), 4).tolist()))}
        return out


@register
class AnnotatorOverride(Rule):
    name = "annotator_override"
    keys = {"margin": ..., "confidence": ..., "trust": None}
    grids = {"margin": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
             "confidence": (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)}
    needs_annotator = True

    def _check(self):
        p = self.params
        p["margin"] = _fraction(p["margin"], self.where, "margin", allow_auto=True)
        p["confidence"] = _fraction(p["confidence"], self.where, "confidence", allow_auto=True)
        if p["trust"] is not None:
            p["trust"] = _class_list(p["trust"], self.classes, self.where, "trust")

    def fit(self, state, y, ctx):
        super().fit(state, y, ctx)
        if ctx.annotator is not None and len(y) and any(v == AUTO for v in self.params.values()):
            lab, _, _ = ctx.annotator.align(state.ids, self.classes)
            if not (lab >= 0).any():
                self.notes_.append(f"{self.where}: the annotator answers none of the {len(y)} tuning rows (in the "
                                   "classes), so 'auto' kept the thresholds that change nothing; give answers for "
                                   "labeled clips too, or numbers")
        return self

    def _prepare(self, state, ctx):
        if ctx.annotator is None:
            raise RulesError(f"{self.where}: 'annotator_override' needs --annotator FILE")
        lab, conf, outside = ctx.annotator.align(state.ids, self.classes)
        return {"lab": lab, "conf": conf, "outside": outside, "margins": state.margins()}

    def _apply(self, state, ctx, params, prep):
        lab, conf, outside = prep["lab"], prep["conf"], prep["outside"]
        answered = lab >= 0
        if params["trust"] is not None:
            trusted = np.isin(lab, [self.classes.index(c) for c in params["trust"]])
        else:
            trusted = answered
        take = trusted & (np.nan_to_num(conf, nan=-1.0) > params["confidence"]) & (prep["margins"] < params["margin"])
        out = _relabel(state, np.where(take, lab, state.labels))
        out.info = {"answers": int(answered.sum() + outside.sum()), "outside_classes_ignored": int(outside.sum()),
                    "no_answer": int(len(lab) - answered.sum() - outside.sum()),
                    "untrusted": int((answered & ~trusted).sum())}
        return out


# -- rules files -----------------------------------------------------------------------------------

@dataclass
class RuleSet:
    path: Path | None
    rules: list[Rule]
    description: str = ""

    @property
    def needs_annotator(self) -> bool:
        return any(r.needs_annotator for r in self.rules)

    def fresh(self) -> "RuleSet":
        """Unfitted copies (for cross-fitting)."""
        return RuleSet(self.path, [type(r)(r.entry, r.classes, r.where) for r in self.rules], self.description)

    def describe(self) -> list[dict]:
        return [r.describe() for r in self.rules]


def sample_rules() -> dict[str, Path]:
    """The rule files shipped with the package, by name (file stem)."""
    return {p.stem: p for p in sorted(SAMPLES_DIR.glob("*.yaml"))}


def resolve_rules_path(spec) -> Path:
    """A path to a YAML file, or the name of a shipped sample (see ``sample_rules``)."""
    p = Path(spec)
    if p.is_file():
        return p
    samples = sample_rules()
    if str(spec) in samples:
        return samples[str(spec)]
    raise RulesError(f"rules file {spec} does not exist (shipped samples: {', '.join(samples) or 'none'})")


def parse_rules(data, classes: list[str], source: str = "<rules>", path: Path | None = None,
                have_annotator: bool = True) -> RuleSet:
    description = ""
    if isinstance(data, dict):
        unknown = [k for k in data if k not in ("rules", "description")]
        if unknown:
            raise RulesError(f"{source}: unknown top-level key {', '.join(map(repr, unknown))}; "
                             "expected 'rules' (and optionally 'description')")
        description = str(data.get("description") or "")
        entries = data.get("rules")
    else:
        entries = data
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise RulesError(f"{source}: 'rules' must be a list of entries, each with 'rule: <name>'")
    rules = []
    for i, entry in enumerate(entries, 1):
        where = f"rules file {source}, entry {i}"
        if not isinstance(entry, dict) or "rule" not in entry:
            raise RulesError(f"{where}: each entry must be a mapping with 'rule: <name>', got {entry!r}")
        where += f" ({entry['rule']})"
        cls = RULES.get(entry["rule"])
        if cls is None:
            raise RulesError(f"{where}: unknown rule {entry['rule']!r}; known rules: {', '.join(RULES)}")
        rule = cls(entry, classes, where)
        if rule.needs_annotator and not have_annotator:
            raise RulesError(f"{where}: this rule needs annotator answers: pass --annotator FILE")
        rules.append(rule)
    return RuleSet(path, rules, description)


def load_rules(spec, classes: list[str], have_annotator: bool = True) -> RuleSet:
    """Read and validate a rules file (path or shipped sample name) against ``classes``. The YAML is
    read bounded (size limit, no anchors/aliases: ``extract.safeio.load_yaml``)."""
    from extract.safeio import load_yaml

    path = resolve_rules_path(spec)
    data = load_yaml(path, RulesError, "rules file")
    return parse_rules(data, classes, str(path), path, have_annotator)
