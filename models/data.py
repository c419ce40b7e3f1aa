"""From the HDF5 cache and a labels CSV to arrays the models train on.

Every feature becomes *tokens per sample*: a ``vector`` feature is one token (n, 1, D); a ``layers``
feature is one token per hidden layer (n, L, D); a ``series`` feature is one token per frame
(n, T, D) with a frame mask (the head prepends a CLS token). Absent ids (not extracted, failed, or a
series with no valid frame) get ``present=False``; the cache's NaN rows are replaced by zeros only
*after* that mask is taken, and the models never use those rows (they are masked, not zero-filled
inputs to a prediction).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from extract.cache import CacheError, FeatureCache
from extract.errors import UserError
from extract.tables import read_rows

TOKEN_KINDS = ("vector", "layers", "series")
MER_CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")   # MER2025 order


class InputError(UserError):
    """Bad input the user must fix; the message names the file/id and what to do."""


@dataclass
class FeatureData:
    """One feature set over a list of ids, as tokens."""

    key: str
    kind: str                      # vector | layers | series
    x: np.ndarray                  # (n, T, D) float32, zeros where not present / masked
    tok_mask: np.ndarray           # (n, T) bool, True on real tokens
    present: np.ndarray            # (n,) bool
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.x.shape[2])

    @property
    def n_tokens(self) -> int:
        return int(self.x.shape[1])

    def take(self, rows) -> "FeatureData":
        return FeatureData(self.key, self.kind, self.x[rows], self.tok_mask[rows], self.present[rows], self.meta)


@dataclass
class Labels:
    """The labeled ids kept for training, with their class index and optional group."""

    path: str
    ids: list[str]
    y: np.ndarray                  # (n,) int
    groups: np.ndarray | None      # (n,) str or None
    all_names: set[str]            # every name in the file (labeled, even if skipped)
    messages: list[str] = field(default_factory=list)


def first_few(items, k=5) -> str:
    """The first ``k`` items for a message, and how many more."""
    items = list(items)
    more = f", ... ({len(items) - k} more)" if len(items) > k else ""
    return ", ".join(map(str, items[:k])) + more


def read_csv_rows(path: str | os.PathLike) -> tuple[list[str], list[dict]]:
    return read_rows(path, (), InputError)


def check_classes(classes, what: str) -> None:
    """A class list names each class once (case and surrounding space ignored), and no class is empty."""
    if classes is None:
        return
    seen: dict[str, str] = {}
    for c in classes:
        key = c.strip().casefold()
        if not key:
            raise InputError(f"{what}: an empty class name")
        if key in seen:
            raise InputError(f"{what}: class {c!r} is given twice" + ("" if seen[key] == c else f" (as {seen[key]!r})"))
        seen[key] = c


def read_labels(path, classes: list[str] | None = None, groups: str | None = None,
                strict: bool = False) -> tuple[Labels, list[str]]:
    """Read ``name,discrete[,...]``. Returns the labels and the class order.

    Classes default to the labels' own set: in the MER order when they all are MER classes, else
    sorted (a stable order either way). Rows with a label outside
    ``classes``, an empty name, or conflicting duplicate labels are skipped with a message
    (``strict`` makes that fatal).
    """
    cols, rows = read_csv_rows(path)
    for need in ("name", "discrete"):
        if need not in cols:
            raise InputError(f"{path}: no '{need}' column (columns: {', '.join(cols) or 'none'}); "
                             "a labels CSV needs name,discrete")
    if groups is not None and groups not in cols:
        raise InputError(f"{path}: --groups {groups!r} is not a column (columns: {', '.join(cols)})")
    msgs: list[str] = []
    seen: dict[str, tuple[str, str | None]] = {}
    conflicts: set[str] = set()
    for r in rows:
        name = (r.get("name") or "").strip()
        lab = (r.get("discrete") or "").strip()
        if not name or not lab:
            continue
        grp = (r.get(groups) or "").strip() if groups else None
        if name in seen and seen[name][0] != lab:
            conflicts.add(name)
        seen.setdefault(name, (lab, grp))
    if conflicts:
        msg = f"{path}: {len(conflicts)} names have conflicting labels (first: {first_few(sorted(conflicts))}); skipped"
        if strict:
            raise InputError(msg)
        msgs.append(msg)
    check_classes(classes, "--classes")
    variants: dict[str, set[str]] = {}
    for lab, _ in seen.values():
        variants.setdefault(lab.casefold(), set()).add(lab)
    clash = sorted(sorted(v) for v in variants.values() if len(v) > 1)
    if clash:
        raise InputError(f"{path}: labels that differ only by case are different classes here: "
                         + "; ".join(" / ".join(v) for v in clash[:5]) + ": spell each class one way")
    if classes is None:
        found = {lab for lab, _ in seen.values()}
        classes = [c for c in MER_CLASSES if c in found] if found <= set(MER_CLASSES) else sorted(found)
    outside = {n: lab for n, (lab, _) in seen.items() if lab not in classes and n not in conflicts}
    if outside:
        counts = Counter(outside.values())
        msg = (f"{path}: {len(outside)} rows have a label outside --classes {','.join(classes)} "
               f"({', '.join(f'{k} x{v}' for k, v in sorted(counts.items()))}; first ids: {first_few(sorted(outside))}); "
               "skipped (add the class to --classes, or fix the labels)")
        if strict:
            raise InputError(msg)
        msgs.append(msg)
    keep = sorted(n for n in seen if n not in conflicts and n not in outside)
    if groups:
        nogroup = [n for n in keep if not seen[n][1]]
        if nogroup:
            raise InputError(f"{path}: {len(nogroup)} rows have an empty --groups column {groups!r} "
                             f"(first: {first_few(nogroup)}); fill it in")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[seen[n][0]] for n in keep], dtype=np.int64)
    grp = np.array([seen[n][1] for n in keep], dtype=object) if groups else None
    return Labels(str(path), keep, y, grp, set(seen), msgs), list(classes)


def read_group_table(path, column: str | None = None) -> dict[str, str]:
    """``name,<group>``: the group column is ``column`` if present, else ``group``, else the second."""
    cols, rows = read_csv_rows(path)
    if "name" not in cols:
        raise InputError(f"{path}: no 'name' column (columns: {', '.join(cols) or 'none'}); "
                         "a group table needs name,group")
    col = column if column in cols else ("group" if "group" in cols else None)
    if col is None:
        others = [c for c in cols if c != "name"]
        if not others:
            raise InputError(f"{path}: no group column next to 'name'")
        col = others[0]
    return {r["name"].strip(): (r.get(col) or "").strip() for r in rows if (r.get("name") or "").strip()
            and (r.get(col) or "").strip()}


def read_id_list(path) -> list[str]:
    """A CSV with a ``name`` column (or a plain list, one id a line)."""
    cols, rows = read_csv_rows(path)
    if "name" in cols:
        return [r["name"].strip() for r in rows if (r.get("name") or "").strip()]
    with open(path, encoding="utf-8-sig") as fh:
        return [line.strip().split(",")[0] for line in fh if line.strip()]


def resolve_features(cache: FeatureCache, names: list[str]) -> list[str]:
    if not cache.keys():
        raise InputError(f"cache {cache.root} holds no feature sets; run `cli.py extract` first or fix --cache")
    keys = []
    for name in names:
        try:
            key = cache.resolve(name)
        except CacheError as exc:
            raise InputError(str(exc)) from None
        kind = cache.feature_set(key).kind
        if kind not in TOKEN_KINDS:
            raise InputError(f"feature {key} in {cache.root} is a {kind!r} (texts/answers), not numbers: "
                             "encode it with a text extractor and pass that key instead")
        if key in keys:
            raise InputError(f"feature {name!r} given twice (resolves to {key})")
        keys.append(key)
    return keys


def cached_ids(cache: FeatureCache, keys: list[str]) -> tuple[set[str], set[str]]:
    """(ids known to any selected feature set (done or failed), ids with a value in at least one)."""
    known: set[str] = set()
    usable: set[str] = set()
    for k in keys:
        fs = cache.feature_set(k)
        done = fs.done_ids()
        usable |= done
        known |= done
        known |= set(fs.failures())
    return known, usable


def load_features(cache: FeatureCache, keys: list[str], ids: list[str], max_frames: int | None = 64) -> list[FeatureData]:
    out = []
    for key in keys:
        fs = cache.feature_set(key)
        batch = fs.read(ids, missing="mask", max_len=max_frames)
        present = np.asarray(batch.present, bool).copy()
        data = np.asarray(batch.data, dtype=np.float32)
        want_ndim = 2 if batch.kind == "vector" else 3
        if data.ndim != want_ndim and not present.any():  # only failures: the set never stored a value
            dims = tuple(fs.meta.get("dims") or ()) or (1,) * (want_ndim - 1)
            data = np.zeros((len(ids), *dims[-(want_ndim - 1):]), np.float32)
            if batch.kind == "series":
                batch.mask = np.zeros(data.shape[:2], bool)
        if batch.kind == "vector":
            x = data[:, None, :]
            tok = np.ones(x.shape[:2], bool)
        elif batch.kind == "layers":
            x = data
            tok = np.ones(x.shape[:2], bool)
        else:
            x = data
            tok = np.asarray(batch.mask, bool) & present[:, None]
            present &= tok.any(axis=1)           # a series with no valid frame is a missing modality
        x = np.ascontiguousarray(x, dtype=np.float32)   # the batch's own array: changed in place below
        tok = tok & present[:, None]
        x[~tok] = 0.0                            # after masking: never read by a prediction
        bad = ~np.isfinite(x).all(axis=(1, 2)) & present
        if bad.any():                            # a stored NaN/inf inside a present row: treat as missing
            present &= ~bad
            x[bad] = 0.0
            tok[bad] = False
        meta = dict(fs.meta)
        meta["n_nonfinite_dropped"] = int(bad.sum())
        out.append(FeatureData(key, batch.kind, x, tok, present, meta))
    return out
