"""Where a command may write: an output never replaces a file the tool did not write.

Every output of the tool says which command wrote it: a file through its provenance sidecar
(``predictions.meta.json``, ``pseudo.csv.meta.json``, ``probs.csv.meta.json``: ``"written_by"``),
a folder through the record inside it (``run.json`` of a RUN_DIR, ``report.json`` of a report).
:func:`check_output` is called by every command before any work is done: an existing path that
the same command did not write is refused unless ``force``; nothing is ever written into a
RUN_DIR or a feature cache (their owners publish them whole, see models/run_dir.py and
extract/cache.py).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from .errors import UserError

WRITTEN_BY = "written_by"
RUN_RECORD = "run.json"  # the completion record of a RUN_DIR (models/run_dir.py writes it last)
LEGACY_RUN_FILES = ("members.json", "classes.json")  # RUN_DIRs of toolkit 0.1.0, before run.json
SCAN_CHILDREN = 256  # children of the output's folder looked at to recognise a feature cache


class OutputError(UserError):
    """An output path that must not be written (message names the path and what to do)."""


def read_record(path: Path) -> dict | None:
    """A small JSON record (sidecar or folder record); None when absent or unreadable."""
    try:
        if not path.is_file() or path.stat().st_size > 16_000_000:
            return None
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return (path / RUN_RECORD).is_file() or all((path / n).is_file() for n in LEGACY_RUN_FILES)


def is_cache(path: Path) -> bool:
    """A feature cache root: a child feature set (``<key>/meta.json`` naming an extractor)."""
    path = Path(path)
    try:
        with os.scandir(path) as it:
            for k, entry in enumerate(it):
                if k >= SCAN_CHILDREN:
                    break
                if entry.is_dir(follow_symlinks=False):
                    rec = read_record(Path(entry.path) / "meta.json")
                    if rec and "extractor" in rec:
                        return True
    except OSError:
        return False
    return False


def enclosing_tool_folder(path: Path) -> str | None:
    """'RUN_DIR X' / 'feature cache X' when ``path`` lies inside one (checked on its folder and up)."""
    folder = Path(os.path.abspath(path)).parent
    if is_cache(folder):
        return f"feature cache {folder}"
    for d in (folder, *folder.parents):
        if is_run_dir(d):
            return f"RUN_DIR {d}"
        if d != folder and (d / ".lock").is_file() and is_cache(d):
            return f"feature cache {d}"
    return None


def written_by(path: Path, sidecar: Path | None) -> str | None:
    """The command that wrote ``path``, per its sidecar (file) or its record (folder)."""
    rec = read_record(sidecar) if sidecar is not None else None
    return None if rec is None else rec.get(WRITTEN_BY)


def check_output(path, command: str, sidecars=(), force: bool = False, what: str = "--out") -> Path:
    """Refuse ``path`` (and its ``sidecars``, the first of which records the writer) when it exists and
    was not written by ``command``, or when it lies inside a RUN_DIR or a feature cache."""
    path = Path(path)
    sidecars = [Path(s) for s in sidecars]
    inside = enclosing_tool_folder(path)
    if inside:
        raise OutputError(f"{what} {path} is inside {inside}: the tool never writes into a RUN_DIR or a cache "
                          "as an output; choose a path outside it")
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{what} {path} is a folder; give a file path")
    existing = [p for p in (path, *sidecars) if p.exists() or p.is_symlink()]
    if not existing or force:
        return path
    writer = written_by(path, sidecars[0] if sidecars else None)
    if writer == command and not path.is_symlink():
        return path
    how = (f"its sidecar {sidecars[0].name} says `{writer}` wrote it" if writer
           else "nothing says this tool wrote it" if path.exists() else f"{existing[0]} is in the way")
    raise OutputError(f"{what} {path} exists and was not written by `{command}` ({how}): refusing to overwrite "
                      "it; choose another path, or pass --force to replace it")


def check_output_dir(path, command: str, record: str, force: bool = False, what: str = "--out") -> Path:
    """A folder output (a report): absent, empty, or holding ``record`` that names ``command``."""
    path = Path(path)
    inside = enclosing_tool_folder(path / "x")  # the folder itself and every folder above it
    if inside:
        raise OutputError(f"{what} {path} is inside {inside}: choose a folder outside it")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} exists and is not a folder")
    if not path.is_dir() or force or not any(path.iterdir()):
        return path
    if written_by(path, path / record) == command:
        return path
    raise OutputError(f"{what} {path} is a folder that `{command}` did not write (no {record} in it says so): "
                      "refusing to write into it; choose an empty or new folder, or pass --force")


def swap_into_place(new: Path, target: Path, ours=(), logger=None) -> None:
    """The finished folder ``new`` becomes ``target``. A ``target`` that exists (and was checked to be an
    earlier output of the same command) is moved aside first; of it only the files ``ours`` (paths
    relative to it, the ones the tool wrote) are deleted. Anything else in it is kept, in
    ``<target>.previous-<time>``, and said. A kill between the two renames leaves the new output and
    the old one aside, never a mixture."""
    new, target = Path(new), Path(target)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.rename(new, target)  # rename over an empty folder is atomic
        return
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
    old = aside / "previous"
    os.rename(target, old)
    os.rename(new, target)
    for rel in ours:
        f = old / rel
        if ".." not in Path(rel).parts and f.is_file() and not f.is_symlink():
            f.unlink()
    for d in sorted((p for p in old.rglob("*") if p.is_dir() and not p.is_symlink()),
                    key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    try:
        old.rmdir()
    except OSError:
        keep = target.parent / f"{target.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(old, keep)
        if logger is not None:
            logger.warning(f"{target}: the previous output held files the tool did not write; they were kept "
                           f"in {keep}")
    aside.rmdir()
