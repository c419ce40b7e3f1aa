"""Speakers without speaker labels: cluster the clips by a speaker embedding (``--normalize cluster``).

Speaker shift is the largest error source of the audio experts; per-speaker z-scoring with the true
speaker ids (``--normalize group``) removes much of it, but new data rarely comes with speaker ids.
Here every cached clip of the run (labeled and unlabeled, like ``pool``) is clustered by a speaker
embedding (the ``speaker`` extractor, or any vector feature given by ``--cluster-feature``); each
audio expert is then z-scored per cluster. The number of clusters is chosen by the silhouette
score of agglomerative (Ward) clusterings of the L2-normalised embeddings over a range of k; a clip
farther from its cluster's centre than the cluster's radius (the 95th percentile of its members'
distances, times ``RADIUS_SLACK``) is an outlier that gets pool statistics, and so does a clip
without an embedding. The clusters, their sizes and how k was chosen go into the RUN_DIR
(``clusters.json``); prediction assigns new clips to the nearest centre with the same radius rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_CLUSTER = 5       # a cluster needs this many clips (as a group of --normalize group)
MAX_K = 40
RADIUS_SLACK = 1.5
OUTLIER = ""          # group name of clips that get pool statistics


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


@dataclass
class Clusters:
    feature: str                    # the embedding's feature key
    centres: np.ndarray             # (k, d) in the unit-normalised embedding space
    radius: np.ndarray              # (k,) outlier distance per cluster
    sizes: list[int]
    scores: dict = field(default_factory=dict)   # k -> silhouette
    chosen_by: str = "silhouette"

    @property
    def names(self) -> list[str]:
        return [f"spk{c:02d}" for c in range(len(self.centres))]

    def assign(self, emb: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        """Cluster name of each row ('' = pool statistics: no embedding, or far from every centre)."""
        out = np.full(len(emb), OUTLIER, dtype=object)
        ok = np.ones(len(emb), bool) if present is None else np.asarray(present, bool)
        ok &= np.isfinite(emb).all(axis=1)
        if not ok.any():
            return out
        u = _unit(emb[ok])
        d = np.linalg.norm(u[:, None, :] - self.centres[None], axis=2)   # (n, k)
        best = d.argmin(axis=1)
        near = d[np.arange(len(best)), best] <= self.radius[best]
        names = np.array(self.names, dtype=object)
        rows = np.flatnonzero(ok)
        out[rows[near]] = names[best[near]]
        return out

    def to_dict(self) -> dict:
        return {"feature": self.feature, "k": len(self.centres), "sizes": dict(zip(self.names, self.sizes)),
                "chosen_by": self.chosen_by, "silhouette_by_k": {str(k): v for k, v in self.scores.items()},
                "radius_rule": f"95th percentile of member distances x {RADIUS_SLACK}",
                "centres": self.centres.round(7).tolist(), "radius": self.radius.round(7).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Clusters":
        return cls(d["feature"], np.asarray(d["centres"], np.float64), np.asarray(d["radius"], np.float64),
                   list(d["sizes"].values()), {int(k): v for k, v in d.get("silhouette_by_k", {}).items()},
                   d.get("chosen_by", "silhouette"))


def find_clusters(emb: np.ndarray, feature: str, present: np.ndarray | None = None, k: int | None = None,
                  max_k: int = MAX_K) -> Clusters:
    """Cluster the rows of ``emb`` (deterministic). ``k`` fixes the number; else it is chosen by silhouette."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    ok = np.ones(len(emb), bool) if present is None else np.asarray(present, bool)
    ok &= np.isfinite(emb).all(axis=1)
    u = _unit(emb[ok])
    n = len(u)
    hi = min(max_k, n // MIN_CLUSTER)
    if n < 2 * MIN_CLUSTER or hi < 2:
        centre = u.mean(axis=0, keepdims=True) if n else np.zeros((1, emb.shape[1]))
        return _finish(feature, u, np.zeros(n, int), centre, {}, "too few clips: one cluster")
    candidates = [k] if k else list(range(2, hi + 1))
    scores, labels_by_k = {}, {}
    for kk in candidates:
        lab = AgglomerativeClustering(n_clusters=kk, linkage="ward").fit_predict(u)
        if np.bincount(lab).min() < 2:
            continue
        scores[kk] = float(silhouette_score(u, lab))
        labels_by_k[kk] = lab
    if not scores:
        return _finish(feature, u, np.zeros(n, int), u.mean(axis=0, keepdims=True), {}, "no valid clustering")
    best = k or max(scores, key=lambda kk: (round(scores[kk], 6), -kk))
    lab = labels_by_k[best]
    # small clusters (< MIN_CLUSTER clips) are merged into their nearest larger cluster
    centres = np.stack([u[lab == c].mean(axis=0) for c in range(best)])
    sizes = np.bincount(lab, minlength=best)
    big = np.flatnonzero(sizes >= MIN_CLUSTER)
    if len(big) == 0:
        big = np.array([int(sizes.argmax())])
    remap = {c: int(big[np.argmin(np.linalg.norm(centres[big] - centres[c], axis=1))]) if c not in big else int(c)
             for c in range(best)}
    lab = np.array([remap[c] for c in lab])
    order = {c: i for i, c in enumerate(sorted(set(lab)))}
    lab = np.array([order[c] for c in lab])
    centres = np.stack([u[lab == c].mean(axis=0) for c in range(len(order))])
    how = f"given k = {k}" if k else f"silhouette over k = 2..{hi} (best k = {best}" + \
        (f", {best - len(order)} small clusters merged" if best != len(order) else "") + ")"
    return _finish(feature, u, lab, centres, scores, how)


def _finish(feature, u, lab, centres, scores, how) -> Clusters:
    radius = np.zeros(len(centres))
    sizes = []
    for c in range(len(centres)):
        d = np.linalg.norm(u[lab == c] - centres[c], axis=1)
        radius[c] = (np.percentile(d, 95) if len(d) else 0.0) * RADIUS_SLACK + 1e-9
        sizes.append(int((lab == c).sum()))
    return Clusters(feature, centres, radius, sizes, scores, how)
