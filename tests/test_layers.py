"""The import layering of ARCHITECTURE.md holds, and its drawing of the imports is current.

    extract  <-  models  <-  ensemble  <-  cli.py        (an arrow: "is imported by")

``python tests/test_layers.py`` prints the drawing (package -> packages it imports, with the modules
that do it); the test fails when ARCHITECTURE.md's copy is out of date."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("extract", "models", "ensemble")
ALLOWED = {"extract": set(), "models": {"extract"}, "ensemble": {"extract", "models"}}


def imports_of(path: Path) -> set[str]:
    """Top-level names of the project imported by one module (absolute and relative imports, at any depth)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = path.relative_to(ROOT).parts[0] if len(path.relative_to(ROOT).parts) > 1 else None
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.add(pkg)
            elif node.module:
                out.add(node.module.split(".")[0])
    return {m for m in out if m in (*PACKAGES, "cli")}


def graph() -> dict[str, dict[str, set[str]]]:
    """package -> {imported package: {modules that import it}}."""
    g: dict[str, dict[str, set[str]]] = {p: defaultdict(set) for p in PACKAGES}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for target in imports_of(path) - {pkg}:
                g[pkg][target].add(mod)
    return g


def drawing() -> str:
    g = graph()
    lines = ["cli.py ──► ensemble ──► models ──► extract", ""]
    for pkg in PACKAGES:
        deps = g[pkg]
        lines.append(f"{pkg} imports: " + (", ".join(sorted(deps)) or "nothing of the project"))
        for target in sorted(deps):
            lines.append(f"    {target:<9}<- " + ", ".join(sorted(m.split('.', 1)[1] for m in deps[target])))
    return "\n".join(lines)


def test_models_never_imports_ensemble_and_no_library_module_imports_the_cli():
    g = graph()
    for pkg, deps in g.items():
        bad = {t: sorted(m) for t, m in deps.items() if t not in ALLOWED[pkg]}
        assert not bad, f"{pkg} may import only {sorted(ALLOWED[pkg]) or 'nothing'} of the project: {bad}"


def test_architecture_md_shows_the_current_imports():
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert drawing() in text, "ARCHITECTURE.md's import drawing is out of date; `python tests/test_layers.py` " \
                              "prints the current one:\n" + drawing()


def test_click_modules_only_parse_and_print():
    """Library modules do not import click; only cli_* modules (and cli.py) do."""
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name.startswith("cli_"):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert "click" not in names, f"{path.relative_to(ROOT)} imports click: library code must not"


if __name__ == "__main__":
    print(drawing())
