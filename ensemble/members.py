"""Published RUN_DIRs (read through models.run_dir, the format's only reader) -> aligned member arrays.

A *member* is one probability source of one run: every expert, the fused expert and the routed
output listed in the run's ``members.json``. Member names are prefixed with the run's folder name
(``<run>/<member>``) so that several runs stay distinct.

Two splits are built, each a ``Split`` with ``probs`` (members, ids, classes) and ``present``
(members, ids):

* **tuning** rows: labeled ids (union of the runs' ``labels.csv``) with their out-of-fold rows
  (``oof/<member>.csv``). Ids that are also being predicted, and ids that came from a run's pseudo
  label file, are left out: tuning never sees a row it predicts, nor a model's own guess as truth.
* **target** rows: the ids to predict, by default every id of any member's ``test/<member>.csv``.
  A member's value for a target id is its test row; if it has none but has an out-of-fold row for
  that id (possible when runs were trained on different label sets), the out-of-fold row is used:
  it came from a model that never saw the id.

A member without a row for an id (its modality is missing for that clip) is marked absent there;
the vote uses the members that are present.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from extract.tables import read_rows
from models.run_dir import Run, RunDirError, open_run, peek_classes  # noqa: F401  (peek_classes: re-exported)

PROB_TOL = 1e-3  # |row sum - 1| above this is renormalised and counted


@dataclass
class Member:
    name: str  # "<run>/<member>"
    run: str
    member: str
    kind: str  # expert | fused | routed
    feature: str | None = None


@dataclass
class Split:
    """Probabilities of every member over one list of ids. Absent rows are NaN and present=False."""

    ids: list[str]
    probs: np.ndarray  # (M, N, C) float32
    present: np.ndarray  # (M, N) bool

    def take(self, rows) -> "Split":
        rows = np.asarray(rows)
        return Split([self.ids[i] for i in rows], self.probs[:, rows], self.present[:, rows])


@dataclass
class MemberSet:
    runs: list[Run]
    classes: list[str]
    members: list[Member]
    tuning: Split
    y: np.ndarray  # (N_tuning,) class index of every tuning row
    target: Split
    notes: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]


# -- one member's probabilities --------------------------------------------------------------------

def read_labels_csv(path: Path, classes: list[str] | None = None, notes: list[str] | None = None) -> dict[str, str]:
    """A user's ground truth ``name,discrete[,...]`` -> {name: label}. Rows with an unknown class are
    skipped and noted."""
    _, rows = read_rows(path, ("name", "discrete"), RunDirError, "labels file")
    out: dict[str, str] = {}
    bad = []
    for name, label in ((r["name"].strip(), (r["discrete"] or "").strip()) for r in rows if r["name"]):
        if not name:
            continue
        if classes is not None and label not in classes:
            bad.append(name)
            continue
        out[name] = label
    if bad and notes is not None:
        notes.append(f"{path}: {len(bad)} rows with a label outside the classes were skipped (first: {bad[:3]})")
    return out


def clean_probs(path, ids: list[str], p: np.ndarray, notes: list[str]) -> tuple[list[str], np.ndarray]:
    """Rows with non-finite or negative values are dropped; rows not summing to 1 are renormalised;
    both are counted in ``notes``."""
    ok = np.isfinite(p).all(axis=1) & (p >= 0).all(axis=1)
    sums = p.sum(axis=1)
    ok &= sums > 0
    if not ok.all():
        bad = [ids[i] for i in np.flatnonzero(~ok)]
        notes.append(f"{path}: {len(bad)} rows with missing, negative or all-zero probabilities were dropped "
                     f"(first: {bad[:3]})")
    off = ok & (np.abs(sums - 1) > PROB_TOL)
    if off.any():
        notes.append(f"{path}: {int(off.sum())} rows did not sum to 1 and were renormalised")
    p = (p[ok] / sums[ok, None]).astype(np.float32)
    if not ok.all():
        ids = [i for i, keep in zip(ids, ok) if keep]
    if len(set(ids)) != len(ids):
        notes.append(f"{path}: duplicate ids; the last row of each is used")
    return ids, p


def check_same_classes(paths, class_lists) -> list[str] | None:
    """The first run's class order, once every other run has the same classes (in any order).

    ``class_lists`` pairs with ``paths`` and may be lazy (e.g. ``map(peek_classes, paths)``): each run's
    classes are only read after the runs before it agreed."""
    first_path = first = None
    for path, classes in zip(paths, class_lists):
        if first is None:
            first_path, first = path, classes
        elif sorted(classes) != sorted(first):
            raise RunDirError(f"{Path(path) / 'classes.json'} has classes {classes} but "
                              f"{Path(first_path) / 'classes.json'} has {first}: runs to combine must share their "
                              "classes")
    return first


# -- all RUN_DIRs -> MemberSet ---------------------------------------------------------------------

def _run_names(runs: list[Run]) -> None:
    resolved = [r.root.resolve() for r in runs]
    if len(set(resolved)) != len(resolved):
        dup = next(str(p) for p in resolved if resolved.count(p) > 1)
        raise RunDirError(f"RUN_DIR {dup} is given twice")
    for depth in range(1, 6):
        names = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(names)) == len(names):
            break
    for r, n in zip(runs, names):
        r.name = n


def _fill(index, ids: list[str], p: np.ndarray, out_p: np.ndarray, out_present: np.ndarray,
          only_missing: bool = False) -> None:
    """Copy rows ``p`` of ``ids`` into their positions in ``index`` (a pandas Index); unknown ids are skipped."""
    if not len(ids) or not len(index):
        return
    rows = index.get_indexer(np.asarray(ids, dtype=object))
    keep = rows >= 0
    if only_missing:
        keep &= ~out_present[np.where(keep, rows, 0)]
    out_p[rows[keep]] = p[keep]
    out_present[rows[keep]] = True


def load_members(run_dirs, target_ids: list[str] | None = None, progress: bool = False) -> MemberSet:
    """Read RUN_DIRs into a MemberSet (see module docstring for the tuning/target rows)."""
    from tqdm import tqdm

    notes: list[str] = []
    if not run_dirs:
        raise RunDirError("give at least one RUN_DIR")
    runs = [open_run(p) for p in run_dirs]
    _run_names(runs)
    classes = check_same_classes([r.root for r in runs], [r.classes for r in runs])
    members = [Member(f"{r.name}/{m['member']}", r.name, m["member"], str(m.get("kind", "expert")), m.get("feature"))
               for r in runs for m in r.members]

    # labels: union over runs; a conflict is an error (both files named)
    labels: dict[str, str] = {}
    source: dict[str, Path] = {}
    for r in runs:
        run_labels = r.labels()
        outside = sorted(n for n, lab in run_labels.items() if lab not in classes)
        if outside:
            notes.append(f"{r.root / 'labels.csv'}: {len(outside)} rows with a label outside the classes were "
                         f"skipped (first: {outside[:3]})")
        if not run_labels:
            notes.append(f"{r.root / 'labels.csv'} is empty: this run adds no tuning rows")
        for name, lab in run_labels.items():
            if lab not in classes:
                continue
            if name in labels and labels[name] != lab:
                raise RunDirError(f"id {name!r} is '{labels[name]}' in {source[name] / 'labels.csv'} but '{lab}' in "
                                  f"{r.root / 'labels.csv'}: runs to combine must agree on their labels")
            labels[name] = lab
            source.setdefault(name, r.root)
    pseudo = set().union(*(r.pseudo_ids() for r in runs))

    # read every member's CSVs once
    oof_data, test_data = [], []
    it = tqdm(list(zip(members, [r for r in runs for _ in r.members])), desc="reading members", unit="member",
              disable=not progress, leave=False)
    for mem, run in it:
        for split, store in (("oof", oof_data), ("test", test_data)):
            if run.has_probs(split, mem.member):
                path = run.probs_path(split, mem.member)
                store.append(clean_probs(path, *run.probs(split, mem.member, classes), notes))
            else:
                if split == "oof" or mem.kind != "expert":
                    notes.append(f"{run.probs_path(split, mem.member)} is missing: member {mem.name} has no "
                                 f"{split} rows")
                store.append(([], np.zeros((0, len(classes)), np.float32)))

    if target_ids is None:
        tgt = sorted(set().union(*(set(ids) for ids, _ in test_data)))
    else:
        tgt = list(dict.fromkeys(target_ids))
    tgt_set = set(tgt)
    tuning_ids = sorted(n for n in labels if n not in tgt_set and n not in pseudo)
    excluded_target = sum(1 for n in labels if n in tgt_set)
    M, C = len(members), len(classes)

    def empty(n):
        return np.full((M, n, C), np.nan, np.float32), np.zeros((M, n), bool)

    t_probs, t_present = empty(len(tgt))
    u_probs, u_present = empty(len(tuning_ids))
    import pandas as pd

    t_index, u_index = pd.Index(tgt, dtype=object), pd.Index(tuning_ids, dtype=object)
    for m in range(M):
        ids, p = test_data[m]
        _fill(t_index, ids, p, t_probs[m], t_present[m])
        ids, p = oof_data[m]
        _fill(u_index, ids, p, u_probs[m], u_present[m])
        _fill(t_index, ids, p, t_probs[m], t_present[m], only_missing=True)
    keep = u_present.any(axis=0)
    if not keep.all():
        notes.append(f"{int((~keep).sum())} labeled ids have no out-of-fold row in any member and are not used "
                     "for tuning")
        u_probs, u_present = u_probs[:, keep], u_present[:, keep]
        tuning_ids = [n for n, k in zip(tuning_ids, keep) if k]
    cidx = {c: i for i, c in enumerate(classes)}
    y = np.array([cidx[labels[n]] for n in tuning_ids], dtype=np.int64)
    counts = {"runs": len(runs), "members": M, "tuning_rows": len(tuning_ids), "target_rows": len(tgt),
              "labeled_ids": len(labels), "labeled_ids_predicted": excluded_target,
              "pseudo_ids_left_out": len(pseudo & set(labels)),
              "target_rows_without_member": int((~t_present.any(axis=0)).sum()) if len(tgt) else 0}
    return MemberSet(runs=runs, classes=classes, members=members,
                     tuning=Split(tuning_ids, u_probs, u_present), y=y,
                     target=Split(tgt, t_probs, t_present), notes=notes, counts=counts)
