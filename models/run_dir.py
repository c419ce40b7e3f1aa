"""Writing and reading a RUN_DIR (the contract in the project's notes; read by predict, pseudo-label,
ensemble and evaluate).

    config.yaml  classes.json  labels.csv  members.json  metrics.csv
    oof/<member>.csv  test/<member>.csv  curves/fold<k>_seed<s>.csv  models/fold<k>_seed<s>.pt
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from extract.cache import atomic_open, atomic_write_text
from extract.registry import library_versions, toolkit_version
from models.metrics import scores

PROB_FMT = "{:.8g}"
LIBRARIES = ("torch", "numpy", "scikit-learn", "lightgbm", "h5py")




def provenance() -> dict:
    return {"toolkit_version": toolkit_version(), "libraries": library_versions(LIBRARIES),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_probs(path: Path, ids, probs: np.ndarray, classes) -> int:
    """``name,<classes...>`` sorted by name; rows that are NaN (member absent for that id) are left out."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    lines = [",".join(["name", *classes])]
    n = 0
    for i in order:
        row = probs[i]
        if not np.all(np.isfinite(row)):
            continue
        lines.append(",".join([ids[i], *(PROB_FMT.format(float(v)) for v in row)]))
        n += 1
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return n


def read_probs(path, classes=None) -> tuple[list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    if header[0] != "name":
        raise ValueError(f"{path}: first column must be 'name'")
    cols = header[1:]
    if classes is not None and list(classes) != cols:
        raise ValueError(f"{path}: class columns {cols} differ from {list(classes)}")
    ids = [r[0] for r in rows]
    return ids, np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float64).reshape(len(rows), len(cols))


class RunWriter:
    def __init__(self, root):
        self.root = Path(root)

    def prepare(self) -> None:
        """Create the sub-folders and empty them of an earlier run's files."""
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("oof", "test", "curves", "models"):
            d = self.root / sub
            d.mkdir(exist_ok=True)
            for f in d.iterdir():
                if f.is_file():
                    f.unlink()

    def config(self, cfg: dict) -> None:
        atomic_write_text(self.root / "config.yaml", yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))

    def classes(self, classes) -> None:
        atomic_write_text(self.root / "classes.json", json.dumps(list(classes)) + "\n")

    def labels(self, ids, y, classes) -> None:
        lines = ["name,discrete"] + [f"{i},{classes[k]}" for i, k in sorted(zip(ids, y))]
        atomic_write_text(self.root / "labels.csv", "\n".join(lines) + "\n")

    def members(self, members) -> None:
        atomic_write_text(self.root / "members.json", json.dumps(members, indent=1) + "\n")

    def curve(self, fold, seed, rows) -> None:
        lines = ["epoch,train_loss,val_loss,val_weighted_f1,phase"] + [
            f"{r['epoch']},{r['train_loss']:.6f},{r['val_loss']:.6f},{r['val_weighted_f1']:.6f},{r.get('phase', 'train')}"
            for r in rows]
        atomic_write_text(self.root / "curves" / f"fold{fold}_seed{seed}.csv", "\n".join(lines) + "\n")

    def model(self, fold, seed, saved: dict) -> None:
        import torch

        with atomic_open(self.root / "models" / f"fold{fold}_seed{seed}.pt", binary=True) as fh:
            torch.save(saved, fh)

    def probs(self, part: str, member: str, ids, probs, classes) -> int:
        return write_probs(self.root / part / f"{member}.csv", ids, probs, classes)

    def metrics(self, rows: list[dict]) -> None:
        lines = ["member,weighted_f1,macro_f1,accuracy"] + [
            f"{r['member']},{r['weighted_f1']:.6f},{r['macro_f1']:.6f},{r['accuracy']:.6f}" for r in rows]
        atomic_write_text(self.root / "metrics.csv", "\n".join(lines) + "\n")


def member_metrics(members, oof: dict, y) -> list[dict]:
    """Out-of-fold metrics per member over the ids it predicts (experts: where their modality exists)."""
    rows = []
    for m in members:
        p = oof[m["member"]]
        ok = np.all(np.isfinite(p), axis=1)
        s = scores(np.asarray(y)[ok], p[ok].argmax(1))
        rows.append({"member": m["member"], "kind": m["kind"], "n": int(ok.sum()), **s})
    return rows


def format_table(rows: list[dict]) -> str:
    width = max([len("member")] + [len(r["member"]) for r in rows])
    out = [f"{'member':<{width}}  {'weighted_f1':>11}  {'macro_f1':>8}  {'accuracy':>8}  {'n':>6}"]
    for r in rows:
        out.append(f"{r['member']:<{width}}  {r['weighted_f1']:>11.4f}  {r['macro_f1']:>8.4f}  "
                   f"{r['accuracy']:>8.4f}  {r.get('n', ''):>6}")
    return "\n".join(out)


@dataclass
class Run:
    root: Path
    config: dict
    classes: list[str]
    members: list[dict]
    model_files: list[Path]


def read_run(root) -> Run:
    root = Path(root)
    need = ["config.yaml", "classes.json", "members.json"]
    missing = [n for n in need if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: not a run directory (missing {', '.join(missing)}); "
                                "give the --out folder of a finished `cli.py fit`")
    config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
    classes = json.loads((root / "classes.json").read_text(encoding="utf-8"))
    members = json.loads((root / "members.json").read_text(encoding="utf-8"))
    files = sorted((root / "models").glob("fold*_seed*.pt"))
    if not files:
        raise FileNotFoundError(f"{root}/models holds no fold*_seed*.pt: the fit did not finish; re-run it")
    return Run(root, config, classes, members, files)
