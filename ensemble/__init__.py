"""Voting, re-ranking and evaluation over the RUN_DIRs that ``fit`` publishes.

The Python API of this stage (imported on first use, so ``import ensemble`` stays cheap)::

    from ensemble import ensemble, evaluate, EnsembleConfig, export_bundle, Recogniser
"""
from __future__ import annotations

import importlib

_API = {"ensemble": "ensemble.api", "evaluate": "ensemble.api", "EnsembleConfig": "ensemble.api",
        "EnsembleResult": "ensemble.api", "EvaluationResult": "ensemble.api",
        "Recogniser": "ensemble.recogniser", "Recognition": "ensemble.recogniser",
        "export_bundle": "ensemble.bundle", "open_bundle": "ensemble.bundle"}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ensemble' has no attribute {name!r}")
