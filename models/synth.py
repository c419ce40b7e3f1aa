"""Synthetic feature caches whose classes are learnable (tests and benchmarks).

Written with ``extract.cache.put`` exactly as an extractor's output would be read back: vector,
layers and series feature sets, missing modalities (failures and never-extracted ids), masked
frames holding garbage, a noisy expert with no signal, and a per-speaker offset (speaker shift).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extract.cache import Feature, put


@dataclass
class Synthetic:
    cache: Path
    labels_csv: Path
    keys: dict            # short name -> full key
    labels: dict          # id -> class (labeled ids only)
    unlabeled: list       # cached ids without a label
    truth: dict           # id -> class (every id)
    speaker: dict         # id -> speaker


def _signal(rng, y, n_classes, dim, strength):
    centers = rng.normal(0, 1, (n_classes, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True) + 1e-9
    return strength * centers[y]


def make_synthetic_cache(root, n_labeled: int = 120, n_unlabeled: int = 30, classes=("neutral", "happy", "sad"),
                         dim: int = 12, n_speakers: int = 6, missing: float = 0.1, strength: float = 3.0,
                         speaker_shift: float = 1.0, seed: int = 0, name=None) -> Synthetic:
    """A small cache: ``vec`` (vector), ``lay`` (layers, signal in one layer), ``ser`` (series with masked
    garbage frames, missing for some ids: failures), ``noise`` (vector, pure noise)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    n = n_labeled + n_unlabeled
    c = len(classes)
    ids = [(name or "clip{:04d}".format)(i) for i in range(n)]  # name(i) -> the clip id of row i
    y = np.arange(n) % c
    rng.shuffle(y)
    spk = np.array([f"spk{i % n_speakers}" for i in range(n)])
    shift = {s: rng.normal(0, speaker_shift, 64).astype(np.float32) for s in sorted(set(spk))}

    vec_sig = _signal(rng, y, c, dim, strength)
    vec = {}
    miss_vec = set(rng.choice(n, int(missing * n), replace=False).tolist())
    for i, cid in enumerate(ids):
        if i in miss_vec:
            continue
        vec[cid] = Feature(data=vec_sig[i] + rng.normal(0, 1, dim).astype(np.float32) + shift[spk[i]][:dim])
    keys = {"vec": put(root, "vec", "vector", vec, meta={"model": "synthetic"})}

    n_layers = 3
    lay_sig = _signal(rng, y, c, dim, strength * 0.8)
    lay = {}
    for i, cid in enumerate(ids):
        x = rng.normal(0, 1, (n_layers, dim)).astype(np.float32) + shift[spk[i]][:dim]
        x[1] += lay_sig[i]
        x[2] *= 5.0                                        # layers differ in scale
        lay[cid] = Feature(data=x)
    keys["lay"] = put(root, "lay", "layers", lay, meta={"model": "synthetic"})

    sd = 6
    ser_sig = _signal(rng, y, c, sd, strength * 0.8)
    ser, fails = {}, {}
    miss_ser = set(rng.choice(n, int(missing * n), replace=False).tolist())
    for i, cid in enumerate(ids):
        if i in miss_ser:
            fails[cid] = "no face found in any frame"
            continue
        t = int(rng.integers(4, 11))
        x = ser_sig[i] + rng.normal(0, 1, (t, sd)).astype(np.float32) + shift[spk[i]][:sd]
        mask = rng.random(t) > 0.25
        mask[0] = True
        x[~mask] = 50.0                                    # garbage where the mask says "no value"
        ser[cid] = Feature(data=x, timestamps=np.arange(t) * 0.2, mask=mask, pooled=x[mask].mean(0))
    keys["ser"] = put(root, "ser", "series", ser, failures=fails, meta={"model": "synthetic"})

    noise = {cid: Feature(data=rng.normal(0, 1, dim).astype(np.float32)) for cid in ids}
    keys["noise"] = put(root, "noise", "vector", noise, meta={"model": "synthetic"})

    labeled = ids[:n_labeled]
    labels_csv = root.parent / f"{root.name}_labels.csv"
    with open(labels_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "discrete", "speaker"])
        for i, cid in enumerate(labeled):
            w.writerow([cid, classes[y[i]], spk[i]])
    return Synthetic(root, labels_csv, keys, {cid: classes[y[i]] for i, cid in enumerate(labeled)},
                     ids[n_labeled:], {cid: classes[y[i]] for i, cid in enumerate(ids)},
                     {cid: spk[i] for i, cid in enumerate(ids)})


def make_mer_like_cache(root, n: int = 7369, n_experts: int = 6, dim: int = 1024, n_classes: int = 6,
                        n_unlabeled: int = 0, missing: float = 0.03, seed: int = 0,
                        classes=("neutral", "angry", "happy", "sad", "worried", "surprise")) -> Synthetic:
    """MER-sized vector features: ``n`` labeled clips x ``n_experts`` experts x ``dim`` dims; the
    class signal lives in a random 32-d subspace per expert, of varying strength (the last expert is
    nearly pure noise), so that single experts are weak and their combination is not perfect."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    total = n + n_unlabeled
    ids = [f"sample_{i:06d}" for i in range(total)]
    prior = np.array([0.25, 0.2, 0.2, 0.15, 0.1, 0.1])[:n_classes]
    y = rng.choice(n_classes, total, p=prior / prior.sum())
    keys = {}
    for e in range(n_experts):
        strength = 0.02 if e == n_experts - 1 else 0.1 + 0.04 * e     # separations of ~1-2 noise SDs
        basis = np.linalg.qr(rng.normal(size=(dim, 32)))[0].astype(np.float32)          # (dim, 32)
        centers = rng.normal(0, strength, (n_classes, 32)).astype(np.float32)
        x = rng.normal(0, 1, (total, dim)).astype(np.float32)
        x += centers[y] @ basis.T
        absent = rng.random(total) < missing
        vals = {cid: Feature(data=x[i]) for i, cid in enumerate(ids) if not absent[i]}
        fails = {cid: "synthetic failure" for i, cid in enumerate(ids) if absent[i]}
        keys[f"exp{e}"] = put(root, f"exp{e}", "vector", vals, failures=fails, meta={"model": "synthetic-mer"})
    labels_csv = root.parent / f"{root.name}_labels.csv"
    with open(labels_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "discrete"])
        for i in range(n):
            w.writerow([ids[i], classes[y[i]]])
    truth = {cid: classes[y[i]] for i, cid in enumerate(ids)}
    return Synthetic(root, labels_csv, keys, {cid: truth[cid] for cid in ids[:n]}, ids[n:], truth, {})
