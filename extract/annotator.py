"""Outside annotator answers (a VLM such as Gemini, or any zero-shot model) for re-ranking.

Two file formats, chosen by extension:

* JSONL (``.jsonl``/``.json``): one object per line with ``name``, ``label`` and optionally
  ``scores`` ({class: score}, any scale) and ``confidence``. Confidence is ``confidence`` when
  given, else the label's share of the summed scores (scores of any scale work: 0-1, 0-10, 0-100),
  else 1.
* CSV: ``name,label[,confidence]``; without a confidence column every answer counts as 1.

Labels are matched to the classes case-insensitively. Answers whose label is not one of the
classes (e.g. "surprise" from a 7-class model when the task has 5) are kept but flagged, so rules
ignore them and can count them. Unreadable lines are skipped, counted and named (file and line).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from extract.tables import read_rows


class AnnotatorError(ValueError):
    """The annotator file cannot be used at all (missing, wrong columns)."""


@dataclass
class Answer:
    label: str
    confidence: float
    scores: dict | None = None


@dataclass
class Annotator:
    path: Path
    answers: dict[str, Answer]
    problems: list[str] = field(default_factory=list)  # "file:line: reason"

    def align(self, ids, classes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For ``ids``: (class index or -1, confidence or NaN, answered-but-outside-classes flag)."""
        cidx = {c.lower(): i for i, c in enumerate(classes)}
        lab = np.full(len(ids), -1, np.int64)
        conf = np.full(len(ids), np.nan)
        outside = np.zeros(len(ids), bool)
        for i, n in enumerate(ids):
            a = self.answers.get(n)
            if a is None:
                continue
            j = cidx.get(a.label.lower())
            if j is None:
                outside[i] = True
                continue
            lab[i] = j
            conf[i] = a.confidence
        return lab, conf, outside

    def summary(self, classes) -> dict:
        cl = {c.lower() for c in classes}
        outside = sum(1 for a in self.answers.values() if a.label.lower() not in cl)
        return {"path": str(self.path), "answers": len(self.answers), "outside_classes": outside,
                "problems": len(self.problems)}


def _confidence(obj: dict, label: str) -> float:
    if obj.get("confidence") is not None:
        c = float(obj["confidence"])
        if not (math.isfinite(c) and 0 <= c <= 1):
            raise ValueError(f"confidence {obj['confidence']!r} is not in [0, 1]")
        return c
    scores = obj.get("scores")
    if isinstance(scores, dict) and scores:
        vals = [float(v) for v in scores.values()]
        total = sum(vals)
        if not math.isfinite(total) or min(vals) < 0:
            raise ValueError("scores must be finite and >= 0")
        mine = scores.get(label)
        if mine is None:
            low = label.lower()
            mine = next((v for k, v in scores.items() if str(k).lower() == low), 0.0)
        return float(mine) / total if total > 0 else 0.0
    return 1.0


def _read_jsonl(path: Path) -> Annotator:
    answers: dict[str, Answer] = {}
    problems: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                name, label = obj.get("name"), obj.get("label")
                if not isinstance(name, str) or not name.strip():
                    raise ValueError("no 'name'")
                if not isinstance(label, str) or not label.strip():
                    raise ValueError("no 'label'")
                label = label.strip()
                answers[name.strip()] = Answer(label, _confidence(obj, label),
                                               obj.get("scores") if isinstance(obj.get("scores"), dict) else None)
            except (ValueError, TypeError) as exc:
                problems.append(f"{path}:{lineno}: {exc}")
    return Annotator(path, answers, problems)


def _read_csv(path: Path) -> Annotator:
    answers: dict[str, Answer] = {}
    problems: list[str] = []
    cols, rows = read_rows(path, (), AnnotatorError, "annotator file")
    if "name" not in cols or "label" not in cols:
        raise AnnotatorError(f"annotator file {path} has header {','.join(cols)}; expected name,label[,confidence]")
    for lineno, row in enumerate(rows, 2):
        name, label = (row.get("name") or "").strip(), (row.get("label") or "").strip()
        if not name or not label:
            problems.append(f"{path}:{lineno}: empty name or label")
            continue
        try:
            conf = _confidence({"confidence": row.get("confidence") or None}, label)
        except (ValueError, TypeError) as exc:
            problems.append(f"{path}:{lineno}: {exc}")
            continue
        answers[name] = Answer(label, conf)
    return Annotator(path, answers, problems)


READERS = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".ndjson": _read_jsonl, ".csv": _read_csv}


def load_annotator(path) -> Annotator:
    path = Path(path)
    if not path.is_file():
        raise AnnotatorError(f"annotator file {path} does not exist")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise AnnotatorError(f"annotator file {path}: unknown format {path.suffix!r}; use "
                             f"{', '.join(READERS)} (JSONL name,label,scores or CSV name,label[,confidence])")
    ann = reader(path)
    if not ann.answers:
        raise AnnotatorError(f"annotator file {path} has no usable answer"
                             + (f" ({ann.problems[0]})" if ann.problems else ""))
    return ann
