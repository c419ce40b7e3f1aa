"""Joining and checking feature caches (``cli.py cache merge`` / ``cache verify``).

Shard caches (``extract --shard i/n`` on a SLURM array, one cache each) are joined by copying their
immutable shard files into the target feature sets, each under a new name through the cache's
atomic route (tmp file, fsync, rename): nothing is decoded or recomputed, and the target's readers
see either the old or the new shards, never half a file. Before anything is copied:

* a feature set present in several caches must have the same extractor, version, config and decode
  options (its key holds their hash; the meta.json files must agree too);
* a clip id done in two caches must hold the same value in both (exact duplicates are accepted,
  e.g. a shard re-run); a different value is refused, naming the id, the key and both caches.

Failure records travel with their shards; as everywhere in the cache, a clip done in any shard is
done. ``verify`` opens every shard of every set and checks ids, row counts, dims and meta.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import (CacheError, FeatureCache, FeatureSet, _fsync_dir, _open_shard, _shard_ids, atomic_open, compact,
                    new_shard_path)

IDENTITY = ("extractor", "extractor_version", "config", "decode", "kind")


@dataclass
class MergeReport:
    into: Path
    sets: dict = field(default_factory=dict)      # key -> {"shards": n copied, "clips": n new, "duplicates": n}
    seconds: float = 0.0


def _same_value(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    if isinstance(a, tuple):  # series rows: (data, timestamps, mask)
        return all(_same_value(x, y) for x, y in zip(a, b))
    return a == b


def _raw_rows(fs: FeatureSet, ids) -> dict:
    """id -> the stored row (vector/layers array, record dict, or the series' (data, timestamps, mask))."""
    from .cache import _read_rows

    out = {}
    fs._load_index_once()
    by_shard: dict[Path, list[tuple[int, int]]] = {}
    ids = [i for i in ids if i in fs._index]
    for pos, cid in enumerate(ids):
        shard, row = fs._index[cid]
        by_shard.setdefault(shard, []).append((pos, row))
    values = [None] * len(ids)
    for shard, pairs in by_shard.items():
        with _open_shard(shard) as f:
            _read_rows(f, fs.kind, pairs, values, False)
    out.update(zip(ids, values))
    return out


def _copy_shard(src: Path, dst_set: FeatureSet, tag: str) -> Path:
    dest = new_shard_path(dst_set, tag)
    with atomic_open(dest, binary=True) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)
    return dest


def merge(sources, into, compact_min_shards: int = 16, progress: bool = False) -> MergeReport:
    """Join the feature caches ``sources`` into ``into`` (created if needed; its own sets count as a
    source for the checks). Refuses conflicting configs or an id with two different values."""
    import time

    t0 = time.perf_counter()
    into = Path(into)
    srcs = [FeatureCache(s) for s in dict.fromkeys(Path(s).resolve() for s in sources)]
    for c in srcs:
        if not c.root.is_dir() or not c.keys():
            raise CacheError(f"cache {c.root} holds no feature set (is it the --cache of an extract run?)")
        if c.root.resolve() == into.resolve():
            raise CacheError(f"cache {c.root} is both a source and --into")
    target = FeatureCache(into)
    report = MergeReport(into)
    with target.lock():
        keys = sorted({k for c in srcs for k in c.keys()})
        plan = []
        for key in keys:
            holders = [c for c in srcs if key in c.keys()]
            metas = [(c, c.feature_set(key).meta) for c in holders]
            if key in target.keys():
                metas.insert(0, (target, target.feature_set(key).meta))
            ref_cache, ref = metas[0]
            for c, m in metas[1:]:
                diff = [f for f in IDENTITY if m.get(f) != ref.get(f)]
                if diff:
                    raise CacheError(f"feature set {key}: {c.root} and {ref_cache.root} disagree on "
                                     f"{', '.join(diff)} (a hand-edited meta.json?): refusing to merge them")
            # ids done in more than one cache must agree value for value
            done = [(c, c.feature_set(key).done_ids()) for c, _ in metas]
            seen: dict[str, FeatureCache] = {}
            overlap: dict[tuple, list[str]] = {}
            for c, ids in done:
                for cid in ids:
                    if cid in seen:
                        overlap.setdefault((seen[cid].root, c.root), []).append(cid)
                    else:
                        seen[cid] = c
            dups = 0
            for (a_root, b_root), ids in overlap.items():
                a = _raw_rows(FeatureCache(a_root).feature_set(key), ids)
                b = _raw_rows(FeatureCache(b_root).feature_set(key), ids)
                for cid in ids:
                    if not _same_value(a[cid], b[cid]):
                        raise CacheError(f"clip {cid!r} has two different values in feature set {key} ({a_root} and "
                                         f"{b_root}): refusing to merge; re-extract it in one of them")
                dups += len(ids)
            before = len(target.feature_set(key).done_ids()) if key in target.keys() else 0
            plan.append((key, holders, ref, dups, len(seen) - before))
        for key, holders, meta, dups, new in plan:
            fs = target.create(key, {k: v for k, v in meta.items() if k != "dims"} | (
                {"dims": meta["dims"]} if meta.get("dims") else {}))
            n = 0
            for c in holders:
                for shard in c.feature_set(key).shards():
                    _copy_shard(shard, fs, f"m{n:05d}")
                    n += 1
            _fsync_dir(fs.path)
            fs.refresh()
            if compact_min_shards:
                compact(fs, compact_min_shards)
            fs.ensure_dims()
            report.sets[key] = {"shards": n, "clips": new, "duplicates": dups}
    report.seconds = time.perf_counter() - t0
    return report


@dataclass
class VerifyReport:
    cache: Path
    sets: dict = field(default_factory=dict)      # key -> {"shards", "clips", "failed"}
    problems: list = field(default_factory=list)  # "path: what is wrong"

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(cache_dir) -> VerifyReport:
    """Open every shard of every feature set; check meta.json, ids, row counts and dims."""
    cache = FeatureCache(cache_dir)
    rep = VerifyReport(Path(cache_dir))
    if not cache.root.is_dir():
        raise CacheError(f"cache {cache_dir} does not exist")
    for d in sorted(p for p in cache.root.iterdir() if p.is_dir()):
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            if any(d.glob("part-*.h5")):
                rep.problems.append(f"{d}: shards without a meta.json")
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            rep.problems.append(f"{meta_path}: not readable JSON ({exc})")
            continue
        missing = [f for f in ("extractor", "kind", "config_hash") if f not in meta]
        if missing:
            rep.problems.append(f"{meta_path}: lacks {', '.join(missing)}")
        if meta.get("config_hash") and not d.name.endswith(str(meta["config_hash"])):
            rep.problems.append(f"{meta_path}: config hash {meta['config_hash']} does not match the folder name")
        kind, dims = meta.get("kind"), meta.get("dims")
        fs = FeatureSet(d)
        done: set[str] = set()
        failed: set[str] = set()
        for shard in fs.shards():
            try:
                with _open_shard(shard) as f:
                    ids, fids, _ = _shard_ids(f)
                    if len(set(ids)) != len(ids):
                        rep.problems.append(f"{shard}: a clip id appears twice")
                    if ids and "data" not in f:
                        rep.problems.append(f"{shard}: ids without data")
                    elif ids and kind == "series":
                        off = f["offsets"][()]
                        if len(off) != len(ids) + 1 or int(off[-1]) != len(f["data"]):
                            rep.problems.append(f"{shard}: series offsets do not match its rows")
                        elif dims and f["data"].shape[1] != dims[-1]:
                            rep.problems.append(f"{shard}: frames of width {f['data'].shape[1]}, meta.json says {dims}")
                    elif ids and kind in ("vector", "layers"):
                        if len(f["data"]) != len(ids):
                            rep.problems.append(f"{shard}: {len(f['data'])} rows for {len(ids)} ids")
                        elif dims and list(f["data"].shape[1:]) != list(dims):
                            rep.problems.append(f"{shard}: values of shape {list(f['data'].shape[1:])}, meta.json "
                                                f"says {dims}")
                    elif ids and kind == "record":
                        for row in f["data"].asstr()[: min(len(ids), 1000)]:
                            json.loads(row)
                    done.update(ids)
                    failed.update(fids)
            except CacheError as exc:
                rep.problems.append(str(exc).replace("; delete it and re-run extract", "") +
                                    " -- delete it and re-run extract for its clips")
            except Exception as exc:  # noqa: BLE001 - any damage is a finding, not a crash
                rep.problems.append(f"{shard}: {type(exc).__name__}: {exc}")
        rep.sets[d.name] = {"shards": len(fs.shards()), "clips": len(done), "failed": len(failed - done)}
    return rep
