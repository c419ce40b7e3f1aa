"""`jsonl` provider: import answers made elsewhere (another machine, a batch job, a web UI).

One JSON object per line: ``name`` (clip id or file stem), ``label``, and optionally ``scores``
({class: number}) and ``reasoning``. Each answer goes through the same checks as a live model's
(label among the classes ...). A clip without a line is a recorded failure ("no answer"); an
unreadable line is named (file:line) in the failure of its clip when its name can be read, and
counted in the provenance otherwise (as is a line longer than ``MAX_LINE_CHARS`` or nested deeper
than 64 levels; a file that is not UTF-8 is a VLMError naming it). The file's sha256 is part of the cache key: an edited file
gives a new feature set.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..safeio import bounded_lines, clip, loads_json
from . import Provider, Reply, Request, VLMCallError, VLMError, register_provider

MAX_LINE_CHARS = 1_000_000  # a longer line is counted as unreadable


@register_provider
class JsonlProvider(Provider):
    name = "jsonl"
    needs = ()  # nothing to decode: answers exist already

    def _file(self) -> Path:
        if not self.config.path:
            raise VLMError("provider=jsonl needs path=ANSWERS.jsonl")
        path = Path(self.config.path)
        if not path.is_file():
            raise VLMError(f"answers file {path} does not exist")
        return path

    def open(self):
        path = self._file()
        self.answers: dict[str, str] = {}
        self.problems: dict[str, str] = {}
        self.unreadable = 0
        try:
            with open(path, encoding="utf-8-sig") as fh:
                for n, line in bounded_lines(fh, MAX_LINE_CHARS):
                    if line is None:
                        self.unreadable += 1
                        continue
                    if not line.strip():
                        continue
                    try:
                        obj = loads_json(line, ValueError, "line", max_chars=MAX_LINE_CHARS)
                        name = str(obj["name"]).strip()
                    except (ValueError, KeyError, TypeError) as exc:
                        self.unreadable += 1
                        name = _name_guess(line)
                        if name:
                            self.problems[name] = f"{path}:{n}: unreadable line ({type(exc).__name__}: {clip(exc)})"
                        continue
                    self.answers[name] = line.strip()
        except UnicodeDecodeError as exc:
            raise VLMError(f"answers file {path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None

    def ask(self, request: Request) -> Reply:
        cid = request.clip_id
        line = self.answers.get(cid) or self.answers.get(cid.rsplit("/", 1)[-1])
        if line is None:
            problem = self.problems.get(cid) or self.problems.get(cid.rsplit("/", 1)[-1])
            raise VLMCallError(problem or f"no answer for this clip in {self.config.path}")
        obj = json.loads(line)
        return Reply(text=line, model=str(obj.get("model") or f"imported:{Path(self.config.path).name}"))

    def key_extra(self):
        return {"answers_sha256": hashlib.sha256(self._file().read_bytes()).hexdigest()}

    def provenance(self):
        return {"provider": self.name, "answers_file": str(self.config.path), **self.key_extra()}


def _name_guess(line: str) -> str | None:
    import re

    m = re.search(r'"name"\s*:\s*"([^"]+)"', line)
    return m.group(1) if m else None
