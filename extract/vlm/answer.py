"""Reading a VLM's answer: JSON with ``reasoning``, ``scores`` (one per class) and ``label``.

Lenient about the wrapping (a ```json fence, text around the object), strict about the content:
text that holds no JSON object, or a label outside the classes, is an :class:`AnswerError` whose
message keeps the raw text (it becomes the recorded failure reason).
"""
from __future__ import annotations

import json
import math
import re

from ..safeio import loads_json

RAW_LIMIT = 4000  # characters of raw text kept in a failure reason


class AnswerError(ValueError):
    pass


def _raw(text: str) -> str:
    return text if len(text) <= RAW_LIMIT else text[:RAW_LIMIT] + f"... [{len(text) - RAW_LIMIT} more characters]"


def find_json(text: str):
    """The first JSON object in ``text`` (a fenced block, the whole text, or the outermost {...})."""
    candidates = []
    fence = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)
    if fence:
        candidates.append(fence.group(1))
    candidates.append(text.strip())
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for c in candidates:
        try:
            value = loads_json(c, ValueError, "answer")  # depth-limited: a deeply nested answer is no crash
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise AnswerError(f"answer is not a valid JSON object; raw: {_raw(text)!r}")


def parse_answer(text: str | None, classes) -> dict:
    """-> {"reasoning", "scores" {class: float}, "label", "notes"}; raises AnswerError."""
    if text is None or not text.strip():
        raise AnswerError("empty answer")
    obj = find_json(text)
    lower = {c.lower(): c for c in classes}
    notes = []
    scores_in = obj.get("scores")
    scores: dict[str, float] = {}
    if isinstance(scores_in, dict):
        for k, v in scores_in.items():
            c = lower.get(str(k).strip().lower())
            try:
                f = float(v)
            except (TypeError, ValueError):
                f = math.nan
            if c is None:
                notes.append(f"score for unknown class {k!r} ignored")
            elif not math.isfinite(f):
                notes.append(f"score for {c!r} is not a number: {v!r}")
            else:
                scores[c] = f
        missing = [c for c in classes if c not in scores]
        if missing:
            notes.append("no score for " + ", ".join(missing) + " (set to 0)")
            scores.update({c: 0.0 for c in missing})
        scores = {c: scores[c] for c in classes}
    elif scores_in is not None:
        raise AnswerError(f"'scores' is not an object; raw: {_raw(text)!r}")
    label_in = obj.get("label")
    if label_in is None or (isinstance(label_in, str) and not label_in.strip()):
        if not scores:
            raise AnswerError(f"answer has neither a label nor scores; raw: {_raw(text)!r}")
        label = max(scores, key=scores.get)
        notes.append("label taken from the highest score")
    else:
        label = lower.get(str(label_in).strip().lower())
        if label is None:
            raise AnswerError(f"answer names an unknown class {label_in!r} (classes: {', '.join(classes)}); "
                              f"raw: {_raw(text)!r}")
    reasoning = obj.get("reasoning", obj.get("analysis", ""))
    if not isinstance(reasoning, str):
        reasoning = json.dumps(reasoning, ensure_ascii=False)
    return {"reasoning": reasoning, "scores": scores or None, "label": label, "notes": notes}
