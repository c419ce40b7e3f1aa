"""Consensus pseudo-labels: keep an unlabeled clip only when two independent judges agree.

Judge 1 is the stage-1 model (its routed output, averaged over folds and seeds); judge 2 is an
annotator (VLM/Gemini answers, or any outside labels). A clip is kept when

    argmax(model) == annotator label
    and  model confidence (max probability)     >= threshold of that class (global --min-confidence
                                                   or per class --class-thresholds)
    and  annotator confidence                   >= --min-annotator-confidence

The output CSV (``name,discrete,confidence,annotator_label,annotator_confidence``) has a sidecar
``<csv>.meta.json`` with the thresholds, the stage-1 run, the annotator file and the counts, so a
stage-2 run records where its pseudo-labels came from.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from extract.cache import atomic_open, atomic_write_text
from extract.outputs import WRITTEN_BY, read_record
from extract.tables import read_rows
from models.data import InputError

PSEUDO_COLUMNS = ("name", "discrete", "confidence", "annotator_label", "annotator_confidence")


class PseudoError(InputError, ValueError):
    """Bad input for pseudo-labeling (message names the file and what to do)."""


def parse_class_thresholds(text, classes: list[str]) -> dict[str, float]:
    """``happy=0.9,worried=0.8`` (or a dict) -> {class: threshold}; unknown classes and bad values are errors."""
    out: dict[str, float] = {}
    if isinstance(text, dict):
        text = ",".join(f"{k}={v}" for k, v in text.items())
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq:
            raise PseudoError(f"--class-thresholds: {item!r} must look like class=threshold, e.g. happy=0.9")
        if name not in classes:
            raise PseudoError(f"--class-thresholds: unknown class {name!r}; classes: {', '.join(classes)}")
        try:
            v = float(value)
        except ValueError:
            raise PseudoError(f"--class-thresholds: {item!r}: threshold must be a number in [0, 1]") from None
        if not 0.0 <= v <= 1.0:
            raise PseudoError(f"--class-thresholds: {item!r}: threshold must be in [0, 1]")
        out[name] = v
    return out


@dataclass
class Selection:
    ids: list[str]
    pred: np.ndarray  # model's class index per id
    conf: np.ndarray  # model's max probability
    ann_label: list[str | None]  # annotator label (None: no answer, or not one of the classes)
    ann_conf: np.ndarray
    keep: np.ndarray  # bool
    classes: list[str]
    counts: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [{"name": cid, "discrete": self.classes[int(p)], "confidence": f"{c:.6f}",
                 "annotator_label": a, "annotator_confidence": f"{ac:.6f}"}
                for cid, p, c, a, ac, k in zip(self.ids, self.pred, self.conf, self.ann_label, self.ann_conf, self.keep)
                if k]


def select(ids: list[str], probs: np.ndarray, classes: list[str], annotator, min_confidence: float = 0.0,
           class_thresholds: dict[str, float] | None = None, min_annotator_confidence: float = 0.0) -> Selection:
    """Agreement filter. ``annotator`` is an extract.annotator.Annotator (answers by id)."""
    probs = np.asarray(probs, dtype=np.float64)
    valid = np.isfinite(probs).all(axis=1)
    pred = np.where(valid, np.nan_to_num(probs).argmax(axis=1), -1)
    conf = np.where(valid, np.nan_to_num(probs).max(axis=1), 0.0)
    thr = np.array([(class_thresholds or {}).get(c, min_confidence) for c in classes])
    lower = {c.lower(): c for c in classes}
    ann_label, ann_conf = [], np.zeros(len(ids))
    no_answer = outside = 0
    for i, cid in enumerate(ids):
        ans = annotator.answers.get(cid)
        if ans is None:
            no_answer += 1
            ann_label.append(None)
            continue
        label = lower.get(str(ans.label).strip().lower())
        if label is None:
            outside += 1
        ann_label.append(label)
        ann_conf[i] = float(ans.confidence)
    agree = np.array([p >= 0 and a is not None and classes[int(p)] == a for p, a in zip(pred, ann_label)], dtype=bool)
    model_ok = valid & (conf >= thr[np.maximum(pred, 0)])
    keep = agree & model_ok & (ann_conf >= min_annotator_confidence)
    answered = len(ids) - no_answer - outside
    counts = {
        "candidates": len(ids), "with_model_prediction": int(valid.sum()), "annotator_answers": len(ids) - no_answer,
        "annotator_missing": no_answer, "annotator_label_outside_classes": outside,
        "agree": int(agree.sum()), "agreement_rate": float(agree.sum() / answered) if answered else 0.0,
        "kept": int(keep.sum()),
        "kept_per_class": {c: int(((pred == k) & keep).sum()) for k, c in enumerate(classes)},
        "agree_per_class": {c: int(((pred == k) & agree).sum()) for k, c in enumerate(classes)},
    }
    return Selection(list(ids), pred, conf, ann_label, ann_conf, keep, list(classes), counts)


def meta_path(path: str | Path) -> Path:
    """The provenance sidecar of a pseudo-label CSV: ``<csv>.meta.json``."""
    return Path(str(path) + ".meta.json")


def write_pseudo(path: str | Path, sel: Selection, meta: dict) -> Path:
    """Write the CSV and its meta sidecar, each atomically (a reader never sees half a file)."""
    path = Path(path)
    with atomic_open(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=PSEUDO_COLUMNS)
        w.writeheader()
        w.writerows(sel.rows())
    meta = dict(meta, counts=sel.counts, classes=sel.classes, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **{WRITTEN_BY: "pseudo-label"})
    atomic_write_text(meta_path(path), json.dumps(meta, indent=2, default=str))
    return path


@dataclass
class PseudoLabels:
    path: Path
    ids: list[str]
    labels: list[str]
    confidence: np.ndarray
    meta: dict


def read_pseudo(path: str | Path, classes: list[str] | None) -> PseudoLabels:
    """Read a pseudo-label CSV (name,discrete[,confidence...]) and its meta sidecar if present
    (``classes``: the labels must be among them; None: not checked)."""
    path = Path(path)
    _, rows = read_rows(path, ("name", "discrete"), PseudoError, "pseudo-label file",
                        "make one with `cli.py pseudo-label`")
    unknown = sorted({r["discrete"] for r in rows} - set(classes)) if classes is not None else []
    if unknown:
        raise PseudoError(f"{path}: labels outside the classes ({', '.join(classes)}): {', '.join(unknown)}")
    ids = [r["name"] for r in rows]
    if len(set(ids)) != len(ids):
        raise PseudoError(f"{path}: an id appears twice")
    conf = np.array([float(r.get("confidence") or 1.0) for r in rows])
    sidecar = meta_path(path)
    meta = read_record(sidecar) or {}
    return PseudoLabels(path, ids, [r["discrete"] for r in rows], conf, meta)


# -- the stage (library behind ``cli.py pseudo-label``) ------------------------------------------------

@dataclass
class PseudoResult:
    path: Path
    selection: Selection
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict:
        return self.selection.counts

    @property
    def meta_path(self) -> Path:
        return meta_path(self.path)


def pseudo_label(run_dir, cache, annotator, out, ids=None, min_confidence: float = 0.0, class_thresholds=None,
                 min_annotator_confidence: float = 0.0, group_table=None, device: str = "auto",
                 member: str | None = None, force: bool = False, progress: bool = True) -> PseudoResult:
    """Predict the candidates (default: every cached id the run did not train on) with a stage-1 run and
    keep the clips where it agrees with the annotator; write ``out`` + its meta sidecar."""
    from extract.annotator import AnnotatorError, load_annotator
    from extract.outputs import check_output
    from models.data import first_few
    from models.fitting import Notes
    from models.predicting import predict

    note = Notes()
    check_output(out, "pseudo-label", [meta_path(out)], force)
    for name, value in (("--min-confidence", min_confidence), ("--min-annotator-confidence", min_annotator_confidence)):
        if not 0.0 <= float(value) <= 1.0:
            raise PseudoError(f"{name} {value}: must be in [0, 1]")
    try:
        ann = load_annotator(annotator)
    except AnnotatorError as exc:
        raise PseudoError(str(exc)) from None
    for problem in ann.problems[:5]:
        note(problem)
    pred = predict(run_dir, cache, ids, group_table, device, False, progress)
    note.extend(pred.notes)
    run, pids = pred.run, pred.ids
    train = set(run.labels())
    overlap = [cid for cid in pids if cid in train]
    if ids is not None and overlap:
        note(f"{ids if isinstance(ids, (str, Path)) else '--ids'}: {len(overlap)} ids are labeled training clips "
             f"of {run_dir} (first: {first_few(overlap)}); they are not candidates")
    keep = [i for i, cid in enumerate(pids) if cid not in train]
    member = member or run.routed_member()
    if member not in pred.probs:
        raise PseudoError(f"--member {member!r} is not a member of {run_dir}")
    cand = [pids[i] for i in keep]
    if not cand:
        raise PseudoError(f"no candidate clip: every cached id of {run_dir}'s features is a labeled training clip")
    have = set(pids)
    missing = [cid for cid in ann.answers if cid not in have and cid not in train]
    if missing:
        note(f"{annotator}: {len(missing)} annotator ids have no features in cache {cache} "
             f"(first: {first_few(missing)}); they are ignored")
    classes = list(run.classes)
    thresholds = parse_class_thresholds(class_thresholds, classes)
    sel = select(cand, pred.probs[member][keep], classes, ann, min_confidence, thresholds, min_annotator_confidence)
    if sel.counts["annotator_answers"] == 0:
        raise PseudoError(f"{annotator}: no answer for any of the {len(cand)} candidate clips "
                          f"(first candidates: {first_few(cand)}); do the names match the clip ids?")
    if sel.counts["kept"] == 0:
        raise PseudoError(f"empty agreement: the model and {annotator} agree on {sel.counts['agree']} of "
                          f"{len(cand)} clips and none passes the thresholds (--min-confidence {min_confidence}, "
                          f"--class-thresholds {class_thresholds or '-'}, --min-annotator-confidence "
                          f"{min_annotator_confidence}); lower them or check the annotator's classes")
    meta = {"stage1_run": str(Path(run_dir).resolve()), "cache": str(cache), "member": member,
            "annotator": str(Path(annotator).resolve()), "min_confidence": min_confidence,
            "class_thresholds": thresholds, "min_annotator_confidence": min_annotator_confidence,
            "ids": None if ids is None or not isinstance(ids, (str, Path)) else str(ids),
            "group_table": None if group_table is None else str(group_table)}
    write_pseudo(out, sel, meta)
    return PseudoResult(Path(out), sel, list(note))
