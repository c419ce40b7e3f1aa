"""The extract loop: plan what is missing, decode each clip once, run every extractor on it, write.

Workers (joblib, ``--jobs``; Dask, ``--scheduler``) only decode and compute; the main process is the
single writer of the cache (see extract/cache.py for why that survives SIGKILL). Every library of a
process takes ``--threads`` threads and a value does not depend on where or in which order its clip
ran, so ``--jobs 1`` and ``--jobs 2`` write the same values.

A cache that cannot be written (disk full, read-only, no permission, quota) stops the run: the
workers are stopped, every other buffer is flushed if it can be, and :class:`CacheWriteError` says
in one message which cache, what failed, how many clips are safe and what to do; a re-run resumes.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import media
from .cache import CacheWriteError, Feature, FeatureCache, FeatureSet, ShardWriter, compact, is_write_error
from .registry import ExtractionError, Extractor
from .tables import read_rows

log = logging.getLogger("moe.extract")

# Workers keep their loaded extractors here, keyed by feature key: models load once per process.
_LOADED: dict[str, Extractor] = {}


class UsageError(Exception):
    """Bad command-line input (missing folder, unknown extractor...): nothing was done."""


@dataclass
class Task:
    id: str
    path: str
    needs: tuple[str, ...]
    extractors: list[Extractor]
    text: str | None = None
    text_source: str | None = None


@dataclass
class Summary:
    """What one extract run did. ``cache`` is the cache folder, ``keys`` the feature sets of the run
    (in the requested order); ``done``/``failed`` count clips per key in this run (cached clips are
    in ``skipped``); ``failures`` lists (clip id, key, reason) recorded in this run."""

    clips: int = 0
    decoded: int = 0
    skipped: int = 0  # clips with nothing left to do (all cached)
    done: Counter = field(default_factory=Counter)  # per feature key
    failed: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (id, key, reason)
    seconds: float = 0.0
    cache: Path = Path()
    video_dir: Path = Path()
    keys: list[str] = field(default_factory=list)
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    clip_notes: list[tuple[str, str, str]] = field(default_factory=list)  # (id, key, note): silent, clipped
    log: Path | None = None  # CACHE/extract.log: library output, skipped files, per-clip notes
    files_skipped: list[tuple[str, str]] = field(default_factory=list)  # (path under video_dir, why)
    extensions_seen: dict[str, int] = field(default_factory=dict)  # every file's extension -> count
    rotated: dict[str, int] = field(default_factory=dict)  # clip id -> degrees its frames were turned upright
    compute_seconds: Counter = field(default_factory=Counter)  # summed in workers: "decode" and per key
    retried: int | None = 0  # clips a Dask worker died holding, run again elsewhere (None: not counted)
    workers: int = 1  # worker processes (--jobs, or the Dask cluster's workers)

    @property
    def any_success(self) -> bool:
        return sum(self.done.values()) > 0

    def exit_code(self, strict: bool = False) -> int:
        """The CLI's exit status: 130 when interrupted; 1 when every attempted clip failed, or with
        ``strict`` when any did; else 0 (anything succeeded or was already cached)."""
        if self.interrupted:
            return 130
        if self.failures and (strict or (not self.any_success and not self.skipped)):
            return 1
        return 0


def load_transcripts(path: str | os.PathLike, text_column: str | None = None) -> dict[str, str]:
    """name -> text from a CSV (``name,text``; MER's ``name,chinese,english`` with --text-column)."""
    cols, rows = read_rows(path, ("name",), UsageError, "transcripts file")
    column = text_column or ("text" if "text" in cols else None)
    if column is None or column not in cols:
        others = [c for c in cols if c != "name"]
        raise UsageError(f"{path}: no text column {text_column or 'text'!r}; pass --text-column, one of: "
                         f"{', '.join(others)}")
    return {row["name"].strip(): (row[column] or "") for row in rows}


def transcript_for(cid: str, transcripts: dict[str, str]) -> str | None:
    if cid in transcripts:
        return transcripts[cid]
    base = cid.rsplit("/", 1)[-1]
    return transcripts.get(base)


def _set_threads(threads: int) -> None:
    """Give torch a fixed number of intra-op threads per worker. CPU reductions depend on the
    thread count, so a fixed count (not cores // jobs) keeps values identical whatever --jobs is.
    Only done once a model has imported torch: signal-only runs never pay for importing it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def run_order(extractors: list[Extractor]) -> list[Extractor]:
    """Extractors that provide text (ASR) first, then the rest, each after those named in its
    ``after`` (vlm-text after vlm); otherwise the user's order."""
    order = sorted(extractors, key=lambda e: "text" not in e.provides)
    done: list[Extractor] = []
    while order:
        names = {e.name for e in order}
        ready = next((e for e in order if not (set(e.after) & (names - {e.name}))), order[0])
        order.remove(ready)
        done.append(ready)
    return done


_WATCHED: int | None = None  # the main process this worker's watchdog watches


def watch_parent(parent: int | None, poll: float = 0.5) -> None:
    """In a worker process: start (once) a daemon thread that ends this process as soon as the main
    process ``parent`` is gone, so killing the main process never leaves workers computing and
    holding memory (loky's workers only notice a dead parent between tasks). Linux's
    PR_SET_PDEATHSIG is not used: it fires when the *thread* that started the worker ends, and loky
    starts workers from whichever thread needs one."""
    global _WATCHED
    if parent is None or parent == os.getpid() or _WATCHED == parent:
        return
    _WATCHED = parent
    direct = os.getppid() == parent

    def alive() -> bool:
        if direct:  # re-parented (to init or a subreaper) once the parent died
            return os.getppid() == parent
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def watch() -> None:
        while alive():
            time.sleep(poll)
        os._exit(1)

    import threading

    threading.Thread(target=watch, name="moe-parent-watchdog", daemon=True).start()
    _watch_from_outside(parent, direct, poll)


#: the outside watchdog (POSIX sh; builtins but sleep). It ends with the worker; it kills the worker
#: once the main process is gone: Linux, a direct child: the worker's /proc stat names another parent
#: (re-parented, so a zombie main process counts as gone); elsewhere: the main process no longer
#: answers kill -0
_WATCH_SH = """
me={me}; parent={parent}
while :; do
  if [ {direct} = 1 ] && [ -d /proc/$me ]; then
    read -r line < /proc/$me/stat 2>/dev/null || exit 0
    set -- ${{line##*) }}
    [ "$2" = "$parent" ] || {{ kill -9 $me 2>/dev/null; exit 0; }}
  else
    kill -0 $me 2>/dev/null || exit 0
    kill -0 $parent 2>/dev/null || {{ kill -9 $me 2>/dev/null; exit 0; }}
  fi
  sleep {poll}
done
"""


def _watch_from_outside(parent: int, direct: bool, poll: float) -> None:
    """A shell loop beside this worker that kills it once the main process is gone. The watchdog
    thread alone cannot end a worker whose main thread is inside a long call holding the GIL (librosa's
    pyin Viterbi, numba code without ``nogil``: seconds per call on long audio), so a killed main
    process left such a worker computing until the call returned. Without a POSIX sh (Windows), the
    thread is the only watchdog."""
    import shutil
    import subprocess

    sh = shutil.which("sh") if os.name == "posix" else None
    if sh is None:
        return
    script = _WATCH_SH.format(me=os.getpid(), parent=int(parent), direct=int(direct), poll=poll)
    try:
        subprocess.Popen([sh, "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True)
    except OSError as exc:  # no process to spare: the thread still watches
        log.debug("no outside watchdog: %s", exc)


def _join_run(parent: int | None, log_path: str | None) -> None:
    """In a worker process of the main process ``parent``: end with it, and send what libraries print
    (fd 2) to the run's log ``log_path`` (None: the terminal). Nothing to do in the main process."""
    watch_parent(parent)
    if parent is not None and parent != os.getpid():
        _worker_stderr(log_path)


def process(task: Task, config: media.DecodeConfig, threads: int = 1, parent: int | None = None,
            log_path: str | None = None) -> dict:
    """Decode one clip (only what its pending extractors need) and run them. Runs in a worker;
    ``parent`` is the main process's pid (a worker exits when it dies, see :func:`watch_parent`);
    a worker writes what libraries print (fd 2) to ``log_path`` (None: leaves it on the terminal).

    BLAS (numpy's OpenBLAS) gets the same fixed thread count as torch while the clip is processed:
    its idle threads busy-wait after every call, and with the default of one thread per core they
    took the cores from FFmpeg's decoder threads, which made decoding audio + frames 2-3x slower
    inside a run with librosa than on its own (bench/bench_extract.py). The limit is lifted on return.
    """
    _join_run(parent, log_path)
    with _blas_controller().limit(limits=threads, user_api="blas"):
        return _process(task, config, threads)


_CONTROLLER: list = []  # [(modules imported when it was made, threadpoolctl.ThreadpoolController)]


def _blas_controller():
    """One threadpoolctl controller per set of imported modules: making one scans every loaded shared
    library (9 ms, per clip before), and a new native library comes with an import."""
    from threadpoolctl import ThreadpoolController

    if not _CONTROLLER or _CONTROLLER[0][0] != len(sys.modules):
        _CONTROLLER[:] = [(len(sys.modules), ThreadpoolController())]
    return _CONTROLLER[0][1]


def _process(task: Task, config: media.DecodeConfig, threads: int) -> dict:
    out: dict = {"id": task.id, "decoded": False, "results": {}, "seconds": {}, "notes": []}
    clip = None
    t0 = time.perf_counter()
    media_needs = tuple(n for n in task.needs if n != "text")
    decode_failure = None
    try:
        if media_needs:
            clip = media.decode(task.path, task.id, media_needs, config, threads)
            out["decoded"] = True
        else:
            clip = media.Clip(id=task.id, path=task.path)
    except media.DecodeError as exc:
        decode_failure = f"decode failed: {exc}"
    except Exception as exc:  # an unexpected decoder crash must not stop the run
        decode_failure = f"decode failed: {type(exc).__name__}: {exc}"
    if decode_failure is not None:
        # only the feature sets that read the media inherit the failure: a text-only set still runs
        clip = media.Clip(id=task.id, path=task.path)
        clip.missing.update({need: decode_failure for need in media_needs})
    out["seconds"]["decode"] = time.perf_counter() - t0
    out["rotation"] = clip.rotation
    clip.text, clip.text_source = task.text, task.text_source
    if task.text is None:
        clip.missing["text"] = "no transcript for this clip"
    for ex in run_order(task.extractors):
        t1 = time.perf_counter()
        reason = clip.unavailable(ex.needs)
        media_failed = decode_failure is not None and any(n != "text" for n in ex.needs)
        missing = {n for n in ex.needs if n in clip.missing}
        if reason is not None and (media_failed or not ex.runs_without(missing)):
            out["results"][ex.key] = reason
            continue
        try:
            loaded = _LOADED.setdefault(ex.key, ex).ensure_loaded()
            _set_threads(threads)
            feat = loaded.extract(clip)
            if not isinstance(feat, Feature):
                raise TypeError(f"{ex.name} returned {type(feat).__name__}, not Feature")
            if "text" in ex.needs and feat.source is None:
                feat.source = clip.text_source
            if "text" in ex.provides and clip.text is None and feat.record and feat.record.get("text") is not None:
                clip.text, clip.text_source = feat.record["text"], f"asr:{ex.key}"
                clip.missing.pop("text", None)
            out["results"][ex.key] = feat
            out["notes"] += [(ex.key, note) for need in ex.needs for note in clip.notes.get(need, ())]
        except ExtractionError as exc:
            out["results"][ex.key] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad clip must never stop the run
            out["results"][ex.key] = f"{ex.name} failed: {type(exc).__name__}: {exc}"
        out["seconds"][ex.key] = time.perf_counter() - t1
    return out


def warm(extractors: list[Extractor], parent: int | None = None, log_path: str | None = None) -> dict:
    """Load a run's extractors in this worker process before its first clip arrives (as the clips
    do: one instance per key, kept in this process's model table; each clip sets the thread counts;
    ``parent`` and ``log_path`` as for :func:`process`, so what loading prints goes to the run's log).
    Returns ``{"provenance": {key: ...}, "errors": {key: message}}``: the provenance of each loaded
    extractor as this worker computes it (its device, its models' checksums; the client writes it to
    meta.json instead of loading every model itself), and why the others did not load."""
    _join_run(parent, log_path)
    out: dict = {"provenance": {}, "errors": {}}
    for ex in extractors:
        try:
            loaded = _LOADED.setdefault(ex.key, ex).ensure_loaded()
            out["provenance"][ex.key] = loaded.provenance()
        except Exception as exc:  # noqa: BLE001 - the client reports it (and each clip that needs it)
            log.debug("warm-up: %s did not load", ex.key, exc_info=True)
            out["errors"][ex.key] = str(exc) or type(exc).__name__
    return out


def run_extract_warm(video_dir, extractors: list[Extractor], cache_dir, decode_config: media.DecodeConfig,
                     pool_threads: int | None = None) -> Summary:
    """:func:`run_extract` in a worker process that loaded these extractors before (:func:`warm`): the
    run uses the loaded instances, not the copies each submitted task unpickles (which would load
    their models again), and keeps them loaded for the next call (the Recogniser's audio worker)."""
    import threading

    from tqdm.auto import tqdm

    # no progress bar here, but tqdm's class lock would be a multiprocessing semaphore, which this
    # worker's resource tracker reports on the terminal as leaked when the worker is stopped
    tqdm.set_lock(threading.RLock())
    loaded = [_LOADED.get(ex.key, ex) for ex in extractors]
    return run_extract(video_dir, loaded, cache_dir, decode_config, progress=False, keep_loaded=True,
                       pool_threads=pool_threads)


def plan(files: dict[str, Path], extractors: list[Extractor], cache: FeatureCache, transcripts: dict[str, str],
         retry_failed: bool, text_source: str) -> tuple[list[Task], int]:
    """Tasks for the clips that still miss at least one feature set; count of fully cached clips."""
    done = {}
    failed = {}
    for ex in extractors:
        fs = FeatureSet(cache.root / ex.key)
        if not fs.exists():  # created after planning: every clip is pending for it
            done[ex.key], failed[ex.key] = set(), set()
            continue
        done[ex.key] = fs.done_ids()
        failed[ex.key] = set() if retry_failed else set(fs.failures())
    cached_text = cached_transcripts(cache, files, transcripts)
    tasks, skipped = [], 0
    for cid in sorted(files):
        pending = [ex for ex in extractors if cid not in done[ex.key] and cid not in failed[ex.key]]
        if not pending:
            skipped += 1
            continue
        needs = tuple(sorted({n for ex in pending for n in ex.needs}))
        text, source = transcript_for(cid, transcripts), text_source
        if text is None and cid in cached_text:
            text, source = cached_text[cid]
        tasks.append(Task(cid, str(files[cid]), needs, pending, text, source if text is not None else None))
    return tasks, skipped


def cached_transcripts(cache: FeatureCache, files, transcripts) -> dict[str, tuple[str, str]]:
    """Transcripts that text-providing extractors (ASR) already wrote to the cache, for the clips
    that the transcripts CSV does not cover: id -> (text, "asr:<key>")."""
    from .registry import REGISTRY

    out: dict[str, tuple[str, str]] = {}
    need = [cid for cid in files if transcript_for(cid, transcripts) is None]
    if not need:
        return out
    for key in cache.keys():
        fs = cache.feature_set(key)
        cls = REGISTRY.get(fs.meta.get("extractor", ""))
        if cls is None or "text" not in cls.provides or fs.kind != "record":
            continue
        batch = fs.read(need)
        for cid, rec, ok in zip(need, batch.data, batch.present):
            if ok and cid not in out and rec.get("text") is not None:
                out[cid] = (rec["text"], f"asr:{key}")
    return out


def run_extract(video_dir, extractors: list[Extractor], cache_dir="cache", decode_config=media.DecodeConfig(),
                transcripts: dict[str, str] | None = None, transcripts_source: str | None = None, jobs: int = 1,
                threads: int = 1,
                retry_failed: bool = False, flush_every: int = 32, flush_seconds: float = 10.0,
                progress: bool = True, compact_min_shards: int = 16,
                extensions=media.MEDIA_EXTENSIONS, verbose: bool = False, scheduler: str | None = None,
                device: str = "cpu", shard: tuple[int, int] | None = None, keep_loaded: bool = False,
                pool_threads: int | None = None) -> Summary:
    """Extract ``extractors`` for every media file under ``video_dir`` (those whose extension is in
    ``extensions``) into ``cache_dir``.

    What libraries print while the run lasts (MediaPipe/TFLite/absl lines, Python warnings, other
    libraries' log records) goes to ``CACHE/extract.log``, with every skipped file and per-clip note;
    ``verbose`` leaves library output on the terminal instead. ``keep_loaded``: the extractors stay
    loaded after the run (a caller that extracts again and again, the Recogniser, closes them with
    :func:`close_loaded`); by default the run closes what it loaded. ``pool_threads``: the threads of
    the extractors' own pools whose count does not change the values (whisper's CTranslate2), when a
    latency-bound caller wants more than ``threads`` (the Recogniser: the usable cores)."""
    from .executors import SchedulerError, parse_scheduler, probe_scheduler, start_cluster

    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise UsageError(f"video folder {video_dir} does not exist or is not a folder")
    if not extractors:
        raise UsageError("no extractor requested")
    found = media.scan(video_dir, extensions)
    if not found.files and not found.collisions:
        raise UsageError(no_media_message(found))
    if shard is not None:
        keep = set(shard_slice(sorted([*found.files, *found.collisions]), *shard))
        found.files = {k: v for k, v in found.files.items() if k in keep}
        found.collisions = {k: v for k, v in found.collisions.items() if k in keep}
    try:  # a scheduler that cannot be there stops the run before it creates the cache folder
        kind, address = parse_scheduler(scheduler) or (None, None)
        if kind == "address":
            probe_scheduler(address)
    except SchedulerError as exc:
        raise UsageError(str(exc)) from None
    with RunLog(Path(cache_dir) / LOG_NAME, verbose) as runlog:
        runlog.detail(f"extract {video_dir} -> {cache_dir}: {', '.join(ex.key for ex in extractors)} "
                      f"(pid {os.getpid()})", terminal=False)
        # a Dask cluster starts first: its workers import and load their models (seconds of CPU each)
        # while this process checks the extractors and plans, instead of after (executors.DaskExecutor.warm)
        try:
            cluster = start_cluster(scheduler, device)
        except SchedulerError as exc:
            raise UsageError(str(exc)) from None
        try:
            return _run(video_dir, found, extractors, cache_dir, decode_config, transcripts or {}, transcripts_source,
                        jobs, threads, retry_failed, flush_every, flush_seconds, progress, compact_min_shards, runlog,
                        device, keep_loaded, pool_threads, cluster)
        finally:
            if cluster is not None:
                cluster.close()


def describe(extractors, warming, cache_dir, cluster) -> dict:
    """Check every extractor before any clip (a model that cannot load is a usage error) and return
    the provenance each new feature set's meta.json records. ``warming``: the extractors this run's
    clips need, which the workers are loading; without a cluster this process computes clips too
    (see LocalExecutor) and loads them here."""
    provenance = {}
    for ex in extractors:  # a model that cannot load is a usage error, found before any work
        try:
            if cluster is None:  # clips are computed on this machine: the device must be here
                ex.check_device()
            ex.preflight(load=cluster is None and ex in warming)
            # meta.json is written once, when a feature set is created; an existing set only checks
            # its config hash, so its provenance (which can load models) is not rebuilt on re-runs
            if FeatureSet(Path(cache_dir) / ex.key).exists():
                provenance[ex.key] = {"config_hash": ex.key.rsplit("-", 1)[1]}
        except Exception as exc:  # noqa: BLE001 - any loader error, reported with its extractor
            raise UsageError(f"{ex.name} cannot start: {exc}") from exc
    new_sets = [ex for ex in extractors if ex.key not in provenance]
    if cluster is not None and any(ex in warming for ex in new_sets):
        # a Dask client loads no model: the first worker that warmed up says what it loaded (its
        # device, checksums) and what it could not load (the usage error a local run finds here)
        worker, warmed = cluster.first_warm_up()
        for ex in new_sets:
            if ex.key in warmed.get("errors", {}):
                raise UsageError(f"{ex.name} cannot start on worker {worker}: {warmed['errors'][ex.key]}")
            if ex.key in warmed.get("provenance", {}):
                provenance[ex.key] = dict(warmed["provenance"][ex.key], computed_by=f"dask worker {worker}")
    for ex in new_sets:
        if ex.key not in provenance:
            try:
                provenance[ex.key] = ex.provenance()
            except Exception as exc:  # noqa: BLE001 - any loader error, reported with its extractor
                raise UsageError(f"{ex.name} cannot start: {exc}") from exc
    return provenance


def shard_slice(ids: list[str], i: int, n: int) -> list[str]:
    """Shard ``i`` of ``n`` (1-based) of the sorted clip ids: contiguous, as equal as possible, the
    same whatever order the file system lists the files in."""
    if not (1 <= i <= n):
        raise UsageError(f"--shard {i}/{n}: give i/n with 1 <= i <= n")
    ids = sorted(ids)
    lo, hi = (len(ids) * (i - 1)) // n, (len(ids) * i) // n
    return ids[lo:hi]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"3/16"`` -> (3, 16)."""
    if text is None or str(text).strip() == "":
        return None
    a, sep, b = str(text).partition("/")
    try:
        i, n = int(a), int(b)
    except ValueError:
        raise UsageError(f"--shard {text!r}: give i/n, e.g. 3/16 (shard 3 of 16, counted from 1)") from None
    if not sep or not (1 <= i <= n):
        raise UsageError(f"--shard {text!r}: give i/n with 1 <= i <= n (counted from 1)")
    return i, n


def _run(video_dir: Path, found: media.Scan, extractors, cache_dir, decode_config, transcripts, transcripts_source,
         jobs, threads, retry_failed, flush_every, flush_seconds, progress, compact_min_shards,
         runlog: "RunLog", device: str = "cpu", keep_loaded: bool = False, pool_threads: int | None = None,
         cluster=None) -> Summary:
    """One run; ``cluster``: the Dask executor run_extract started for --scheduler, else local processes."""
    from tqdm.auto import tqdm

    from .executors import LocalExecutor, resolve_jobs

    for ex in extractors:
        ex.cache_root = str(cache_dir)  # extractors that read earlier results (vlm-text) look here
        ex.run_threads = pool_threads or threads  # --jobs N uses N x threads cores (see run_extract)
    keys = [ex.key for ex in extractors]  # computed here and sent with each extractor (a worker never does)
    if len(set(keys)) != len(keys):
        raise UsageError("the same feature set is requested twice")
    # a text encoder with no transcript and no ASR in the run would load only to fail every clip: its
    # model loads later, with the first clip that has text (one cached by an earlier ASR run)
    starved = set() if transcripts or any("text" in ex.provides for ex in extractors) else {"text"}
    fed = [ex for ex in extractors if ex.runs_without(starved & set(ex.needs))]
    summary = Summary(cache=Path(cache_dir), video_dir=video_dir, keys=keys, log=runlog.path)
    files, collisions = found.files, found.collisions
    summary.clips = len(files) + len(collisions)
    summary.files_skipped = [(p.relative_to(video_dir).as_posix() if p.is_relative_to(video_dir) else str(p), why)
                             for p, why in found.skipped]
    summary.extensions_seen = dict(found.seen.most_common())
    for path, why in summary.files_skipped:
        runlog.detail(f"skipped {path}: {why}")
    cache = FeatureCache(cache_dir)
    with cache.lock():
        tasks, summary.skipped = plan(files, extractors, cache, transcripts, retry_failed,
                                      f"csv:{Path(transcripts_source).name}" if transcripts_source else "csv")
        needed = {ex.key for t in tasks for ex in t.extractors}
        warming = [ex for ex in fed if ex.key in needed]
        executor = cluster or LocalExecutor(resolve_jobs(jobs, len(tasks), device))
        if isinstance(executor, LocalExecutor):
            main_pid, log_path = os.getpid(), str(runlog.path) if runlog.redirects else None
        else:  # workers elsewhere: no parent to watch, their output is the cluster's
            main_pid, log_path = None, None
        try:
            if warming:  # the workers import and load (seconds of CPU each) while this process checks
                executor.warm(warm, warming, main_pid, log_path)
            provenance = describe(extractors, warming, cache_dir, cluster)
            start = time.perf_counter()
            writers: dict[str, ShardWriter] = {}
            for ex in extractors:
                fs = cache.create(ex.key, provenance[ex.key])
                writers[ex.key] = ShardWriter(fs, ex.kind, {"source_dir": video_dir.name,
                                                             "transcripts": transcripts_source or ""})
            for cid, paths in sorted(collisions.items()):
                reason = collision_reason(paths, video_dir)
                for key, writer in writers.items():
                    if cid not in writer.fs.failures():
                        writer.fail(cid, reason)
                    summary.failures.append((cid, key, reason))
                    summary.failed[key] += 1
        except BaseException:
            executor.close()  # a usage error or a refused write before the first clip: the workers stop
            raise
        used = {transcript_for(cid, transcripts) is not None for cid in files}
        if transcripts and True not in used:
            _note(summary, "no transcript row matched a clip id (names must be clip ids or file stems)")
        last_flush = time.monotonic()
        unflushed = 0  # clips (not results: one clip gives one per feature set) since the last shard
        bar = tqdm(total=len(tasks), unit="clip", desc="extract", disable=not progress, dynamic_ncols=True)
        results = None
        failed_write: CacheWriteError | None = None  # the first write the cache refused
        try:
            results = executor.map(process, tasks, decode_config, threads, main_pid, log_path)
            for out in results:
                summary.decoded += int(out["decoded"])
                if out.get("rotation"):
                    summary.rotated[out["id"]] = out["rotation"]
                    runlog.detail(f"{out['id']}: frames turned {out['rotation']} degrees counter-clockwise "
                                  "(display matrix)")
                for key, note in out["notes"]:
                    summary.clip_notes.append((out["id"], key, note))
                    runlog.detail(f"{out['id']} [{key}]: {note}")
                summary.compute_seconds.update(out["seconds"])
                for key, value in out["results"].items():
                    if isinstance(value, Feature):
                        writers[key].add(out["id"], value)
                        summary.done[key] += 1
                    else:
                        writers[key].fail(out["id"], value)
                        summary.failed[key] += 1
                        summary.failures.append((out["id"], key, value))
                bar.update(1)
                # (clip, set) pairs, not clips: a clip without a transcript misses its text set only
                bar.set_postfix({"sets failed": sum(summary.failed.values())}, refresh=False)
                unflushed += 1
                if unflushed >= flush_every or time.monotonic() - last_flush > flush_seconds:
                    failed_write = flush_all(writers)
                    if failed_write is not None:
                        break  # the cache refuses writes: stop computing (the finally stops the workers)
                    last_flush, unflushed = time.monotonic(), 0
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            bar.close()
            summary.retried, summary.workers = executor.retried, executor.workers
            executor.close()  # a loop left early (write error, Ctrl-C, a bug) stops the workers
            failed_write = flush_all(writers) or failed_write  # whatever was computed is kept, even on Ctrl-C
        if failed_write is None and not summary.interrupted:
            failed_write = finish_sets(writers, compact_min_shards)
    if failed_write is not None:
        if not keep_loaded:
            close_loaded()
        raise stopped_by(failed_write, writers, summary) from None
    if summary.rotated:
        turns = Counter(summary.rotated.values())
        _note(summary, f"{len(summary.rotated)} clips carry a display rotation; their frames were turned upright ("
              + ", ".join(f"{deg} degrees counter-clockwise: {n}" for deg, n in sorted(turns.items())) + ")")
    if not keep_loaded:
        close_loaded()
    summary.seconds = time.perf_counter() - start
    return summary


def no_media_message(found: media.Scan) -> str:
    """The usage error of a folder with no media file: the folder, what was looked for and seen."""
    seen = ", ".join(f"{ext or '(no extension)'} {n}" for ext, n in found.seen.most_common(8))
    other = f"; it holds {sum(found.seen.values())} other files ({seen})" if found.seen else "; it is empty"
    return (f"no media files in {found.root} (looked for {' '.join(found.extensions)}, recursively){other}. "
            "Pass --extensions to read other containers.")


def collision_reason(paths: list[Path], root: Path) -> str:
    """Why two files are one clip id; names that print alike (NFC/NFD) show their code points."""
    import unicodedata

    names = [p.relative_to(root).as_posix() for p in paths]
    alike = len({unicodedata.normalize("NFC", n) for n in names}) < len(names)
    shown = [media.shown_name(n) if alike else n for n in names]
    return "ambiguous clip id: " + " and ".join(shown) + " map to the same id; rename one of them"


def _note(summary: Summary, text: str) -> None:
    """A note for the user: kept in the summary (the CLI prints it) and logged."""
    summary.notes.append(text)
    log.info("note: %s", text)


# -- where library output goes ---------------------------------------------------------------------

LOG_NAME = "extract.log"
LOG_MAX_BYTES = 5_000_000  # a longer log is moved to extract.log.1 when a run starts


def _fd_of(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class RunLog:
    """``CACHE/extract.log`` for the length of one run.

    C/C++ libraries (MediaPipe's TFLite and absl ``W0000 ...`` lines, FFmpeg) write straight to
    file descriptor 2, so fd 2 itself points at the log while the run lasts, in the main process
    and in the workers (:func:`process`), unless ``verbose``. Python's ``sys.stderr`` (the progress
    bar, click, the ``moe`` loggers' handlers) keeps the terminal. Python warnings and other
    libraries' log records go to the log too; the ``moe`` loggers keep their own handlers and are
    also copied to the log; :meth:`detail` lines (skipped files, per-clip notes) go to the log and,
    only when ``moe.extract`` logs INFO (``--verbose``), to the terminal."""

    def __init__(self, path: Path, verbose: bool = False):
        self.path = Path(path)
        self.verbose = verbose
        self.redirects = False  # fd 2 points at the log
        self.handler: logging.Handler | None = None

    def __enter__(self) -> "RunLog":
        import io
        import warnings

        try:  # the first write to the cache: a read-only or full one says so here, in one message
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                if self.path.stat().st_size > LOG_MAX_BYTES:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            except FileNotFoundError:
                pass
            self.handler = _LogFile(self.path, encoding="utf-8")
        except OSError as exc:
            if not is_write_error(exc):
                raise
            raise CacheWriteError(self.path.parent, f"opening its log {self.path}", exc,
                                  saved="nothing was written") from None
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._attached = [logging.getLogger()]
        if not logging.getLogger("moe").propagate:
            self._attached.append(logging.getLogger("moe"))
        for logger in self._attached:
            logger.addHandler(self.handler)
        self._warnings = None
        self._stderr = self._console = None
        self._swapped: list[logging.StreamHandler] = []
        if self.verbose:
            return self
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.showwarning = self._show_warning
        try:
            os.fstat(2)
        except OSError:
            return self  # no fd 2 to redirect
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        self._saved = os.dup(2)
        if _fd_of(sys.stderr) == 2:  # keep Python's own stderr writes on the terminal
            old = sys.stderr
            self._stderr = old
            self._console = io.TextIOWrapper(io.FileIO(self._saved, "w", closefd=False),
                                             encoding=getattr(old, "encoding", None) or "utf-8",
                                             errors="backslashreplace", line_buffering=True)
            sys.stderr = self._console
            for handler in _stream_handlers():
                if handler.stream is old:
                    handler.setStream(self._console)
                    self._swapped.append(handler)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
        self.redirects = True
        return self

    def __exit__(self, *exc) -> None:
        if self.redirects:
            if self._console is not None:
                self._console.flush()
            os.dup2(self._saved, 2)
            os.close(self._saved)
            if self._stderr is not None:
                sys.stderr = self._stderr
                for handler in self._swapped:
                    handler.setStream(self._stderr)
                self._console.close()
            self.redirects = False
        if self._warnings is not None:
            self._warnings.__exit__(None, None, None)
        for logger in self._attached:
            logger.removeHandler(self.handler)
        self.handler.close()

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        import warnings

        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        self.handler.handle(logging.makeLogRecord({"name": "py.warnings", "levelno": logging.WARNING,
                                                   "levelname": "WARNING", "msg": text}))

    def detail(self, text: str, terminal: bool = True) -> None:
        """A line for the log; on the terminal too when ``moe.extract`` logs INFO (--verbose)."""
        if terminal and log.isEnabledFor(logging.INFO):
            log.info(text)  # its handlers, and the log through the root or moe logger
        elif self.handler is not None:
            self.handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, text, None, None))


class _LogFile(logging.FileHandler):
    """The run's log file. A line it cannot write (the disk filled up) is dropped without the
    "--- Logging error ---" traceback logging prints: the run's own error says what happened."""

    def handleError(self, record) -> None:  # noqa: N802 - logging's name
        pass


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers if isinstance(h, logging.StreamHandler)]


_WORKER_LOG: str | None = None  # where this worker's fd 2 points now (None: where it was at start)
_WORKER_FD2: int | None = None  # a copy of the fd 2 this worker started with


def _worker_stderr(log_path: str | None) -> None:
    """Point this worker's fd 2 at the run's log (a reused worker may have served another run)."""
    global _WORKER_LOG, _WORKER_FD2
    if log_path == _WORKER_LOG:
        return
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    if _WORKER_FD2 is None:
        _WORKER_FD2 = os.dup(2)
    if log_path is None:
        os.dup2(_WORKER_FD2, 2)
    else:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    _WORKER_LOG = log_path


def close_loaded(only=None) -> None:
    """Close the extractors this process loaded (MediaPipe landmarkers, SDK clients); ``only``: just
    these extractor objects (and whatever this process loaded under their keys)."""
    keys = list(_LOADED) if only is None else [ex.key for ex in only]
    for ex in [*(_LOADED.pop(k) for k in keys if k in _LOADED), *(only or ())]:
        if not ex.loaded:
            continue
        try:
            ex.close()
        finally:
            ex.loaded = False


def flush_all(writers: dict[str, ShardWriter]) -> CacheWriteError | None:
    """Flush every writer; one the cache refuses does not stop the others (a full disk may still
    take a small shard). Returns the first refusal, or None."""
    first = None
    for w in writers.values():
        try:
            w.flush()
        except CacheWriteError as exc:
            first = first or exc
        except OSError as exc:
            if not is_write_error(exc):
                raise
            first = first or CacheWriteError(w.fs.path.parent, f"writing a shard of {w.fs.key}", exc)
    return first


def finish_sets(writers: dict[str, ShardWriter], min_shards: int) -> CacheWriteError | None:
    """The last phase of a run: compact each feature set, and record its dims if meta.json has none
    yet (a set whose first run was killed before they were written). Returns the first refusal."""
    for w in writers.values():
        try:
            compact(w.fs, min_shards=min_shards)
            w.fs.ensure_dims()
        except CacheWriteError as exc:
            return exc
        except OSError as exc:
            if not is_write_error(exc):
                raise
            return CacheWriteError(w.fs.path.parent, f"compacting {w.fs.key}", exc)
    return None


def stopped_by(error: CacheWriteError, writers: dict[str, ShardWriter], summary: Summary) -> CacheWriteError:
    """``error`` completed with what is safe: the clips this run wrote (and those cached before)."""
    written = set().union(*(w.written for w in writers.values())) if writers else set()
    safe = f"{len(written)} clips written so far in this run are safe"
    if summary.skipped:
        safe += f" (and the {summary.skipped} cached before)"
    error.saved = safe
    return error
