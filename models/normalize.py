"""Feature standardisation: ``fold``, ``pool``, ``group`` or ``cluster`` statistics (``--normalize``).

Statistics are per dimension; for a ``layers`` feature per layer and dimension (layers differ in
scale), for ``series`` over the valid frames. Only present rows and real tokens enter a statistic,
and only real tokens are transformed (the rest stay 0 and stay masked).

* fold: mean/std of the training rows of the fold (labels play no part, but held-out rows neither);
* pool: mean/std of every cached clip of the feature set, labeled or not;
* group: mean/std per group (speaker) over every clip of that group, labeled or not; a group with
  fewer than ``MIN_GROUP`` clips of a feature, and ids with no group, fall back to the pool figures;
* cluster: as group for the audio experts, with groups found by clustering a speaker embedding
  (models/clusters.py: no speaker labels needed); the other experts get pool statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.data import FeatureData

EPS = 1e-6
MIN_GROUP = 5


@dataclass
class Stats:
    mean: np.ndarray   # (T', D) with T' = L for layers, else 1
    std: np.ndarray

    def to_dict(self) -> dict:
        return {"mean": self.mean.astype(np.float32), "std": self.std.astype(np.float32)}

    @classmethod
    def from_dict(cls, d) -> "Stats":
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


def fit_stats(fd: FeatureData, rows: np.ndarray) -> Stats:
    rows = np.asarray(rows)
    rows = rows[fd.present[rows]]
    if fd.kind == "layers":
        x = fd.x[rows]                                      # (n, L, D)
        if len(x) == 0:
            return Stats(np.zeros(fd.x.shape[1:], np.float32), np.ones(fd.x.shape[1:], np.float32))
        mean = x.mean(axis=0, dtype=np.float64)
        std = x.std(axis=0, dtype=np.float64)
    else:
        tok = fd.tok_mask[rows]
        x = fd.x[rows][tok]                                 # (frames, D)
        if len(x) == 0:
            return Stats(np.zeros((1, fd.dim), np.float32), np.ones((1, fd.dim), np.float32))
        mean = x.mean(axis=0, dtype=np.float64)[None]
        std = x.std(axis=0, dtype=np.float64)[None]
    std = np.where(std < EPS, 1.0, std)
    return Stats(mean.astype(np.float32), std.astype(np.float32))


def _apply(x: np.ndarray, tok: np.ndarray, present: np.ndarray, st: Stats) -> np.ndarray:
    y = np.subtract(x, st.mean[None], dtype=np.float32)
    y /= st.std[None]
    y[~(tok & present[:, None])] = 0.0
    return y


@dataclass
class FeatureNormalizer:
    """Statistics of one feature: one global set, or per group plus a global fallback."""

    base: Stats
    groups: dict[str, Stats] = field(default_factory=dict)

    def transform(self, fd: FeatureData, row_groups: np.ndarray | None = None) -> np.ndarray:
        if not self.groups or row_groups is None:
            return _apply(fd.x, fd.tok_mask, fd.present, self.base)
        out = np.empty_like(fd.x)
        keys = np.array([g if g in self.groups else "" for g in row_groups], dtype=object)
        for g in np.unique(keys):
            rows = np.flatnonzero(keys == g)
            st = self.groups.get(g, self.base) if g else self.base
            out[rows] = _apply(fd.x[rows], fd.tok_mask[rows], fd.present[rows], st)
        return out

    def to_dict(self) -> dict:
        return {"base": self.base.to_dict(), "groups": {g: s.to_dict() for g, s in self.groups.items()}}

    @classmethod
    def from_dict(cls, d) -> "FeatureNormalizer":
        return cls(Stats.from_dict(d["base"]), {g: Stats.from_dict(s) for g, s in d.get("groups", {}).items()})


def fit_fold(fd: FeatureData, train_rows, **_) -> FeatureNormalizer:
    return FeatureNormalizer(fit_stats(fd, train_rows))


def fit_pool(fd: FeatureData, train_rows=None, **_) -> FeatureNormalizer:
    return FeatureNormalizer(fit_stats(fd, np.arange(len(fd.present))))


def _fit_groups(fd: FeatureData, row_groups, skip=()) -> dict[str, Stats]:
    """Statistics of every named group (not in ``skip``) with at least MIN_GROUP present clips."""
    keys = np.asarray(row_groups, dtype=object)
    groups: dict[str, Stats] = {}
    for g in sorted({g for g in keys if g and g not in skip}):
        rows = np.flatnonzero((keys == g) & fd.present)
        if len(rows) >= MIN_GROUP:
            groups[g] = fit_stats(fd, rows)
    return groups


def fit_group(fd: FeatureData, train_rows=None, row_groups=None, **_) -> FeatureNormalizer:
    base = fit_stats(fd, np.arange(len(fd.present)))
    return FeatureNormalizer(base, {} if row_groups is None else _fit_groups(fd, row_groups))


CLUSTER_MODALITIES = ("audio",)  # experts z-scored per speaker cluster under --normalize cluster


def fit_cluster(fd: FeatureData, train_rows=None, row_groups=None, **_) -> FeatureNormalizer:
    """Per speaker cluster (``row_groups`` from models.clusters) for audio experts; pool statistics for
    the rest (a face or a text does not change with the voice)."""
    if fd.meta.get("modality") in CLUSTER_MODALITIES:
        return fit_group(fd, train_rows, row_groups)
    return fit_pool(fd)


NORMALIZERS = {"fold": fit_fold, "pool": fit_pool, "group": fit_group, "cluster": fit_cluster}
# modes whose statistics do not depend on the fold (fitted once per run)
FOLD_INDEPENDENT = {"pool", "group", "cluster"}


def extend_groups(norm: FeatureNormalizer, fd: FeatureData, row_groups) -> FeatureNormalizer:
    """At predict time: groups unseen at fit time get statistics from the clips being predicted."""
    if row_groups is None:
        return norm
    return FeatureNormalizer(norm.base, {**norm.groups, **_fit_groups(fd, row_groups, skip=norm.groups)})
