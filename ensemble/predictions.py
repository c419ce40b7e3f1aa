"""The predictions CSV (MER submission format ``name,discrete``), its sidecars, and reading them back.

``<out>.csv``          exactly the header ``name,discrete``, one row per predicted id, sorted by name.
``<out>.details.csv``  name, discrete, vote (label before the rules), n_members (members present),
                       margin (final score of the label minus the best other), changed_by (rules that
                       changed the row, ';'-joined), confidence (calibrated probability of the label),
                       prob_<class> (final per-class scores, before calibration).
``<out>.meta.json``    provenance: runs, members and weights, vote, rules (as applied, with tuned
                       thresholds), annotator, what was tuned on, counts and changes per rule.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from extract.cache import atomic_open
from extract.checksum import sha256_file
from extract.errors import UserError
from extract.safeio import clip
from extract.outputs import read_record

from .reranking import State

HEADER = ["name", "discrete"]


class PredictionsError(UserError, ValueError):
    """A predictions file or an ensemble option that cannot be used (message names the file)."""


def sidecar_paths(out) -> dict[str, Path]:
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() == ".csv" else out
    return {"details": Path(f"{stem}.details.csv"), "meta": Path(f"{stem}.meta.json")}


def _atomic_write(path: Path, write) -> None:
    with atomic_open(path, newline="") as fh:
        write(fh)


def write_predictions(out, ids, labels, classes, result=None, meta: dict | None = None,
                      calibrated: np.ndarray | None = None) -> dict[str, Path]:
    """Write the predictions CSV (+ details and meta sidecars when ``result``/``meta`` are given;
    ``calibrated``: calibrated class probabilities, whose top value is the details' ``confidence``)."""
    out = Path(out)
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    names = [classes[i] for i in labels]

    def main(fh):
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows((ids[i], names[i]) for i in order)

    _atomic_write(out, main)
    paths = {"predictions": out, **sidecar_paths(out)}
    if result is not None:
        final = result.final
        changed = result.changed_by()
        margin = State(ids, final.scores, final.labels).margins()

        def details(fh):
            w = csv.writer(fh, lineterminator="\n")
            conf = [""] * len(ids) if calibrated is None else [f"{x:.6f}" for x in np.max(calibrated, axis=1)]
            w.writerow(HEADER + ["vote", "n_members", "margin", "changed_by", "confidence"]
                       + [f"prob_{c}" for c in classes])
            for i in order:
                w.writerow([ids[i], names[i], classes[result.vote.labels[i]], int(result.vote.n_members[i]),
                            f"{margin[i]:.6f}", changed[i], conf[i]] + [f"{x:.8g}" for x in final.scores[i]])

        _atomic_write(paths["details"], details)
    if meta is not None:  # last: it records the checksum of the predictions it describes
        meta = dict(meta, predictions_sha256=sha256_file(out))
        _atomic_write(paths["meta"], lambda fh: json.dump(meta, fh, indent=2, default=str))
    return paths


def verify_meta(predictions_path, meta: dict) -> bool:
    """Does the meta sidecar describe this predictions file (a killed or another run leaves a mismatch)?"""
    want = meta.get("predictions_sha256")
    return want is None or want == sha256_file(predictions_path)


def read_predictions(path) -> dict[str, str]:
    """``name,discrete`` -> {name: label}; a missing column or a duplicate id is an error."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"predictions file {path} does not exist")
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != HEADER:
            raise PredictionsError(f"{path} has header {header}; expected `name,discrete`")
        out: dict[str, str] = {}
        for lineno, row in enumerate(reader, 2):
            if not row or not row[0]:
                continue
            if len(row) < 2:
                raise PredictionsError(f"{path}:{lineno}: row {row} has no label")
            name = row[0]
            if name in out:
                raise PredictionsError(f"{path}:{lineno}: id {clip(repr(name), 120)} appears twice")
            out[name] = row[1].strip()
    return out


def read_meta(predictions_path) -> dict | None:
    return read_record(sidecar_paths(predictions_path)["meta"])


def read_details(path, classes) -> dict[str, np.ndarray]:
    """The final per-class scores of a predictions file's details sidecar: {name: (C,) scores}."""
    p = sidecar_paths(path)["details"]
    if not p.is_file():
        return {}
    with open(p, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        cols = [header.index(f"prob_{c}") if f"prob_{c}" in header else -1 for c in classes]
        if not header or min(cols) < 0:
            return {}
        return {row[0]: np.array([float(row[k]) for k in cols]) for row in reader if len(row) == len(header)}
