"""The RUN_DIR format: its only writer (``RunWriter``) and its only reader (``open_run``).

    run.json       completion record, written last: format, toolkit version, every file + size + sha256
    config.yaml    what was fitted and how (features, folds, seeds, model, provenance)
    classes.json   the class order of every probability column
    labels.csv     name,discrete of the labeled clips that were trained on
    members.json   [{member, kind, feature}]: every expert, the fused expert and the routed output
    metrics.csv    member,weighted_f1,macro_f1,accuracy (out-of-fold)
    pseudo_labels.csv  stage 2 only: name,discrete of the pseudo-labeled clips it trained on
    clusters.json  --normalize cluster only: speaker clusters (centres, radius, sizes, how k was chosen)
    oof/<member>.csv  test/<member>.csv   name,<classes...> probabilities
    router/oof.csv  router/test.csv   name,<expert members...>,fused: mean router weight per clip
    curves/fold<k>_seed<s>.csv  models/fold<k>_seed<s>.pt

A RUN_DIR is published whole or not at all: ``RunWriter`` builds it in a hidden folder beside the
target and moves it into place once complete, so a killed fit leaves the previous run readable or
nothing, never a mixture; ``open_run`` refuses a folder without ``run.json`` or with a listed file
missing or changed in size. Every CSV is written and read with the ``csv`` module (ids with commas,
quotes, newlines and any letters come back exactly). Paths built from metadata (member names) must
stay inside the run.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from extract.cache import atomic_open
from extract.checksum import sha256_file
from extract.outputs import (LEGACY_RUN_FILES, RUN_RECORD, WRITTEN_BY, OutputError, enclosing_tool_folder, is_run_dir,
                             swap_into_place)
from extract.registry import library_versions, toolkit_version
from extract.safeio import clip, dumps_yaml, load_yaml
from models.data import InputError
from models.metrics import scores

FORMAT = "moe-emotion run/1"
PROB_FMT = "{:.8g}"
LIBRARIES = ("torch", "numpy", "scikit-learn", "lightgbm", "h5py")
SPLITS = ("oof", "test")
SUBDIRS = ("oof", "test", "curves", "models")
MEMBER_NAME = re.compile(r"^[\w][\w.+@=-]{0,199}$")  # one path component, never '..' or a separator
PARTIAL_SUFFIX = ".partial"
CONFIG_MAX_BYTES = 4_000_000
LOG = logging.getLogger("moe.models")
ROUTER_DIR = "router"  # router/oof.csv, router/test.csv: per-clip router weights (which expert decided)
CLUSTERS_FILE = "clusters.json"  # --normalize cluster: the speaker clusters, their sizes, how k was chosen
PSEUDO_TABLE = "pseudo_labels.csv"  # stage 2: the pseudo-labeled clips the run trained on


class RunDirError(InputError, ValueError):
    """A RUN_DIR that cannot be used (message names the file and what to do)."""


def provenance() -> dict:
    return {"toolkit_version": toolkit_version(), "libraries": library_versions(LIBRARIES),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def check_member_name(name, where: str) -> str:
    if not isinstance(name, str) or not MEMBER_NAME.match(name):
        raise RunDirError(f"{where}: member name {clip(repr(name), 80)} is not a plain file name "
                          "(letters, digits, . _ - + @ =); the RUN_DIR was not written by `cli.py fit`")
    return name


# -- CSV, one way for every file of a run -------------------------------------------------------------

def csv_text(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def read_csv(path: Path, required=()) -> tuple[list[str], list[list[str]]]:
    """(header, rows) exactly as written (no stripping); a missing column is a RunDirError."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RunDirError(f"{path} cannot be read as a UTF-8 CSV file ({exc}); re-run `cli.py fit`") from None
    if header is None:
        raise RunDirError(f"{path} is empty; re-run `cli.py fit`")
    missing = [c for c in required if c not in header]
    if missing:
        raise RunDirError(f"{path}: no column {', '.join(missing)} (header {clip(','.join(header), 200)})")
    return header, rows


def probs_rows(ids, probs: np.ndarray):
    """Rows ``name,<p...>`` sorted by name; NaN rows (member absent for that id) are left out."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    for i in order:
        row = probs[i]
        if np.all(np.isfinite(row)):
            yield [ids[i], *(PROB_FMT.format(float(v)) for v in row)]


def write_probs(path: Path, ids, probs: np.ndarray, classes) -> int:
    """A probabilities CSV ``name,<classes...>`` (atomically); returns the rows written."""
    rows = list(probs_rows(ids, probs))
    with atomic_open(Path(path), newline="") as fh:
        fh.write(csv_text(["name", *classes], rows))
    return len(rows)


def read_probs(path, classes=None) -> tuple[list[str], np.ndarray]:
    """A probabilities CSV -> (ids, (n, C) float64) with columns in ``classes`` order (default: the header's)."""
    path = Path(path)
    header, rows = read_csv(path)
    if header[0] != "name":
        raise RunDirError(f"{path}: first column must be 'name'")
    cols = header[1:]
    if classes is not None and sorted(cols) != sorted(classes):
        raise RunDirError(f"{path} has class columns {clip(','.join(cols), 200)} but the run's classes are "
                          f"{','.join(classes)}; the RUN_DIR is inconsistent: re-run `cli.py fit`")
    bad = [k for k, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise RunDirError(f"{path}: line {bad[0] + 2} has {len(rows[bad[0]])} fields, the header {len(header)}; "
                          "re-run `cli.py fit`")
    ids = [r[0] for r in rows]
    try:
        p = np.array([r[1:] for r in rows], dtype=np.float64).reshape(len(rows), len(cols))
    except ValueError as exc:
        raise RunDirError(f"{path} has a non-numeric probability ({clip(str(exc), 120)}); re-run `cli.py fit`") from None
    if classes is not None and list(classes) != cols:
        p = p[:, [cols.index(c) for c in classes]]
    return ids, p


# -- writing ------------------------------------------------------------------------------------------

class RunWriter:
    """Builds a RUN_DIR beside ``target`` and publishes it whole (``publish``), or removes it (``abort``).

    Refused before any work: a target that is a file, a non-empty folder that is not a RUN_DIR, or a
    folder inside a RUN_DIR or a cache. An existing RUN_DIR is replaced only once the new one is
    complete; of the old run only the files it lists (or, for a 0.1.0 run, its layout) are deleted."""

    def __init__(self, target, command: str = "fit"):
        self.target = Path(target)
        self.command = command
        check_run_target(self.target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(self.target)
        self.root = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.",
                                          suffix=PARTIAL_SUFFIX))
        (self.root / ".pid").write_text(str(os.getpid()), encoding="utf-8")
        for sub in SUBDIRS:
            (self.root / sub).mkdir()
        self.published = False

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is not None and not self.published:
            self.abort()
        return False

    def _text(self, rel: str, text: str) -> None:
        with atomic_open(self.root / rel, newline="") as fh:
            fh.write(text)

    def config(self, cfg: dict) -> None:
        self._text("config.yaml", dumps_yaml(cfg))

    def classes(self, classes) -> None:
        self._text("classes.json", json.dumps(list(classes), ensure_ascii=False) + "\n")

    def labels(self, ids, y, classes) -> None:
        self._text("labels.csv", csv_text(["name", "discrete"], [(i, classes[k]) for i, k in sorted(zip(ids, y))]))

    def members(self, members) -> None:
        for m in members:
            check_member_name(m["member"], "members")
        self._text("members.json", json.dumps(members, indent=1) + "\n")

    def curve(self, fold, seed, rows) -> None:
        body = [(r["epoch"], f"{r['train_loss']:.6f}", f"{r['val_loss']:.6f}", f"{r['val_weighted_f1']:.6f}",
                 r.get("phase", "train")) for r in rows]
        self._text(f"curves/fold{fold}_seed{seed}.csv",
                   csv_text(["epoch", "train_loss", "val_loss", "val_weighted_f1", "phase"], body))

    def model(self, fold, seed, saved: dict) -> None:
        import torch

        with atomic_open(self.root / "models" / f"fold{fold}_seed{seed}.pt", binary=True) as fh:
            torch.save(saved, fh)

    def probs(self, part: str, member: str, ids, probs, classes) -> int:
        if part not in SPLITS:
            raise ValueError(part)
        return write_probs(self.root / part / f"{check_member_name(member, 'members')}.csv", ids, probs, classes)

    def router(self, split: str, ids, weights: np.ndarray, names) -> int:
        """Per-clip router weights of one split (``router/<split>.csv``: name,<expert members...>[,fused])."""
        if split not in SPLITS:
            raise ValueError(split)
        (self.root / ROUTER_DIR).mkdir(exist_ok=True)
        for n in names:
            check_member_name(n, "router weights")
        return write_probs(self.root / ROUTER_DIR / f"{split}.csv", ids, weights, names)

    def metrics(self, rows: list[dict]) -> None:
        self._text("metrics.csv", csv_text(["member", "weighted_f1", "macro_f1", "accuracy"], [
            (r["member"], f"{r['weighted_f1']:.6f}", f"{r['macro_f1']:.6f}", f"{r['accuracy']:.6f}") for r in rows]))

    def write_file(self, rel: str, text: str) -> None:
        """Any text file of the run by its relative path (synthetic runs in tests)."""
        parts = Path(rel).parts
        if not parts or ".." in parts or Path(rel).is_absolute():
            raise ValueError(f"{rel!r} is not a path inside the run")
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        self._text(rel, text)

    def table(self, name: str, header, rows) -> None:
        """A further CSV of the run (e.g. metrics_vs_stage1.csv)."""
        self._text(check_member_name(name, "table"), csv_text(header, rows))

    def publish(self) -> Path:
        """Write run.json (every file with size and checksum) and move the run into place."""
        files = {}
        for p in sorted(self.root.rglob("*")):
            if p.is_file() and p.name != ".pid":
                rel = p.relative_to(self.root).as_posix()
                files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        record = {"format": FORMAT, WRITTEN_BY: self.command, "toolkit_version": toolkit_version(),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
        self._text(RUN_RECORD, json.dumps(record, indent=1) + "\n")
        (self.root / ".pid").unlink()
        swap_into_place(self.root, self.target, _old_run_files(self.target), LOG)
        self.published = True
        return self.target

    def abort(self) -> None:
        """Remove the unfinished run (every file in it was written by this writer)."""
        shutil.rmtree(self.root, ignore_errors=True)


def check_run_target(target: Path) -> None:
    target = Path(target)
    inside = enclosing_tool_folder(target / "x")
    if inside and not (is_run_dir(target) and inside == f"RUN_DIR {Path(os.path.abspath(target))}"):
        raise OutputError(f"--out {target} is inside {inside}: a run is never written into a RUN_DIR or a cache")
    if target.exists() and not target.is_dir():
        raise OutputError(f"--out {target} exists and is not a folder")
    if target.is_symlink():
        raise OutputError(f"--out {target} is a symbolic link; give the real folder")
    if target.is_dir() and any(target.iterdir()) and not is_run_dir(target):
        raise OutputError(f"--out {target} is a non-empty folder that is not a RUN_DIR (no {RUN_RECORD}): "
                          "refusing to write into it; choose a new or empty folder")


def _remove_stale_partials(target: Path) -> None:
    """Unfinished runs of killed fits into the same target (their writer process is gone)."""
    import psutil

    for d in target.parent.glob(f".{target.name}.*{PARTIAL_SUFFIX}"):
        pid_file = d / ".pid"
        try:
            pid = int(pid_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours, or being created: leave it
        if not psutil.pid_exists(pid) or pid == os.getpid():
            shutil.rmtree(d, ignore_errors=True)


def _old_run_files(old: Path) -> list[str]:
    """The files of an existing run that the tool wrote (relative paths): those run.json lists, or for a
    0.1.0 run (no run.json) the files of its layout."""
    rec = _read_record(old)
    if rec is not None:
        return [rel for rel in rec.get("files", {}) if ".." not in Path(rel).parts] + [RUN_RECORD]
    legacy = [*LEGACY_RUN_FILES, "config.yaml", "labels.csv", "metrics.csv", "metrics_vs_stage1.csv"]
    for sub, pattern in (("oof", "*.csv"), ("test", "*.csv"), ("curves", "*.csv"), ("models", "*.pt")):
        legacy += [p.relative_to(old).as_posix() for p in (old / sub).glob(pattern)]
    return legacy


# -- reading ------------------------------------------------------------------------------------------

def _read_record(root: Path) -> dict | None:
    p = root / RUN_RECORD
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == FORMAT else None


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise RunDirError(f"{path} is missing ({what}); re-run `cli.py fit`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is not valid JSON ({clip(str(exc), 120)}); re-run `cli.py fit`") from None


@dataclass
class Run:
    """A published RUN_DIR (``open_run``): small files read, CSVs and models read on demand."""

    root: Path
    record: dict
    config: dict
    classes: list[str]
    members: list[dict]
    model_files: list[Path]
    name: str = ""
    _labels: dict | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.root

    def labels(self) -> dict[str, str]:
        """{name: label} of the labeled clips the run trained on."""
        if self._labels is None:
            header, rows = read_csv(self.root / "labels.csv", ("name", "discrete"))
            i, j = header.index("name"), header.index("discrete")
            self._labels = {r[i]: r[j] for r in rows if len(r) == len(header)}
        return self._labels

    def clusters(self):
        """The speaker clusters of a ``--normalize cluster`` run (models.clusters.Clusters), or None."""
        if not (self.root / CLUSTERS_FILE).is_file():
            return None
        from models.clusters import Clusters

        return Clusters.from_dict(_read_json(self.root / CLUSTERS_FILE, "the speaker clusters of the run"))

    def pseudo_ids(self) -> set[str]:
        """Ids the run trained on with a pseudo-label (stage 2), never a truth to tune on."""
        if not (self.root / PSEUDO_TABLE).is_file():
            return set()
        _, rows = read_csv(self.root / PSEUDO_TABLE, ("name",))
        return {r[0] for r in rows if r}

    def probs_path(self, split: str, member: str) -> Path:
        if split not in SPLITS:
            raise ValueError(split)
        return self.root / split / f"{check_member_name(member, self.root / 'members.json')}.csv"

    def has_probs(self, split: str, member: str) -> bool:
        return self.probs_path(split, member).is_file()

    def probs(self, split: str, member: str, classes=None) -> tuple[list[str], np.ndarray]:
        """(ids, (n, C)) with the columns in ``classes`` order (default: the run's)."""
        return read_probs(self.probs_path(split, member), classes or self.classes)

    def router(self, split: str) -> tuple[list[str], np.ndarray, list[str]] | None:
        """(ids, (n, K) router weights, column names) of a split, or None (a run without them)."""
        path = self.root / ROUTER_DIR / f"{split}.csv"
        if split not in SPLITS or not path.is_file():
            return None
        header = read_csv(path)[0]
        ids, w = read_probs(path)
        return ids, w, header[1:]

    def metrics(self) -> dict[str, dict]:
        header, rows = read_csv(self.root / "metrics.csv", ("member", "weighted_f1"))
        return {r[0]: dict(zip(header, r)) for r in rows}

    def routed_member(self) -> str:
        return next(m["member"] for m in self.members if m.get("kind") == "routed")

    def provenance(self) -> dict:
        cfg = self.config or {}
        keep = {k: cfg[k] for k in ("features", "model", "head", "folds", "seeds", "groups", "normalize", "labels",
                                    "cache", "pseudo", "provenance") if k in cfg}
        return {"path": str(self.root), "name": self.name or self.root.name, "classes": self.classes,
                "created": self.record.get("created"), "toolkit_version": self.record.get("toolkit_version"),
                "members": [m["member"] for m in self.members], **keep}


def peek_classes(root) -> list[str]:
    """The class order of a RUN_DIR from classes.json alone (cheap: rules are checked before any work)."""
    path = Path(root) / "classes.json"
    classes = _read_json(path, "the class order of the probability columns")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise RunDirError(f"{path} must be a non-empty JSON list of class names")
    if len(set(classes)) != len(classes):
        raise RunDirError(f"{path} lists a class twice: {clip(classes, 200)}")
    return classes


def open_run(root) -> Run:
    """Open a published RUN_DIR; an unfinished, mixed or hand-altered one is refused with a message."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"RUN_DIR {root} does not exist (give the --out folder of a finished `cli.py fit`)")
    record = _read_record(root)
    if record is None:
        what = ("written by toolkit 0.1.0 or unfinished" if all((root / n).is_file() for n in LEGACY_RUN_FILES)
                else "not a RUN_DIR")
        raise RunDirError(f"{root} has no valid {RUN_RECORD} ({what}): a RUN_DIR is complete only once "
                          "`cli.py fit` has published it; re-run `cli.py fit --out` for it")
    files = record.get("files") or {}
    broken = []
    for rel, info in files.items():
        p = root / rel
        if ".." in Path(rel).parts or not p.is_file():
            broken.append(f"{rel} missing")
        elif p.stat().st_size != info.get("bytes"):
            broken.append(f"{rel} changed")
    if broken:
        raise RunDirError(f"{root} does not match its {RUN_RECORD} ({len(broken)} files: {', '.join(broken[:3])}): "
                          "the run was altered after fit published it; re-run `cli.py fit`")
    classes = peek_classes(root)
    members = _read_json(root / "members.json", "the list of members of the run")
    if not isinstance(members, list) or not members:
        raise RunDirError(f"{root / 'members.json'} must be a non-empty JSON list of members")
    for i, m in enumerate(members):
        if not isinstance(m, dict):
            raise RunDirError(f"{root / 'members.json'} entry {i} is not an object")
        check_member_name(m.get("member"), root / "members.json")
    names = [m["member"] for m in members]
    if len(set(names)) != len(names):
        raise RunDirError(f"{root / 'members.json'} names a member twice")
    config = load_yaml(root / "config.yaml", RunDirError, "run config", max_bytes=CONFIG_MAX_BYTES) or {}
    if not isinstance(config, dict):
        raise RunDirError(f"{root / 'config.yaml'} is not a mapping; re-run `cli.py fit`")
    models = sorted(root / rel for rel in files if rel.startswith("models/") and rel.endswith(".pt"))
    return Run(root, record, config, classes, members, models, root.resolve().name)


def read_run(root) -> Run:
    """A run for prediction: published, with at least one model file."""
    run = open_run(root)
    if not run.model_files:
        raise RunDirError(f"{run.root}/models holds no model file; re-run `cli.py fit`")
    return run


# -- metrics of a fit ---------------------------------------------------------------------------------

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
