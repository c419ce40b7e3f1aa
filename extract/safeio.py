"""Bounded reading of user-supplied structured text, and what may be quoted back to the user.

Every YAML or JSON file a user hands in (rules, the configs inside a RUN_DIR, annotator lines) is
read through here, so that a small hostile or broken file cannot take the machine down:

* YAML: a size limit, and no anchors or aliases at all. An alias bomb ("billion laughs": nine
  anchors each repeating the one before nine times) is a 400-byte file that expands to ~10^9 nodes
  once anything walks it; refusing ``&``/``*`` is the only limit that cannot be got round, and the
  files we read (rules, configs) never need them. :func:`dumps_yaml` writes YAML that never uses
  them, so what this package writes it can read back.
* JSON: a length limit and a nesting-depth limit, checked by a scan of the brackets outside
  strings before parsing, so a line nested 10,000 deep is a clear error, not a RecursionError.
* :func:`clip` cuts user content quoted in an error message; :func:`redact` removes API keys and
  anything shaped like one from text that came back from a remote service.

Errors are raised as the caller's exception type, with a message naming the file and the cause.
"""
from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import yaml

YAML_MAX_BYTES = 1_000_000
JSON_MAX_CHARS = 1_000_000
JSON_MAX_DEPTH = 64
CLIP_CHARS = 300
KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
REDACTED = "[REDACTED]"


# -- messages ------------------------------------------------------------------------------------------
def clip(text, n: int = CLIP_CHARS) -> str:
    """``text`` cut to ``n`` characters for an error message: "<first n>... (N more characters)"."""
    text = text if isinstance(text, str) else str(text)
    if len(text) <= n:
        return text
    return f"{text[:n]}... ({len(text) - n} more characters)"


_VALUE = r"[^\s\"'&,;{}\[\]]+"  # never starts a "[REDACTED]" again
_SECRET_PATTERNS = [
    # a header echoed as "x-goog-api-key: V", "x-goog-api-key=V", a dict/JSON entry or a (name, value) pair
    re.compile(r"(x-goog-api-key[\"']?\s*[:=,]\s*[\"']?)(" + _VALUE + ")", re.I),
    # api_key / api-key / apikey / access_token, as "=V" or ": V" (also quoted, as in a dict or JSON)
    re.compile(r"(\b(?:api[_-]?key|access[_-]?token)[\"']?\s*[:=]\s*[\"']?)(" + _VALUE + ")", re.I),
    # a query string (?key=V&...) or a bare key=V
    re.compile(r"(\bkey=)(" + _VALUE + ")", re.I),
    # Authorization: Bearer V / Basic V / V
    re.compile(r"(\bauthorization[\"']?\s*[:=,]\s*[\"']?(?:(?:bearer|basic)\s+)?)(?!(?:bearer|basic)\s)("
               + _VALUE + ")", re.I),
    re.compile(r"(\bbearer\s+)([A-Za-z0-9._~+/=-]+)", re.I),
    # the shape of a Google API key, wherever it appears
    re.compile(r"()(AIza[0-9A-Za-z_-]{30,})"),
]


def secret_values(extra=()) -> list[str]:
    """The API keys in the environment (GEMINI_API_KEY, GOOGLE_API_KEY) and ``extra``, longest first.
    Values shorter than 4 characters are left out: replacing them would garble any text."""
    values = {os.environ.get(v) or "" for v in KEY_VARIABLES} | {str(s) for s in extra if s}
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact(text, secrets=()) -> str:
    """``text`` with every API key replaced by ``[REDACTED]``: the values of GEMINI_API_KEY,
    GOOGLE_API_KEY and ``secrets`` wherever they occur, and the value of anything shaped like
    ``x-goog-api-key: V``, ``x-goog-api-key=V``, ``key=V`` (query strings), ``api_key=V``,
    ``Authorization: Bearer V``, or a Google key (``AIza...``)."""
    if text is None:
        return text
    text = text if isinstance(text, str) else str(text)
    for value in secret_values(secrets):
        text = text.replace(value, REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


# -- YAML ----------------------------------------------------------------------------------------------
class _AliasRefused(yaml.YAMLError):
    def __init__(self, what: str, mark):
        super().__init__(what)
        self.what, self.mark = what, mark


class NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses anchors (``&a``) and aliases (``*a``, ``<<: *a``) as it composes,
    before anything is expanded."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _AliasRefused(f"alias *{event.anchor}", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _AliasRefused(f"anchor &{event.anchor}", event.start_mark)
        return super().compose_node(parent, index)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


def dumps_yaml(data, **kw) -> str:
    """yaml.safe_dump that writes a shared object out again instead of using an anchor and alias,
    so the text is readable by :func:`load_yaml`. Keyword arguments go to ``yaml.dump``."""
    kw.setdefault("sort_keys", False)
    kw.setdefault("allow_unicode", True)
    return yaml.dump(data, Dumper=_NoAliasDumper, **kw)


def loads_yaml(text: str, error: type[Exception] = ValueError, what: str = "YAML text",
               max_chars: int = YAML_MAX_BYTES):
    """Parse YAML text safely (safe_load, no anchors/aliases, at most ``max_chars``). ``what`` names
    the source in messages, e.g. "rules file r.yaml"."""
    if len(text) > max_chars:
        raise error(f"{what} is {len(text):,} characters long; the limit is {max_chars:,}")
    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - NoAliasLoader is a SafeLoader
    except _AliasRefused as exc:
        where = f" (line {exc.mark.line + 1})" if exc.mark is not None else ""
        raise error(f"{what} uses the YAML {exc.what}{where}: anchors and aliases are not allowed here "
                    "(they can expand a small file without bound); write the values out") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be read") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} is not valid YAML: {clip(exc)}") from None


def load_yaml(path, error: type[Exception] = ValueError, what: str = "YAML file",
              max_bytes: int = YAML_MAX_BYTES):
    """Read a user's YAML file: at most ``max_bytes``, UTF-8, no anchors/aliases -> the safe_load
    result. Raises ``error`` with a message naming the file and the cause."""
    path = Path(path)
    name = f"{what} {path}"
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {name}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise error(f"{name} is larger than {max_bytes:,} bytes; a {what} is never that big")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    return loads_yaml(text, error, name, max_chars=max_bytes)


# -- JSON ----------------------------------------------------------------------------------------------
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings (0 for a scalar), without recursion."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    if not brackets:
        return 0
    return max(0, max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets)))


def loads_json(text: str, error: type[Exception] = ValueError, what: str = "JSON text",
               max_chars: int = JSON_MAX_CHARS, max_depth: int = JSON_MAX_DEPTH):
    """json.loads with a length limit and a nesting-depth limit (checked before parsing).
    Raises ``error``: "<what> is nested deeper than 64 levels", "... is not valid JSON (...)"."""
    if len(text) > max_chars:
        raise error(f"{what} is {len(text):,} characters long; the limit is {max_chars:,}")
    depth = json_depth(text)
    if depth > max_depth:
        raise error(f"{what} is nested {depth} levels deep; the limit is {max_depth}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be read") from None
    except ValueError as exc:  # e.g. an integer with too many digits
        raise error(f"{what} is not valid JSON ({clip(exc)})") from None


def bounded_lines(fh, max_len: int = JSON_MAX_CHARS):
    """Lines of a file object (text or binary) as (line number, line, or None when the line is
    longer than ``max_len`` characters/bytes). A too-long line is skipped in chunks, never held in
    memory whole."""
    for lineno in itertools.count(1):
        line = fh.readline(max_len + 1)
        if not line:
            return
        newline = "\n" if isinstance(line, str) else b"\n"
        if len(line) > max_len and not line.endswith(newline):
            while line and not line.endswith(newline):
                line = fh.readline(1 << 20)
            yield lineno, None
            continue
        yield lineno, line
