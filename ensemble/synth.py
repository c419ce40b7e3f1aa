"""Synthetic RUN_DIRs written to the RUN_DIR contract, for tests and benchmarks of ``ensemble``.

They hold no model: each member's probabilities are a softmax of ``skill * onehot(true class) +
N(0, 1)`` noise, so a member's reliability is known. Real RUN_DIRs come from ``cli.py fit``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_run_dir(path, classes, labels: dict, oof: dict, test: dict, members: list[dict] | None = None,
                  config: dict | None = None, files: dict[str, str] | None = None) -> Path:
    """Publish a RUN_DIR. ``oof``/``test``: {member: (ids, (n, C) probabilities)}; ``members`` defaults to
    expert-* names as experts, 'fused' as fused and anything else as routed; ``config['pseudo_ids']``
    ({id: label}) becomes the run's pseudo_labels.csv; ``files`` ({relative path: text}) are written as given."""
    from models.metrics import scores
    from models.run_dir import RunWriter

    if members is None:
        members = []
        for m in dict.fromkeys([*oof, *test]):
            if m.startswith("expert-"):
                members.append({"member": m, "kind": "expert", "feature": m[len("expert-"):]})
            else:
                members.append({"member": m, "kind": "fused" if m == "fused" else "routed"})
    cfg = {"classes": list(classes), "folds": 5, "seeds": [0], "model": "synthetic", **(config or {})}
    cidx = {c: i for i, c in enumerate(classes)}
    with RunWriter(path, command="synthetic") as w:  # the same files and record as `cli.py fit` publishes
        w.classes(classes)
        w.members(members)
        w.config(cfg)
        w.table("labels.csv", ["name", "discrete"], sorted(labels.items()))
        rows = []
        for m, (ids, probs) in oof.items():
            w.probs("oof", m, list(ids), np.asarray(probs), classes)
            y = np.array([cidx[labels[i]] for i in ids])
            rows.append({"member": m, **scores(y, np.asarray(probs).argmax(axis=1))})
        for m, (ids, probs) in test.items():
            w.probs("test", m, list(ids), np.asarray(probs), classes)
        w.metrics(rows)
        pseudo = (config or {}).get("pseudo_ids")
        if pseudo:
            w.table("pseudo_labels.csv", ["name", "discrete"], sorted(pseudo.items()))
        for rel, text in (files or {}).items():  # raw files (tests of the reader), replacing generated ones
            w.write_file(rel, text)
        return w.publish()


def member_probs(y: np.ndarray, skill: float, n_classes: int, rng) -> np.ndarray:
    logits = skill * np.eye(n_classes)[y] + rng.normal(size=(len(y), n_classes))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synthetic_runs(root, classes=("neutral", "angry", "happy", "sad", "worried", "surprise"), n_runs: int = 2,
                   n_labeled: int = 200, n_test: int = 100, skills=(0.5, 1.5, 2.5), coverage: float = 0.9,
                   seed: int = 0) -> tuple[list[Path], dict[str, str], dict[str, str]]:
    """RUN_DIRs over shared ids: per run, one expert per entry of ``skills`` (missing on a
    ``1 - coverage`` share of ids) plus 'fused' and 'routed' members (always present).

    Returns (run paths, labels of the labeled ids, hidden true labels of the test ids).
    """
    rng = np.random.default_rng(seed)
    classes = list(classes)
    C = len(classes)
    lab_ids = [f"L{i:05d}" for i in range(n_labeled)]
    test_ids = [f"T{i:05d}" for i in range(n_test)]
    y_lab = rng.integers(0, C, n_labeled)
    y_test = rng.integers(0, C, n_test)
    labels = {n: classes[k] for n, k in zip(lab_ids, y_lab)}
    truth = {n: classes[k] for n, k in zip(test_ids, y_test)}
    paths = []
    for r in range(n_runs):
        oof, test = {}, {}
        specs = [(f"expert-f{k}", s, coverage) for k, s in enumerate(skills)]
        specs += [("fused", max(skills) + 0.5, 1.0), ("routed", max(skills) + 0.3, 1.0)]
        for name, skill, cov in specs:
            for ids, y, store in ((lab_ids, y_lab, oof), (test_ids, y_test, test)):
                keep = rng.random(len(ids)) < cov
                p = member_probs(y[keep], skill, C, rng)
                store[name] = ([i for i, k in zip(ids, keep) if k], p)
        paths.append(write_run_dir(Path(root) / f"run{r}", classes, labels, oof, test))
    return paths, labels, truth
