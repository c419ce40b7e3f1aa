"""The HDF5 feature cache: crash-safe shards, provenance, failures, and one reader.

Layout of a cache directory::

    CACHE/
      .lock                              held (flock) by the one `extract` writing to this cache
      <key>/                             one feature set; key = "<extractor>-<10 hex of config hash>"
        meta.json                        provenance: extractor, version, full config, hash, model
                                         id + revision/checksum, library versions, created, kind, dims
        part-<time>-<pid>-<tag>.h5       immutable shards: extracted clips and recorded failures

Why shards (crash safety). An HDF5 file that is being modified when its process is killed can be
left unreadable as a whole: its B-trees and free-space metadata are updated in place. So nothing
here ever modifies an HDF5 file. The single writer (the main process; workers only compute)
buffers finished clips and every few seconds / clips writes them to a NEW file named ``*.tmp``,
flushes and fsyncs it, and then renames it to ``part-*.h5`` with ``os.replace``, which is atomic
on POSIX. A SIGKILL at any moment therefore leaves either a complete shard or a ``*.tmp`` file
that readers ignore (and the next writer deletes): at most the clips still being computed or
waiting in the buffer are lost, and a re-run computes exactly those. Compaction merges small
shards into one bigger shard by the same write-then-rename route, then deletes the old ones; if
killed in between, a clip appears in two shards with identical data and the reader keeps one; the
merged shard lists the shards it was made from (dataset ``merged_from``), so the next compaction
first deletes those that are still there instead of merging them a second time.

Faults (disk full, a cache made read-only, no permission, a quota). A shard is built in memory first
and then written with plain ``os.write`` calls into space reserved beforehand (``posix_fallocate``):
HDF5 never sees a failing write (its file-object driver crashed the process on one). Every write
(shards, meta.json, the lock's pid file, compaction's deletes) turns an ``OSError`` into
:class:`CacheWriteError`, one message naming the cache, the file and the cause; the shards already
written stay valid, so a re-run resumes.

Readers vs compaction. A reader lists the shards and then opens them; a compaction (in another
process) may delete a listed shard in between. A shard that vanished is not an error: the reader
lists again and retries (a bounded number of times); only a shard that is there but cannot be read
is reported as unreadable.

A changed config (or extractor version) gives a different hash and so a different key: results of
two configs never mix. Clip ids are the media path relative to the video folder without extension.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = ("vector", "layers", "series", "record")
SHARD_GLOB = "part-*.h5"
MERGED_TAG = "compact"  # shards written by compaction end in "-compact.h5"
READ_RETRIES = 5  # times a reader lists the shards again when one vanished (merged away) under it
_STR = None  # h5py string dtype, created lazily


class CacheError(Exception):
    """A cache problem the user must act on (message says what to do)."""


class CacheLockedError(CacheError):
    pass


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


class CacheWriteError(CacheError):
    """The cache could not be written: disk full, read-only, no permission, quota... ``str()`` is one
    line: the cache, what was being written, the cause, what is safe (``saved``, set by the caller
    that knows it) and what to do."""

    def __init__(self, root, doing: str, exc: OSError, saved: str | None = None):
        super().__init__(doing)
        self.root = Path(root)
        self.doing = doing
        self.errno = exc.errno
        cause = exc.strerror or str(exc)
        self.cause = cause[:1].lower() + cause[1:]
        self.saved = saved

    @property
    def advice(self) -> str:
        if self.errno in _NO_SPACE:
            return "free space (or raise the quota) and re-run to resume"
        if self.errno in _NOT_WRITABLE:
            return "make the cache writable (or pass another --cache) and re-run to resume"
        return "fix the cause and re-run to resume"

    def __str__(self) -> str:
        return "; ".join(x for x in (f"cache {self.root}: {self.cause} while {self.doing}", self.saved, self.advice)
                         if x)


def is_write_error(exc: BaseException) -> bool:
    """An OSError the file system raised (it has an errno), not a library's OSError about data."""
    return isinstance(exc, OSError) and not isinstance(exc, CacheError) and exc.errno is not None


class _Vanished(Exception):
    """A shard listed a moment ago is gone (merged away by a compaction): list again."""


def config_hash(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:10]


def _str_dtype():
    import h5py

    global _STR
    if _STR is None:
        _STR = h5py.string_dtype("utf-8")
    return _STR


@dataclass
class Feature:
    """What an extractor returns for one clip.

    vector: data (D,); layers: data (L, D); series: data (T, D) with timestamps (T,) and an optional
    per-frame mask (T,) (False = no valid value at that frame, e.g. no face) and an optional pooled
    vector (D',); record: a JSON-serialisable dict in ``record`` (texts, answers).
    """

    data: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    mask: np.ndarray | None = None
    pooled: np.ndarray | None = None
    record: dict | None = None
    source: str | None = None  # where the input came from (e.g. transcript "csv:t.csv", "asr:<key>")


@dataclass
class FeatureBatch:
    """Features of a list of ids, in that order. ``present[i]`` is False where id i has no value
    (not extracted, or failed): its rows are NaN (vector/layers/pooled) so that a consumer that
    forgets the mask fails loudly instead of training on zeros.

    Series are padded to the longest: ``data`` (n, T, D), ``mask`` (n, T) True on real frames that
    have a valid value, ``lengths`` (n,), ``timestamps`` (n, T).
    """

    key: str
    ids: list[str]
    kind: str
    data: np.ndarray | list
    present: np.ndarray
    mask: np.ndarray | None = None
    lengths: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    failures: dict[str, str] = field(default_factory=dict)


class CacheLock:
    """Exclusive advisory lock on a cache. The kernel drops it when the holder dies (even SIGKILL),
    so a killed run never leaves a stale lock behind."""

    def __init__(self, root: Path):
        self.path = Path(root) / ".lock"

    def __enter__(self):
        import filelock

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = filelock.FileLock(str(self.path), timeout=0)
            try:
                self._lock.acquire()
            except filelock.Timeout:
                holder = _read_text(self.path.with_suffix(".pid")) or "unknown"
                raise CacheLockedError(
                    f"cache {self.path.parent} is in use by another extract (pid {holder.strip()}); "
                    "wait for it to finish, or pass another --cache"
                ) from None
        except OSError as exc:
            if not is_write_error(exc):
                raise
            raise CacheWriteError(self.path.parent, f"taking its lock {self.path}", exc) from None
        try:
            self.path.with_suffix(".pid").write_text(f"{os.getpid()}\n")
        except OSError as exc:
            self._lock.release()
            if not is_write_error(exc):
                raise
            raise CacheWriteError(self.path.parent, f"writing {self.path.with_suffix('.pid')}", exc) from None
        return self

    def __exit__(self, *exc):
        self._lock.release()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


@contextmanager
def atomic_open(path, newline: str | None = None, binary: bool = False):
    """A text file opened for writing that appears at ``path`` only when the block completes (tmp +
    fsync + rename): readers see the old file or the new one, never half of it; on an error the
    old file stays and the tmp file is removed. ``binary``: a bytes file ("wb", e.g. for torch.save).

    The tmp file is created exclusively (``mkstemp``: O_CREAT|O_EXCL, an unpredictable name
    ``.<name>.<random>.tmp`` beside ``path``), so a symlink planted in the folder is never followed;
    the rename replaces a symlink at ``path`` itself, not the file it points to."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path) as fd:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline=newline)) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextmanager
def _replacing(path: Path):
    """The one route to a new file: an exclusively created tmp file beside ``path`` (its fd is
    yielded; the block writes, fsyncs and closes it), renamed to ``path`` when the block completes;
    on an error the tmp file is removed and the old file stays."""
    fd, tmp = _mkstemp_beside(path)
    try:
        yield fd
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):  # a read-only folder: the cause is the error above, not this
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path, text: str) -> None:
    """Write a whole text file atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as fh:
        fh.write(text)


def _mkstemp_beside(path: Path) -> tuple[int, Path]:
    """An exclusively created, empty tmp file in ``path``'s folder -> (fd, its path). Its mode is the
    one a plain open() would give (0666 minus the umask), not mkstemp's 0600."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except OSError:
        pass
    return fd, Path(tmp)


_UMASK: int | None = None


def _umask() -> int:
    """The process umask: read from /proc on Linux (setting it to read it back is not thread-safe)."""
    global _UMASK
    if _UMASK is None:
        status = _read_text(Path("/proc/self/status")) or ""
        found = next((line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), None)
        if found is not None:
            _UMASK = int(found, 8)
        else:
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class FeatureCache:
    """A cache directory: the feature sets in it and how to read them."""

    def __init__(self, root: str | os.PathLike = "cache"):
        self.root = Path(root)

    def lock(self) -> CacheLock:
        return CacheLock(self.root)

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "meta.json").is_file())

    def feature_set(self, key: str) -> "FeatureSet":
        fs = FeatureSet(self.root / key)
        if not fs.exists():
            raise CacheError(f"no feature set {key!r} in cache {self.root}; known: {', '.join(self.keys()) or 'none'}")
        return fs

    def resolve(self, name: str) -> str:
        """A full key, or a short unambiguous form (extractor name, key prefix) -> the full key."""
        keys = self.keys()
        if name in keys:
            return name
        matches = [k for k in keys if k.startswith(name + "-") or k.startswith(name)]
        by_extractor = [k for k in keys if FeatureSet(self.root / k).meta.get("extractor") == name]
        matches = by_extractor or matches
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise CacheError(f"unknown feature {name!r} in cache {self.root}; known keys: {', '.join(keys) or 'none'} "
                             "(see `cli.py cache info`)")
        raise CacheError(f"feature {name!r} is ambiguous in cache {self.root}: {', '.join(matches)}; give the full key")

    def create(self, key: str, meta: dict) -> "FeatureSet":
        """Open (creating if needed) a feature set for writing. Its meta must match if it exists."""
        fs = FeatureSet(self.root / key)
        if fs.exists():
            old = fs.meta
            if old.get("config_hash") != meta.get("config_hash"):
                raise CacheError(f"{fs.path}/meta.json has config hash {old.get('config_hash')} but key {key} "
                                 f"expects {meta.get('config_hash')}; the folder was edited by hand: move it away")
            return fs
        fs.write_meta(meta)
        return fs

    def read(self, key: str, ids, **kw) -> FeatureBatch:
        """Read feature ``key`` (full or short form) for ``ids``, in that order. See FeatureSet.read."""
        return self.feature_set(self.resolve(key)).read(ids, **kw)

    def all_ids(self) -> set[str]:
        out: set[str] = set()
        for k in self.keys():
            fs = FeatureSet(self.root / k)
            out.update(fs.done_ids())
            out.update(fs.failures())
        return out


def read_features(cache_dir: str | os.PathLike, key: str, ids, **kw) -> FeatureBatch:
    """The one reader: feature ``key`` for ``ids`` in that order (array, or padded series + mask)."""
    return FeatureCache(cache_dir).read(key, ids, **kw)


class FeatureSet:
    """One feature set (one extractor + config) in a cache: shards + meta.json."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.key = self.path.name
        self._index: dict[str, tuple[Path, int]] | None = None
        self._failures: dict[str, str] | None = None
        self._meta: dict | None = None

    def exists(self) -> bool:
        return (self.path / "meta.json").is_file()

    @property
    def meta(self) -> dict:
        if self._meta is None:
            text = _read_text(self.path / "meta.json")
            self._meta = json.loads(text) if text else {}
        return self._meta

    def write_meta(self, meta: dict) -> None:
        try:
            atomic_write_text(self.path / "meta.json", json.dumps(meta, indent=2, sort_keys=True, default=str))
        except OSError as exc:
            if not is_write_error(exc):
                raise
            raise CacheWriteError(self.path.parent, f"writing {self.path / 'meta.json'}", exc) from None
        self._meta = None

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "vector")

    def shards(self) -> list[Path]:
        return sorted(self.path.glob(SHARD_GLOB))

    def _retrying(self, attempt):
        """Run ``attempt()`` (which lists and opens shards); when a listed shard vanished (merged
        away by a compaction in another process), forget the index, list again and retry."""
        for n in range(READ_RETRIES):
            try:
                return attempt()
            except _Vanished:
                self.refresh()
                time.sleep(0.02 * n)
        raise CacheError(f"feature set {self.path} changed {READ_RETRIES} times while being read (an extract "
                         "is compacting it); nothing is wrong with it: read again when that extract has finished")

    def _load_index(self) -> None:
        self._retrying(self._load_index_once)

    def _load_index_once(self) -> None:
        index: dict[str, tuple[Path, int]] = {}
        failures: dict[str, str] = {}
        for shard in self.shards():
            with _open_shard(shard) as f:
                ids, fids, freasons = _shard_ids(f)
            for row, cid in enumerate(ids):
                index.setdefault(cid, (shard, row))
            for cid, reason in zip(fids, freasons):
                failures[cid] = reason
        self._index = index
        self._failures = {k: v for k, v in failures.items() if k not in index}

    def refresh(self) -> None:
        self._index = None
        self._failures = None

    def done_ids(self) -> set[str]:
        if self._index is None:
            self._load_index()
        return set(self._index)

    def failures(self) -> dict[str, str]:
        if self._failures is None:
            self._load_index()
        return dict(self._failures)

    def sources(self) -> dict[str, str]:
        """id -> input source, for feature sets that record one (text features: csv or asr)."""
        def attempt():
            out: dict[str, str] = {}
            for shard in self.shards():
                with _open_shard(shard) as f:
                    if "sources" in f:
                        for cid, src in zip(f["ids"].asstr()[()], f["sources"].asstr()[()]):
                            out.setdefault(cid, src)
            return out

        return self._retrying(attempt)

    def dims(self) -> list | None:
        """The shape of one clip's value (series: of the first clip), from meta.json, or from the
        first shard holding data when meta.json has none (a run killed before it recorded them)."""
        dims = self.meta.get("dims")
        if dims or self.kind == "record":
            return list(dims) if dims else None
        return self._retrying(self._dims_from_shards)

    def _dims_from_shards(self) -> list | None:
        for shard in self.shards():
            with _open_shard(shard) as f:
                if "data" not in f or not len(f["data"]):
                    continue
                if self.kind == "series":
                    offsets = f["offsets"]
                    return [int(offsets[1] - offsets[0]), int(f["data"].shape[1])]
                return [int(n) for n in f["data"].shape[1:]]
        return None

    def ensure_dims(self) -> None:
        """Record the dims in meta.json if it has none yet and a shard holds data."""
        if self.kind == "record" or self.meta.get("dims"):
            return
        dims = self.dims()
        if dims:
            self.write_meta({**self.meta, "dims": dims})

    def read(self, ids, missing: str = "mask", max_len: int | None = None, pooled: bool = False) -> FeatureBatch:
        """Values for ``ids`` in that order.

        missing: "mask" (absent ids get present=False and NaN rows) or "raise".
        pooled: for series, return the stored pooled vector (n, D') instead of the padded series.
        max_len: for series, keep at most this many frames per clip (evenly subsampled).
        """
        ids = list(ids)

        def attempt():
            if self._index is None:
                self._load_index_once()
            absent = [i for i in ids if i not in self._index]
            if absent and missing == "raise":
                raise CacheError(f"{len(absent)} ids have no value in {self.key} (first: {absent[:5]})")
            by_shard: dict[Path, list[tuple[int, int]]] = {}
            for pos, cid in enumerate(ids):
                if cid in self._index:
                    shard, row = self._index[cid]
                    by_shard.setdefault(shard, []).append((pos, row))
            values: list = [None] * len(ids)
            for shard, pairs in by_shard.items():
                with _open_shard(shard) as f:
                    _read_rows(f, self.kind, pairs, values, pooled)
            return values

        values = self._retrying(attempt)
        present = np.array([v is not None for v in values], dtype=bool)
        fails = {i: self._failures[i] for i in ids if i in self._failures}
        kind = "vector" if (pooled and self.kind == "series") else self.kind
        if kind == "record":
            return FeatureBatch(self.key, ids, kind, values, present, failures=fails)
        if kind in ("vector", "layers"):
            shape = self._shape(values, kind)
            data = np.full((len(ids),) + shape, np.nan, dtype=np.float32)
            for i, v in enumerate(values):
                if v is not None:
                    data[i] = v
            return FeatureBatch(self.key, ids, kind, data, present, failures=fails)
        return _pad_series(self.key, ids, values, present, fails, max_len, None if present.any() else self.dims())

    def _shape(self, values, kind) -> tuple:
        for v in values:
            if v is not None:
                return tuple(np.shape(v))
        if kind == "vector" and self.kind == "series":  # pooled vectors of a series set
            return self._pooled_shape()
        dims = self.dims()
        return tuple(dims) if dims else (0,)

    def _pooled_shape(self) -> tuple:
        def attempt():
            for shard in self.shards():
                with _open_shard(shard) as f:
                    if "pooled" in f:
                        return tuple(int(n) for n in f["pooled"].shape[1:])
            return (0,)

        return self._retrying(attempt)


@contextmanager
def _open_shard(shard: Path):
    """An open shard; :class:`_Vanished` if it is gone since it was listed (merged away), a
    CacheError if it is there but unreadable."""
    import h5py

    try:
        f = h5py.File(shard, "r")
    except OSError as exc:
        if not shard.exists():
            raise _Vanished(shard) from None
        # cannot happen for renamed shards, but never let one file kill a read
        raise CacheError(f"shard {shard} is unreadable ({exc}); delete it and re-run extract") from exc
    with f:
        yield f


def _shard_ids(f) -> tuple[list[str], list[str], list[str]]:
    """A shard's clip ids (rows of data), failed ids and their reasons."""
    ids = [x.decode() if isinstance(x, bytes) else x for x in f["ids"][()]] if "ids" in f else []
    fids = list(f["failed_ids"].asstr()[()]) if "failed_ids" in f else []
    freasons = list(f["failed_reasons"].asstr()[()]) if "failed_reasons" in f else []
    return ids, fids, freasons


def _read_rows(f, kind, pairs, values, pooled) -> None:
    if kind == "record":
        data = f["data"].asstr()
        for pos, row in pairs:
            values[pos] = json.loads(data[row])
        return
    if kind in ("vector", "layers") or pooled:
        ds = f["pooled"] if (kind == "series" and pooled) else f["data"]
        rows = np.asarray([r for _, r in pairs])
        order = np.argsort(rows)
        block = ds[rows[order]] if len(rows) else []
        for j, k in enumerate(order):
            values[pairs[k][0]] = block[j]
        return
    offsets = f["offsets"][()]
    data, ts = f["data"], f["timestamps"]
    mask = f["mask"] if "mask" in f else None
    for pos, row in pairs:
        a, b = int(offsets[row]), int(offsets[row + 1])
        values[pos] = (data[a:b], ts[a:b], mask[a:b] if mask is not None else np.ones(b - a, bool))


def _pad_series(key, ids, values, present, fails, max_len, dims) -> FeatureBatch:
    def cut(v):
        x, t, m = v
        if max_len is not None and len(x) > max_len:
            sel = np.linspace(0, len(x) - 1, max_len).round().astype(int)
            return x[sel], t[sel], m[sel]
        return v

    values = [cut(v) if v is not None else None for v in values]
    lengths = np.array([len(v[0]) if v is not None else 0 for v in values], dtype=np.int64)
    dim = next((v[0].shape[1] for v in values if v is not None), (dims or [0, 0])[-1])
    tmax = max(int(lengths.max()) if len(lengths) else 0, 1)
    data = np.zeros((len(ids), tmax, dim), dtype=np.float32)
    mask = np.zeros((len(ids), tmax), dtype=bool)
    times = np.zeros((len(ids), tmax), dtype=np.float64)
    for i, v in enumerate(values):
        if v is None:
            data[i] = np.nan
            continue
        x, t, m = v
        data[i, : len(x)] = x
        times[i, : len(x)] = t
        mask[i, : len(x)] = m
    return FeatureBatch(key, ids, "series", data, present, mask=mask, lengths=lengths, timestamps=times, failures=fails)


class ShardWriter:
    """Buffers results of one feature set and writes them as atomically renamed shards.

    ``written`` holds the clip ids this writer has put in shards (values and failures); a write
    that fails (:class:`CacheWriteError`) keeps the buffer, so nothing computed is dropped silently.
    The set's dims go to meta.json as soon as its first shard with data is written."""

    def __init__(self, fs: FeatureSet, kind: str, run_attrs: dict | None = None):
        self.fs = fs
        self.kind = kind
        self.run_attrs = run_attrs or {}
        self.items: list[tuple[str, Feature]] = []
        self.fails: list[tuple[str, str]] = []
        self.seq = 0
        self.dims: tuple | None = None
        self.written: set[str] = set()
        for stale in fs.path.glob(".part-*.tmp"):  # left by a killed writer: never complete
            with suppress(OSError):  # a read-only cache: the first write says so, in one message
                stale.unlink(missing_ok=True)

    def __len__(self):
        return len(self.items) + len(self.fails)

    def add(self, cid: str, feat: Feature) -> None:
        self.items.append((cid, feat))

    def fail(self, cid: str, reason: str) -> None:
        """Record that ``cid`` failed. The reason is stored with API keys redacted (it may quote
        a remote service's error text, which can echo the request's headers)."""
        from .safeio import redact

        self.fails.append((cid, redact(reason)))

    def flush(self) -> Path | None:
        if not self.items and not self.fails:
            return None
        path = write_shard(new_shard_path(self.fs, f"{self.seq:05d}"), self.kind, self.items, self.fails,
                           self.run_attrs)
        self.seq += 1
        first = self.items[0][1] if self.items else None
        self.written.update(cid for cid, _ in self.items)
        self.written.update(cid for cid, _ in self.fails)
        self.items, self.fails = [], []
        self.fs.refresh()
        if first is not None and self.kind != "record" and self.dims is None:
            self.dims = tuple(np.shape(first.data))
            if not self.fs.meta.get("dims"):  # now, not at the end: a run killed later still has them
                self.fs.write_meta({**self.fs.meta, "dims": list(self.dims)})
        return path


def new_shard_path(fs: "FeatureSet", tag: str) -> Path:
    """A shard name not yet used in ``fs`` that sorts in creation order: local time to the
    nanosecond, pid, tag. (Names made to the second collided when one process wrote twice within
    a second, e.g. two runs or two compactions, and the rename replaced the earlier shard.)"""
    while True:
        ns = time.time_ns()
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(ns // 1_000_000_000)) + f"{ns % 1_000_000_000:09d}"
        path = fs.path / f"part-{stamp}-{os.getpid()}-{tag}.h5"
        if not path.exists():
            return path


def write_shard(path: Path, kind: str, items, fails, attrs: dict | None = None, merged_from=()) -> Path:
    """Write one immutable shard: built in memory, then tmp file, fsync, atomic rename.

    A failing write (disk full, read-only...) raises :class:`CacheWriteError` and leaves neither a
    tmp file nor a shard. ``merged_from``: names of the shards a compaction merged into this one."""
    image = _shard_image(kind, items, fails, attrs, merged_from)
    try:
        _write_new_file(path, image)
    except OSError as exc:
        if not is_write_error(exc):
            raise
        raise CacheWriteError(path.parent.parent, f"writing shard {path}", exc) from None
    return path


def _write_new_file(path: Path, image) -> None:
    """``image`` (bytes) at ``path`` by tmp file (created exclusively) + reserve + write + fsync + rename."""
    with _replacing(path) as fd:  # ".part-....h5.<random>.tmp": ShardWriter's stale glob matches it
        try:
            _reserve(fd, len(image))
            _write_all(fd, image)
            os.fsync(fd)
        finally:
            os.close(fd)


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks before writing, so a full disk fails here, at once."""
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view[: 1 << 24])
        view = view[n:]


def _shard_image(kind: str, items, fails, attrs, merged_from=()):
    """The bytes of a shard file, built in memory: HDF5 never writes to the disk itself, so a disk
    error reaches Python as a plain OSError from os.write (not from inside HDF5's file driver,
    where it could leave the library's state corrupt)."""
    import io

    buf = io.BytesIO()
    _write_shard_file(buf, kind, items, fails, attrs, merged_from)
    return buf.getbuffer()


def _write_shard_file(fh, kind: str, items, fails, attrs, merged_from=()) -> None:
    import h5py

    with h5py.File(fh, "w") as f:
        f.attrs["format"] = "moe-emotion-shard/1"
        f.attrs["kind"] = kind
        for k, v in (attrs or {}).items():
            f.attrs[k] = json.dumps(v, default=str) if not isinstance(v, (str, int, float)) else v
        ids = [cid for cid, _ in items]
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=_str_dtype())
        if kind == "record":
            f.create_dataset("data", data=np.array([json.dumps(x.record, default=str) for _, x in items], dtype=object),
                             dtype=_str_dtype())
        elif kind in ("vector", "layers"):
            if items:
                f.create_dataset("data", data=np.stack([np.asarray(x.data, np.float32) for _, x in items]))
        else:
            lengths = [len(x.data) for _, x in items]
            f.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
            if items:
                f.create_dataset("data", data=np.concatenate([np.asarray(x.data, np.float32) for _, x in items]))
                f.create_dataset("timestamps", data=np.concatenate([np.asarray(x.timestamps, np.float64) for _, x in items]))
                masks = [np.ones(len(x.data), bool) if x.mask is None else np.asarray(x.mask, bool) for _, x in items]
                f.create_dataset("mask", data=np.concatenate(masks))
                if all(x.pooled is not None for _, x in items):
                    f.create_dataset("pooled", data=np.stack([np.asarray(x.pooled, np.float32) for _, x in items]))
        if any(x.source for _, x in items):
            f.create_dataset("sources", data=np.array([x.source or "" for _, x in items], dtype=object),
                             dtype=_str_dtype())
        f.create_dataset("failed_ids", data=np.array([c for c, _ in fails], dtype=object), dtype=_str_dtype())
        f.create_dataset("failed_reasons", data=np.array([r for _, r in fails], dtype=object), dtype=_str_dtype())
        if merged_from:
            f.create_dataset("merged_from", data=np.array(list(merged_from), dtype=object), dtype=_str_dtype())
        f.flush()


def is_merged(shard: Path) -> bool:
    """A shard written by compaction (not by an extract run's writer)."""
    return shard.name.endswith(f"-{MERGED_TAG}.h5")


def compact(fs: FeatureSet, min_shards: int = 8) -> int:
    """Merge shards of a feature set into one (same atomic route), then delete them. Returns the
    number of shards merged (0: nothing to do).

    First, a compaction that was killed after its merged shard appeared and before it deleted the
    shards it came from is finished: those still listed in a merged shard's ``merged_from`` are
    deleted (their content is in the merged shard), so they are never merged a second time.
    Then merged together: the small shards (written by extract runs) once there are ``min_shards``
    of them; the merged shards too once there are ``min_shards`` of those (a set keeps fewer than
    2 x min_shards files, and a re-run rewrites the bulk only once every min_shards compactions,
    not every time); and every shard holding a clip id that another shard holds too (left by a
    compaction killed before its sources were deleted, from a version that did not list them).
    A merge that happens for one of these reasons takes every small shard along.
    A clip id held twice keeps the value readers return (the first shard's, in name order), so a
    compaction never changes a value a reader sees.
    """
    finish_compaction(fs)
    shards = fs.shards()
    index: dict[str, tuple[Path, int]] = {}
    fail_at: dict[str, tuple[str, Path]] = {}  # id -> (reason, shard): the last one wins, as for readers
    twice: set[Path] = set()
    for shard in shards:
        with _open_shard(shard) as f:
            ids, fids, freasons = _shard_ids(f)
        for row, cid in enumerate(ids):
            if cid in index:
                twice.update((index[cid][0], shard))
            else:
                index[cid] = (shard, row)
        for cid, reason in zip(fids, freasons):
            fail_at[cid] = (reason, shard)
    small = [s for s in shards if not is_merged(s)]
    merged = [s for s in shards if is_merged(s)]
    group = set(twice)
    if len(merged) >= min_shards:
        group.update(merged)
    if group or len(small) >= min_shards:  # a merge that happens anyway takes the small shards along
        group.update(small)
    if not group:
        return 0
    fs._index = index
    fs._failures = {cid: reason for cid, (reason, _) in fail_at.items() if cid not in index}
    ids = sorted(cid for cid, (shard, _) in index.items() if shard in group)
    fails = sorted((cid, reason) for cid, (reason, shard) in fail_at.items() if cid not in index and shard in group)
    kind = fs.kind
    batch = fs.read(ids, missing="raise")
    sources = fs.sources()
    items = []
    for i, cid in enumerate(ids):
        if kind == "record":
            items.append((cid, Feature(record=batch.data[i])))
        elif kind == "series":
            n = int(batch.lengths[i])
            items.append((cid, Feature(data=batch.data[i, :n], timestamps=batch.timestamps[i, :n],
                                       mask=batch.mask[i, :n])))
        else:
            items.append((cid, Feature(data=batch.data[i])))
    for cid, feat in zip(ids, (x for _, x in items)):
        feat.source = sources.get(cid)
    if kind == "series" and ids:
        with _open_shard(fs._index[ids[0]][0]) as f:
            has_pooled = "pooled" in f
        if has_pooled:
            pooled = fs.read(ids, pooled=True).data
            for i, (_, feat) in enumerate(items):
                feat.pooled = pooled[i]
    del batch
    sources_of = sorted(s.name for s in group)
    target = write_shard(new_shard_path(fs, MERGED_TAG), kind, items, fails, {"compacted_from": len(group)},
                         merged_from=sources_of)
    _delete_merged(fs, [fs.path / name for name in sources_of], target)
    fs.refresh()
    return len(group)


def finish_compaction(fs: FeatureSet) -> int:
    """Delete the shards that a merged shard lists as its sources and that are still there (a
    compaction killed between writing the merged shard and deleting them). Returns how many."""
    shards = fs.shards()
    names = {s.name for s in shards}
    done = 0
    for shard in shards:
        if not is_merged(shard):
            continue
        try:
            with _open_shard(shard) as f:
                listed = list(f["merged_from"].asstr()[()]) if "merged_from" in f else []
        except _Vanished:
            continue
        left = [fs.path / n for n in listed if n in names and n != shard.name]
        if left:
            _delete_merged(fs, left, shard)
            names.difference_update(p.name for p in left)
            done += len(left)
    return done


def _delete_merged(fs: FeatureSet, paths: list[Path], into: Path) -> None:
    """Delete shards whose content is in the merged shard ``into`` (already written and renamed)."""
    try:
        for p in paths:
            p.unlink(missing_ok=True)
    except OSError as exc:
        if not is_write_error(exc):
            raise
        raise CacheWriteError(fs.path.parent, f"deleting the shards merged into {into} (the merged shard is "
                          "complete; the next extract deletes them)", exc) from None
    _fsync_dir(fs.path)


def put(cache_root: str | os.PathLike, name: str, kind: str, values: dict[str, Feature],
        failures: dict[str, str] | None = None, meta: dict | None = None) -> str:
    """Write a whole feature set in one go (synthetic caches, imports). Returns its key.

    The key is ``<name>-<hash of meta>``; meta gets the usual fields (kind, dims, config_hash).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    meta = dict(meta or {})
    meta.setdefault("extractor", name)
    meta.setdefault("config", {})
    payload = {"extractor": name, "config": meta["config"], "kind": kind}
    meta["config_hash"] = config_hash(payload)
    meta["kind"] = kind
    key = meta["key"] = f"{name}-{meta['config_hash']}"
    first = next(iter(values.values()), None)
    if first is not None and kind != "record":
        meta["dims"] = list(np.shape(first.data))
    cache = FeatureCache(cache_root)
    fs = cache.create(key, meta)
    write_shard(new_shard_path(fs, "put"), kind, list(values.items()), sorted((failures or {}).items()))
    return key
