"""Reading the small name-keyed CSV files users hand in (labels, transcripts, pseudo-labels, groups).

One reader, so that every such file gets the same handling: UTF-8 with or without a BOM (Excel),
a clear error naming the file when it is missing, unreadable or lacks a required column, and the
caller's own exception type so that each command reports it the way it reports its other errors.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path


def read_rows(path: str | os.PathLike, required: tuple[str, ...] = (), error: type[Exception] = ValueError,
              what: str = "CSV file", hint: str = "") -> tuple[list[str], list[dict]]:
    """-> (column names, rows as dicts). Raises ``error`` with the file's name and what to do."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist" + (f" ({hint})" if hint else ""))
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = list(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise error(f"{path} cannot be read as a UTF-8 CSV file ({exc})") from exc
    missing = [c for c in required if c not in cols]
    if missing:
        raise error(f"{path}: needs the column(s) {', '.join(required)}; missing {', '.join(missing)} "
                    f"(has: {', '.join(cols) or 'none'})")
    return cols, rows
