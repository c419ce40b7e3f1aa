"""librosa's numba helpers compile under a machine-wide lock (extract/librosa_import.py)."""
from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SLOW_MODULE = """
import os, time
start = time.time()
time.sleep(1.0)  # stands for numba compiling into its cache
with open(os.environ["IMPORT_LOG"], "a") as f:
    f.write(f"{start} {time.time()}\\n")
"""


def test_two_processes_import_one_after_the_other(tmp_path):
    """Two processes importing a slow module through locked_import at the same moment: the imports
    do not overlap in time (without the lock both sleep at once)."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "slowmod.py").write_text(SLOW_MODULE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "mods"), str(ROOT)]),
               NUMBA_CACHE_DIR=str(tmp_path), IMPORT_LOG=str(tmp_path / "log"))
    code = "from extract.librosa_import import locked_import; locked_import('slowmod')"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    spans = sorted(tuple(map(float, line.split())) for line in (tmp_path / "log").read_text().splitlines())
    assert len(spans) == 2
    assert spans[1][0] >= spans[0][1], spans
    assert any(p.name.startswith("moe-emotion-numba-") for p in tmp_path.iterdir())


def test_a_cache_folder_not_made_yet_gets_the_lock_and_an_unwritable_one_imports_without(tmp_path, monkeypatch):
    from extract import librosa_import

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "not" / "made"))
    monkeypatch.delitem(sys.modules, "json.tool", raising=False)
    assert librosa_import.locked_import("json.tool").__name__ == "json.tool"
    assert librosa_import.lock_path().exists()  # the folder was made and the lock taken there
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "file" / "sub"))  # under a file: no folder possible
    monkeypatch.delitem(sys.modules, "json.tool", raising=False)
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("moe.extract")  # the CLI's logging setup may stop it propagating
    logger.addHandler(handler)
    try:
        assert librosa_import.locked_import("json.tool").__name__ == "json.tool"
    finally:
        logger.removeHandler(handler)
    assert any("no lock for numba's cache" in m for m in seen), seen


def test_package_imports_librosa_only_through_the_lock():
    """No module of the package imports librosa directly (a direct import compiles unlocked)."""
    offenders = []
    for path in ROOT.glob("*/**/*.py"):
        if path.parts[len(ROOT.parts)] in ("tests", "bench") or path.name == "librosa_import.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "librosa" or n.startswith("librosa.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
