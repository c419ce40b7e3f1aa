"""One channel for the tool's warnings and notes: the ``moe`` loggers (``moe.extract``, ``moe.models``,
``moe.ensemble``). The CLI prints them (``warning: ...``, ``note: ...`` with --verbose); a notebook sees
them through logging and in the results' ``notes``. Other libraries' log records (transformers,
absl, ...) reach the terminal only with --verbose."""
from __future__ import annotations

import logging
import sys

LOGGER = "moe"


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (click's test runner swaps it per call)."""

    _moe_cli = True

    def emit(self, record):
        try:
            prefix = {logging.WARNING: "warning", logging.INFO: "note"}.get(record.levelno,
                                                                            record.levelname.lower())
            msg = record.getMessage() if record.name.startswith(LOGGER) else self.format(record)
            sys.stderr.write(f"{prefix}: {msg}\n" if record.name.startswith(LOGGER) else msg + "\n")
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


_verbose = False


def setup_cli_logging(verbose: bool | None = None) -> None:
    """The CLI's handlers (idempotent): the tool's warnings to stderr (notes too with ``verbose``);
    other libraries' records only with ``verbose``. ``None`` keeps the current verbosity."""
    global _verbose
    if verbose is not None:
        _verbose = verbose
    ours = logging.getLogger(LOGGER)
    if not any(getattr(h, "_moe_cli", False) for h in ours.handlers):
        ours.addHandler(_Stderr())
    ours.setLevel(logging.INFO if _verbose else logging.WARNING)
    ours.propagate = False
    root = logging.getLogger()
    mine = [h for h in root.handlers if getattr(h, "_moe_cli", False)]
    if _verbose and not mine:
        root.addHandler(_Stderr())
    elif not _verbose:
        for h in mine:
            root.removeHandler(h)
        if not root.handlers:
            root.addHandler(logging.NullHandler())  # no "last resort" printing of other libraries' warnings
