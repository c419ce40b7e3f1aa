"""`jsonl` provider: import answers made elsewhere (another machine, a batch job, a web UI).

One JSON object per line: ``name`` (clip id or file stem), ``label``, and optionally ``scores``
({class: number}) and ``reasoning``. Each answer goes through the same checks as a live model's
(label among the classes ...). A clip without a line is a recorded failure ("no answer"); an
unreadable line is named (file:line) in the failure of its clip when its name can be read, and
counted in the provenance otherwise. The file's sha256 is part of the cache key: an edited file
gives a new feature set.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import Provider, Reply, Request, VLMCallError, VLMError, register_provider


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
        with open(path, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    name = str(obj["name"]).strip()
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    self.unreadable += 1
                    name = _name_guess(line)
                    if name:
                        self.problems[name] = f"{path}:{n}: unreadable line ({type(exc).__name__}: {exc})"
                    continue
                self.answers[name] = line.strip()

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
