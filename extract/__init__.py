"""The extract stage: decode each clip once, run feature extractors, cache the results.

``from extract import extract, ExtractConfig`` gives the Python API (see :mod:`extract.api`); the
names are loaded on first use (PEP 562), so ``import extract`` alone imports nothing heavy.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "extract": "extract.api",
    "ExtractConfig": "extract.api",
    "Summary": "extract.runner",
    "UsageError": "extract.runner",
    "read_features": "extract.cache",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
