"""Synthetic RUN_DIRs written to the RUN_DIR contract, for tests and benchmarks of ``ensemble``.

They hold no model: each member's probabilities are a softmax of ``skill * onehot(true class) +
N(0, 1)`` noise, so a member's reliability is known. Real RUN_DIRs come from ``cli.py fit``.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def _write_probs(path: Path, ids, probs, classes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["name", *classes])
        for i in order:
            w.writerow([ids[i], *(f"{x:.6f}" for x in probs[i])])


def write_run_dir(path, classes, labels: dict, oof: dict, test: dict, members: list[dict] | None = None,
                  config: dict | None = None) -> Path:
    """Write a RUN_DIR. ``oof``/``test``: {member: (ids, (n, C) probabilities)}; ``members`` defaults to
    expert-* names as experts, 'fused' as fused and anything else as routed."""
    import yaml

    from models.metrics import scores
    from models.run_dir import RunWriter

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if members is None:
        members = []
        for m in dict.fromkeys([*oof, *test]):
            if m.startswith("expert-"):
                members.append({"member": m, "kind": "expert", "feature": m[len("expert-"):]})
            else:
                members.append({"member": m, "kind": "fused" if m == "fused" else "routed"})
    (path / "classes.json").write_text(json.dumps(list(classes)), encoding="utf-8")
    (path / "members.json").write_text(json.dumps(members, indent=1), encoding="utf-8")
    cfg = {"classes": list(classes), "folds": 5, "seeds": [0], "model": "synthetic", "created": "synthetic",
           **(config or {})}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    with open(path / "labels.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["name", "discrete"])
        w.writerows(sorted(labels.items()))
    cidx = {c: i for i, c in enumerate(classes)}
    rows = []
    for m, (ids, probs) in oof.items():
        _write_probs(path / "oof" / f"{m}.csv", ids, probs, classes)
        y = np.array([cidx[labels[i]] for i in ids])
        rows.append({"member": m, **scores(y, np.asarray(probs).argmax(axis=1))})
    for m, (ids, probs) in test.items():
        _write_probs(path / "test" / f"{m}.csv", ids, probs, classes)
    RunWriter(path).metrics(rows)  # the same metrics.csv as `cli.py fit` writes
    return path


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
