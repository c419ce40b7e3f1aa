"""Training on the feature cache: expert heads, the MoE router, the attention baseline, CV.

The Python API of this stage (imported on first use, so ``import models`` stays cheap)::

    from models import fit, predict, pseudo_label, FitConfig
"""
from __future__ import annotations

import importlib

_API = {"fit": "models.fitting", "FitConfig": "models.fitting", "FitResult": "models.fitting",
        "predict": "models.predicting", "Prediction": "models.predicting",
        "pseudo_label": "models.pseudo", "PseudoResult": "models.pseudo",
        "open_run": "models.run_dir", "Run": "models.run_dir", "InputError": "models.data"}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
