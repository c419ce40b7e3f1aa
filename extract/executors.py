"""Where the clips of an extract run are decoded and computed: local worker processes (joblib, the
default) or a Dask cluster (``--scheduler``). Either way the calling process stays the one writer of
the cache (extract/runner.py) and receives each clip's results as they finish.

Dask (``distributed``, as lhotse's feature extraction does through an ``Executor``):

* ``--scheduler tcp://HOST:8786``: an existing cluster (``dask-jobqueue`` starts one on SLURM/PBS,
  see the README); ``--scheduler local:N``: a local cluster of N single-threaded worker processes
  bound to 127.0.0.1.
* Each worker loads its models once (the runner's per-process model table), runs one clip at a time
  (one thread), so it never runs two GPU models at once on its device. The client loads none: the
  first worker that warms up returns the provenance it computed (``first_warm_up``).
* GPUs: with ``--device cuda`` a local cluster gives worker i the GPU ``i mod n`` through
  ``CUDA_VISIBLE_DEVICES`` (:func:`gpu_assignment`) and declares a ``GPU`` resource; on any cluster,
  clips are submitted with ``resources={"GPU": 1}``, so they go only to workers that declare one.
* A worker that dies: Dask runs its clips again on another worker; the client writes each clip once
  (one result per clip). The summary counts the clips that were retried (a scheduler plugin reads
  the task's ``suspicious`` count). Results stream back through a bounded window of clips in
  flight, so the client's memory stays flat.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

SCHEDULER_HELP = ("tcp://HOST:PORT (an existing Dask cluster), local:N (a local cluster of N workers), or "
                  "none (local worker processes, --jobs)")


class SchedulerError(ValueError):
    """A --scheduler value that cannot be used (message says why)."""


#: ``--jobs auto`` uses one process when fewer clips than this are to be computed: a worker pays
#: 10-20 s of CPU before its first clip (imports, model loading, librosa's numba compilation;
#: bench/bench_scale.py), more than it saves on a short run
AUTO_MIN_CLIPS = 32
#: ``--jobs auto`` gives each process at least this many clips and this much available memory (the
#: default set's extraction peaks at about 1.6 GiB per process, bench/bench_inputs.py)
AUTO_CLIPS_PER_PROCESS = 16
AUTO_GIB_PER_PROCESS = 2.0


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM allocation), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def gpu_visible() -> bool:
    """Whether a CUDA device is visible, without importing torch for a signal-only run (torch's answer
    when it is already imported, else the NVIDIA driver's device node)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    return os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES", "0") not in ("", "-1")


def resolve_jobs(jobs, pending: int, device: str = "cpu") -> int:
    """The number of local processes for ``--jobs`` (an int >= 1, or "auto"): auto is one per usable
    core, bounded by the available memory and by the clips to compute (see :data:`AUTO_MIN_CLIPS`);
    on a GPU one process (one model set per device: use ``--scheduler local:N`` for one per GPU).
    One clip (or none) is computed in the calling process whatever ``jobs`` says: no worker starts
    (and warms up) for it."""
    if pending <= 1:
        return 1
    if jobs != "auto":
        return int(jobs)
    if device == "cuda" or (device == "auto" and gpu_visible()) or pending < AUTO_MIN_CLIPS:
        return 1
    import psutil

    by_memory = int(psutil.virtual_memory().available / 2 ** 30 // AUTO_GIB_PER_PROCESS)
    return max(1, min(usable_cores(), by_memory, pending // AUTO_CLIPS_PER_PROCESS))


def gpu_assignment(n_workers: int, n_gpus: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES of each local worker: worker i gets GPU i mod n_gpus."""
    if n_gpus < 1:
        raise SchedulerError("--device cuda: no CUDA device is available here")
    return [str(i % n_gpus) for i in range(n_workers)]


def parse_scheduler(text: str | None) -> tuple[str, object] | None:
    """``None``/``none`` -> None; ``local:N`` -> ("local", N); ``tcp://...``/``tls://...`` -> ("address", text)."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    text = str(text).strip()
    try:
        import distributed  # noqa: F401 - installed with this package, unless pip ran with --no-deps
    except ImportError:
        raise SchedulerError(f"--scheduler {text}: needs Dask's distributed package (pip install distributed), "
                             "which is not installed here") from None
    if text.startswith("local"):
        _, _, n = text.partition(":")
        try:
            workers = int(n) if n else (os.cpu_count() or 1)
        except ValueError:
            raise SchedulerError(f"--scheduler {text!r}: give local:N with N a number of workers") from None
        if workers < 1:
            raise SchedulerError(f"--scheduler {text!r}: N must be >= 1")
        return "local", workers
    if "://" in text or ":" in text:
        return "address", text
    raise SchedulerError(f"--scheduler {text!r}: {SCHEDULER_HELP}")


# -- local worker processes -------------------------------------------------------------------------

#: a run's worker processes wait this long for the next run (the Recogniser's calls, a notebook's
#: next extract) with their models loaded, then exit; stop_local_workers() ends them at once
LOCAL_IDLE_SECONDS = 120
_LAST_POOL = None  # the worker pool the last run with --jobs N > 1 used


def local_pool(workers: int):
    """The pool of ``workers`` local worker processes (loky's reusable one, as joblib uses): started
    on first use, reused by the next run while its workers wait (:data:`LOCAL_IDLE_SECONDS`), ended
    by :func:`stop_local_workers`."""
    global _LAST_POOL
    from joblib.externals.loky import get_reusable_executor

    _LAST_POOL = get_reusable_executor(max_workers=workers, timeout=LOCAL_IDLE_SECONDS)
    return _LAST_POOL


#: the live objects (Recognisers) that keep the local workers for their next calls: one of them
#: closing must not end the workers another still uses (weak: one never closed drops out when freed)
_HOLDERS = weakref.WeakSet()


def hold_local_workers(holder) -> None:
    """``holder`` uses the local workers between its calls: :func:`stop_local_workers` of another
    holder leaves them running while ``holder`` holds them."""
    _HOLDERS.add(holder)


def stop_local_workers(holder=None) -> None:
    """End the worker processes that runs with ``jobs`` > 1 left waiting for the next one (each holds
    its loaded models: about 1.6 GB with the default features); the next such run starts new ones.
    With ``holder``: ``holder`` lets them go, and they end only if no other holder keeps them (a
    ``holder`` that never held them ends nothing)."""
    global _LAST_POOL
    if holder is not None:
        if holder not in _HOLDERS:
            return
        _HOLDERS.discard(holder)
        if _HOLDERS:
            return
    pool, _LAST_POOL = _LAST_POOL, None
    if pool is not None:
        pool.shutdown(wait=False, kill_workers=True)


class LocalExecutor:
    """Local processes. ``jobs`` 1: every clip in this process. ``jobs`` N > 1: N - 1 worker processes
    (loky, as joblib uses) AND this process, which already holds its loaded models: a worker costs
    seconds of CPU to start (imports, model loading, numba compilation), which this process has paid
    already, so it computes clips itself instead of waiting while the workers start. Results come back
    as they finish; values do not depend on where a clip ran (same code, same thread counts)."""

    retried = 0

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.workers = jobs
        self._pool = None
        self._pending: set = set()
        self._warming: list = []
        self._exhausted = False  # map() gave every result (a loop that stopped early leaves it False)

    def _start_pool(self):
        if self._pool is None:
            self._pool = local_pool(self.jobs - 1)
        return self._pool

    def warm(self, fn, *args) -> None:
        """Start the worker processes now, each loading the run's models (``fn(*args)``, runner.warm)
        as its first task, without waiting: they import and load while this process checks the
        extractors and loads its own, instead of after (the second core sat idle meanwhile)."""
        if self.jobs == 1:
            return
        pool = self._start_pool()
        self._warming = [pool.submit(fn, *args) for _ in range(self.jobs - 1)]

    def map(self, fn, tasks, *args):
        tasks = list(tasks)
        if self.jobs == 1 or len(tasks) <= 1:
            for t in tasks:
                yield fn(t, *args)
            return
        from concurrent.futures import FIRST_COMPLETED, wait

        self._start_pool()
        window = 2 * (self.jobs - 1)
        it = iter(tasks)
        pending = self._pending

        def fill() -> None:
            while len(pending) < window:
                t = next(it, None)
                if t is None:
                    return
                pending.add(self._pool.submit(fn, t, *args))

        fill()
        while True:
            for f in [f for f in pending if f.done()]:
                pending.discard(f)
                yield f.result()
            fill()
            t = next(it, None)
            if t is not None:  # this process takes the next clip while the workers compute theirs
                yield fn(t, *args)
                continue
            if not pending:
                self._exhausted = True
                return
            wait(pending, return_when=FIRST_COMPLETED)

    def close(self) -> None:
        """Called at the end of a run; after a loop left early (write error, Ctrl-C) the clips not
        started are cancelled and the workers stopped."""
        if self._pool is None:
            return
        unfinished = [f for f in [*self._warming, *self._pending] if not f.done()]
        for f in unfinished:
            f.cancel()
        # left early: stop the workers even when none is computing at this moment (clips not yet
        # submitted, or every submitted one already done), so none waits idle for the next run's work
        if unfinished or not self._exhausted:
            self._pool.shutdown(wait=False, kill_workers=True)
        self._pending.clear()
        self._warming.clear()


# -- Dask ---------------------------------------------------------------------------------------------

def _retry_plugin():
    from distributed.diagnostics.plugin import SchedulerPlugin

    class RetryCounter(SchedulerPlugin):
        """Counts the tasks that finished after a worker holding them died (``suspicious`` > 0)."""

        name = "moe-emotion-retries"

        def __init__(self):
            self.retried: set = set()
            self.scheduler = None

        async def start(self, scheduler):
            self.scheduler = scheduler

        def transition(self, key, start, finish, *args, **kwargs):
            if finish == "memory" and self.scheduler is not None:
                ts = self.scheduler.tasks.get(key)
                if ts is not None and ts.suspicious:
                    self.retried.add(str(key))

    return RetryCounter()


def _read_retried(dask_scheduler=None):
    plugin = dask_scheduler.plugins.get("moe-emotion-retries")
    return sorted(k for k in plugin.retried if k.startswith("moe-clip-")) if plugin is not None else None


#: Dask's Nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc hand memory back
#: to the OS so eagerly that every whisper encode (large float32 buffers) faults its pages in again:
#: 551 vs 368 ms per 2-s clip, face-cnn 52 vs 16 ms (one process, one thread). Workers of a local
#: cluster start without it (README: set the same for your own cluster's workers)
SPAWN_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
#: the workers of a local cluster do not run Dask's statistical profiler (it samples the computing
#: thread's stack every 10 ms, CPU taken from the clips; the dashboard that shows it is off here)
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}  # a dotted key: Nanny merges config shallowly


@dataclass
class LocalClusterSpec:
    workers: int
    gpus: list[str] | None  # CUDA_VISIBLE_DEVICES per worker (None: CPU)


def start_local_cluster(spec: LocalClusterSpec):
    """A local Dask cluster on 127.0.0.1: one single-threaded worker process (a Nanny) per worker."""
    import dask
    from distributed import Nanny, Scheduler, SpecCluster

    from .dask_plugins import SkipTeardown

    workers = {}
    for i in range(spec.workers):
        opts = {"nthreads": 1, "host": "127.0.0.1", "dashboard_address": None, "silence_logs": 40,
                "config": WORKER_CONFIG, "plugins": {SkipTeardown()}}  # our own workers only
        if spec.gpus is not None:
            opts["env"] = {"CUDA_VISIBLE_DEVICES": spec.gpus[i]}
            opts["resources"] = {"GPU": 1}
        workers[f"moe-{i}"] = {"cls": Nanny, "options": opts}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    with dask.config.set(SPAWN_CONFIG):  # read by each Nanny as it starts (in this process)
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=40)


#: how long a Dask client waits for the first worker to load the run's models (it writes that
#: worker's provenance; a large model on a slow file system can take minutes) before it computes the
#: provenance itself
WARM_UP_TIMEOUT = 900.0


#: how long a refused connection to ``--scheduler tcp://...`` is retried before the run stops (a
#: scheduler started a moment before, e.g. in the same batch script); a host that does not answer at
#: all is left to Dask's connect timeout (a slow or filtered network)
PROBE_SECONDS = 5.0


def probe_scheduler(address: str, seconds: float | None = None) -> None:
    """Stops at once, with what is wrong, when no Dask scheduler can be at a ``tcp://``/``tls://``
    ``address``: an unknown host, a malformed port, or a port nothing listens on (refused for
    ``seconds``, default :data:`PROBE_SECONDS`); Dask's own connect would wait its whole timeout
    (20 s) to say "timed out"."""
    import socket

    import tenacity
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    try:
        scheme, location = parse_address(address)
    except ValueError as exc:
        raise SchedulerError(f"--scheduler {address}: {exc}") from None
    if scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parse_host_port(location, default_port=8786)
    except (ValueError, TypeError):
        raise SchedulerError(f"--scheduler {address}: give tcp://HOST:PORT") from None
    if not 0 < port < 65536:
        raise SchedulerError(f"--scheduler {address}: the port must be 1-65535, not {port}")
    seconds = PROBE_SECONDS if seconds is None else seconds

    def connect() -> None:
        socket.create_connection((host, port), timeout=seconds).close()

    try:
        tenacity.Retrying(stop=tenacity.stop_after_delay(seconds), wait=tenacity.wait_fixed(0.25),
                          retry=tenacity.retry_if_exception_type(ConnectionRefusedError), reraise=True)(connect)
    except socket.gaierror:
        raise SchedulerError(f"--scheduler {address}: unknown host {host!r}") from None
    except ConnectionRefusedError:
        raise SchedulerError(f"--scheduler {address}: nothing listens on {host}:{port} (connection refused; "
                             "is the Dask scheduler started, and is this its address?)") from None
    except OSError:  # no answer in time, no route: Dask's connect decides, with its timeout
        return


class DaskExecutor:
    """Clips on a Dask cluster; results as they finish (not in clip order)."""

    def __init__(self, scheduler: str, device: str = "cpu", window_per_worker: int = 3):
        kind, value = parse_scheduler(scheduler)
        from distributed import Client

        self.cluster = None
        if kind == "local":
            gpus = None
            if device == "cuda":
                import torch

                gpus = gpu_assignment(value, torch.cuda.device_count())
            self.cluster = start_local_cluster(LocalClusterSpec(value, gpus))
            self.client = Client(self.cluster, set_as_default=False)
        else:
            probe_scheduler(value)
            try:
                self.client = Client(value, timeout="20s", set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise SchedulerError(f"--scheduler {value}: cannot reach the Dask scheduler ({exc})") from None
        self.resources = {"GPU": 1} if device == "cuda" else None
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        self.window = max(2, window_per_worker * self.workers)
        self.retried = 0
        self._warming: list = []  # (worker, warm-up future), held: Dask forgets a task whose future is dropped
        self._plugin = False
        try:
            self.client.register_plugin(_retry_plugin())
            self._plugin = True
        except Exception:  # noqa: BLE001 - a scheduler without this package: retries are not counted
            self.retried = None

    def warm(self, fn, *args) -> None:
        """Each worker of the cluster runs ``fn(*args)`` (extract/runner.warm: load the run's models)
        as its first task, without waiting for it: the workers import and load while this process
        checks the extractors and plans, instead of after. A worker that joins later loads with its
        first clip, as before; a warm-up that fails is left to the clips (each reports its error)."""
        import uuid

        tag = uuid.uuid4().hex[:8]
        for addr in self.client.scheduler_info().get("workers", {}):
            fut = self.client.submit(fn, *args, key=f"moe-warm-{tag}-{addr}", pure=False, workers=[addr],
                                     allow_other_workers=False, resources=self.resources, retries=0)
            self._warming.append((addr, fut))

    def first_warm_up(self, timeout: float = WARM_UP_TIMEOUT) -> tuple[str | None, object]:
        """The first worker whose warm-up loaded every model, and what it returned; when every
        warm-up reported a model it could not load, the first of them (one misconfigured worker
        does not stop a run that others can do); ``(None, {})`` when none finished within
        ``timeout`` seconds (no worker yet, e.g. a cluster that scales up with the work; every
        warming worker died; none declares the GPU the run needs)."""
        from distributed import as_completed

        where = {fut.key: addr for addr, fut in self._warming}
        failed: tuple[str | None, object] = (None, {})
        if not where:
            return failed
        try:
            for fut in as_completed([f for _, f in self._warming], loop=self.client.loop, timeout=timeout):
                if fut.status != "finished":
                    continue
                got = fut.result()
                if not got.get("errors"):
                    return where[fut.key], got
                if failed[0] is None:
                    failed = (where[fut.key], got)
        except TimeoutError:  # distributed's is the built-in one
            pass
        return failed

    def map(self, fn, tasks, *args):
        from distributed import as_completed

        tasks = list(tasks)
        if not tasks:
            return
        it = iter(enumerate(tasks))

        def submit(k, task):
            return self.client.submit(fn, task, *args, key=f"moe-clip-{k}-{task.id[:60]}", pure=False,
                                      resources=self.resources, retries=0)

        first = [submit(k, t) for k, t in (next(it) for _ in range(min(self.window, len(tasks))))]
        pending = as_completed(first, loop=self.client.loop)

        def submit_next() -> None:
            nxt = next(it, None)
            if nxt is not None:
                pending.add(submit(*nxt))

        for fut in pending:
            out = fut.result()
            fut.release()
            submit_next()
            yield out
        if self._plugin:
            got = self.client.run_on_scheduler(_read_retried)
            self.retried = len(got) if got is not None else None

    def close(self) -> None:
        """Closes the client and a local cluster; a second call does nothing."""
        client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        self._warming.clear()
        try:
            if client is not None:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()


def cluster_device(address: str, device: str, timeout: str = "20s") -> str:
    """cpu or cuda: what a run on the existing cluster at ``address`` plans for (its feature keys, the
    clips' resources), read from the workers' declared resources, not this process's hardware (a
    login node without a GPU drives GPU workers). ``auto``: cuda when there are workers and every
    one declares a ``GPU`` resource, else cpu; ``cuda``: refused when workers are there and none
    declares one (the clips would wait for ever); none yet (a cluster that scales up): as asked."""
    from distributed import Client

    probe_scheduler(address)
    try:
        with Client(address, timeout=timeout, set_as_default=False) as client:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except (OSError, TimeoutError) as exc:
        raise SchedulerError(f"--scheduler {address}: cannot reach the Dask scheduler ({exc})") from None
    with_gpu = [w for w in workers.values() if (w.get("resources") or {}).get("GPU")]
    if device == "cuda":
        if workers and not with_gpu:
            raise SchedulerError(f"--device cuda: none of the {len(workers)} worker(s) of {address} declares a "
                                 "GPU resource (start them with --resources GPU=1, or use dask-cuda-worker)")
        return "cuda"
    return "cuda" if workers and len(with_gpu) == len(workers) else "cpu"


def start_cluster(scheduler: str | None, device: str) -> "DaskExecutor | None":
    """The Dask executor of a run with ``--scheduler`` (started before the run checks and plans, so
    its workers can warm up meanwhile); None without one."""
    return None if parse_scheduler(scheduler) is None else DaskExecutor(scheduler, device)
