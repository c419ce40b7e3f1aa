"""Outside annotator answers (a VLM such as Gemini, or any zero-shot model) for re-ranking.

Two file formats, chosen by extension:

* JSONL (``.jsonl``/``.json``): one object per line with ``name``, ``label`` and optionally
  ``scores`` ({class: score}, any scale) and ``confidence``. Confidence is ``confidence`` when
  given, else the label's share of the summed scores (scores of any scale work: 0-1, 0-10, 0-100),
  else 1.
* CSV: ``name,label[,confidence]``; without a confidence column every answer counts as 1.

Labels are matched to the classes case-insensitively. Answers whose label is not one of the
classes (e.g. "surprise" from a 7-class model when the task has 5) are kept but flagged, so rules
ignore them and can count them. Unreadable lines are skipped, counted and named (file and line);
a JSON line longer than ``MAX_LINE_CHARS`` or nested deeper than ``MAX_DEPTH`` is such a line.
A file that is not UTF-8 is an :class:`AnnotatorError`. Strings from the file quoted in a problem
are cut to a few hundred characters.

This module owns the format: :func:`write_annotator` writes it (``export-annotator``) and
:func:`load_annotator` reads it (``pseudo-label``, ``ensemble``).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from extract.safeio import bounded_lines, clip, loads_json
from extract.tables import read_rows

MAX_LINE_CHARS = 1_000_000  # a JSONL line longer than this is a problem of that line
MAX_DEPTH = 64  # deeper JSON nesting is a problem of that line


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
            raise ValueError(f"confidence {clip(repr(obj['confidence']))} is not in [0, 1]")
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
    try:
        with open(path, "rb") as fh:
            for lineno, raw in bounded_lines(fh, MAX_LINE_CHARS):
                try:
                    line = None if raw is None else raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise AnnotatorError(f"annotator file {path} is not UTF-8 text (line {lineno}: byte "
                                         f"0x{raw[exc.start]:02x} at column {exc.start + 1}); save it as UTF-8"
                                         ) from None
                _read_line(path, lineno, line, answers, problems)
    except OSError as exc:
        raise AnnotatorError(f"annotator file {path} cannot be read: {exc.strerror or exc}") from None
    return Annotator(path, answers, problems)


def _read_line(path: Path, lineno: int, line: str | None, answers: dict, problems: list) -> None:
    if line is None:
        problems.append(f"{path}:{lineno}: line longer than {MAX_LINE_CHARS:,} bytes")
        return
    line = line.strip()
    if not line:
        return
    try:
        obj = loads_json(line, ValueError, "line", max_chars=MAX_LINE_CHARS, max_depth=MAX_DEPTH)
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
    except (ValueError, TypeError, OverflowError) as exc:
        problems.append(f"{path}:{lineno}: {clip(exc)}")


def _read_csv(path: Path) -> Annotator:
    answers: dict[str, Answer] = {}
    problems: list[str] = []
    cols, rows = read_rows(path, (), AnnotatorError, "annotator file")
    if "name" not in cols or "label" not in cols:
        raise AnnotatorError(f"annotator file {path} has header {clip(','.join(cols))}; "
                             "expected name,label[,confidence]")
    for lineno, row in enumerate(rows, 2):
        name, label = (row.get("name") or "").strip(), (row.get("label") or "").strip()
        if not name or not label:
            problems.append(f"{path}:{lineno}: empty name or label")
            continue
        try:
            conf = _confidence({"confidence": row.get("confidence") or None}, label)
        except (ValueError, TypeError) as exc:
            problems.append(f"{path}:{lineno}: {clip(exc)}")
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


WRITABLE = (".jsonl", ".json", ".ndjson", ".csv")


def write_annotator(path, rows) -> int:
    """Write an annotator file that :func:`load_annotator` reads back exactly; the format follows
    the extension as for reading. Returns the number of answers written.

    ``rows``: mappings with ``name`` and ``label`` (non-empty strings) and optionally ``scores``
    ({class: number}), ``confidence`` (0-1) and ``reasoning``. JSONL keeps each of these that is not
    None; CSV writes ``name,label,confidence`` with the confidence the reader would have derived
    (given, else the label's share of the scores, else 1). Written atomically (tmp + rename).
    """
    from extract.cache import atomic_open

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITABLE:
        raise AnnotatorError(f"annotator file {path}: unknown format {path.suffix!r}; use {', '.join(WRITABLE)}")
    written = 0
    with atomic_open(path, newline="" if suffix == ".csv" else None) as fh:
        out = csv.writer(fh) if suffix == ".csv" else None
        if out is not None:
            out.writerow(["name", "label", "confidence"])
        for i, row in enumerate(rows, 1):
            name, label = row.get("name"), row.get("label")
            if not isinstance(name, str) or not name.strip() or not isinstance(label, str) or not label.strip():
                raise AnnotatorError(f"annotator file {path}: answer {i} needs a non-empty name and label "
                                     f"(got name {clip(repr(name), 80)}, label {clip(repr(label), 80)})")
            if out is not None:
                try:
                    conf = _confidence(row, label.strip())
                except (ValueError, TypeError) as exc:
                    raise AnnotatorError(f"annotator file {path}: answer {i} ({clip(name, 80)}): {clip(exc)}") from None
                out.writerow([name, label, repr(conf)])
            else:
                line = {"name": name, "label": label}
                line.update({k: row.get(k) for k in ("scores", "confidence", "reasoning")
                             if row.get(k) is not None})
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            written += 1
    return written


def export_answers(cache_dir, out, feature: str = "vlm", with_reasoning: bool = False, force: bool = False) -> dict:
    """Cached VLM answers -> an annotator file (what ``cli.py export-annotator`` does), with a provenance
    sidecar ``<out>.meta.json`` (the cache, feature key, model). An existing ``out`` that export-annotator
    did not write is refused unless ``force``. Returns {written, failed, key, out, meta}."""
    import time

    from extract.cache import CacheError, FeatureCache, atomic_open
    from extract.outputs import WRITTEN_BY, check_output

    out = Path(out)
    sidecar = Path(f"{out}.meta.json")
    check_output(out, "export-annotator", [sidecar], force)
    cache = FeatureCache(cache_dir)
    key = cache.resolve(feature)
    fs = cache.feature_set(key)
    if fs.kind != "record" or fs.meta.get("modality") not in (None, "knowledge"):
        raise CacheError(f"feature {key} in {cache_dir} is not VLM answers (kind {fs.kind}, modality "
                         f"{fs.meta.get('modality')}); pass --feature vlm or a vlm-... key")
    ids = sorted(fs.done_ids())
    batch = fs.read(ids)
    rows = ({"name": cid, "label": rec["label"], "scores": rec.get("scores"),
             "reasoning": rec.get("reasoning") if with_reasoning else None}
            for cid, rec in zip(ids, batch.data) if rec and rec.get("label") is not None)
    written = write_annotator(out, rows)
    failed = len(fs.failures())
    meta = {WRITTEN_BY: "export-annotator", "cache": str(cache_dir), "feature": key,
            "model": fs.meta.get("model"), "config": fs.meta.get("config"), "answers": written,
            "clips_without_answer": failed, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_open(sidecar) as fh:
        json.dump(meta, fh, indent=1, default=str)
    return {"written": written, "failed": failed, "key": key, "out": out, "meta": sidecar}
