"""The VLM prompt: a text file a user can replace, filled with the class list and the transcript.

Placeholders (``string.Template`` syntax, so JSON braces in the file need no escaping):

- ``$classes``: the class names, comma separated, in the configured order;
- ``$scores_example``: ``{"neutral": 0.0, "angry": 0.0, ...}`` over those classes;
- ``$preference``: the tie-break rule, e.g. "worried" yields when sad, surprise or neutral are
  close (empty when the yielding class is not among the classes);
- ``$transcript``: the clip's subtitles, or "(none)".

The prompt hash identifies the template as filled with the classes and the preference (everything
but the per-clip transcript); it is stored with every answer and is part of the cache key, so an
edited prompt file never mixes with answers to the old one.
"""
from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
DEFAULT_PROMPT = PROMPTS / "vlm_emotion.txt"
DEFAULT_CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")


def split_classes(text: str | None) -> tuple[str, ...]:
    """``"neutral;angry;happy"`` -> the names, stripped, empty ones dropped (``|`` works as ``;``)."""
    return tuple(c.strip() for c in (text or "").replace("|", ";").split(";") if c.strip())


def parse_classes(text: str) -> tuple[str, ...]:
    """``"neutral;angry;happy"`` -> classes. ``;`` separates (``,`` separates SPEC options)."""
    classes = split_classes(text)
    if len(classes) < 2:
        raise ValueError(f"classes needs at least two names separated by ';', got {text!r}")
    if len({c.lower() for c in classes}) != len(classes):
        raise ValueError(f"classes has duplicates: {text!r}")
    return classes


def preference_rule(classes, yield_class: str | None, yield_to) -> str:
    if not yield_class or yield_class not in classes:
        return ""
    others = [c for c in yield_to if c in classes and c != yield_class]
    if not others:
        return ""
    names = ", ".join(f'"{c}"' for c in others[:-1]) + (" or " if len(others) > 1 else "") + f'"{others[-1]}"'
    return (f'Preference: "{yield_class}" has a lower priority than the other classes. When {names} '
            f'scores close to "{yield_class}", choose that class instead of "{yield_class}".')


@dataclass
class Prompt:
    template: str
    classes: tuple[str, ...]
    preference: str
    source: str

    def fixed(self) -> str:
        """The prompt with everything filled but the transcript."""
        scores = json.dumps({c: 0.0 for c in self.classes})
        return string.Template(self.template).safe_substitute(
            classes=", ".join(self.classes), scores_example=scores, preference=self.preference)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.fixed().encode("utf-8")).hexdigest()[:16]

    def render(self, transcript: str | None) -> str:
        text = (transcript or "").strip() or "(none)"
        return string.Template(self.fixed()).safe_substitute(transcript=text)


def load_prompt(path: str | None, classes, yield_class: str | None = "worried",
                yield_to=("sad", "surprise", "neutral")) -> Prompt:
    file = Path(path) if path else DEFAULT_PROMPT
    if not file.is_file():
        raise FileNotFoundError(f"prompt file {file} does not exist; pass prompt=PATH to a text file "
                                f"(start from {DEFAULT_PROMPT})")
    template = file.read_text(encoding="utf-8")
    if "$transcript" not in template:
        raise ValueError(f"prompt file {file} has no $transcript placeholder (see {DEFAULT_PROMPT})")
    return Prompt(template, tuple(classes), preference_rule(classes, yield_class, yield_to), str(file))
