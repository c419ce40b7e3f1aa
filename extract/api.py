"""The extract stage as a Python API: what `cli.py extract` does, without click.

    from extract import extract, ExtractConfig
    summary = extract("videos", cache="cache", features="librosa,egemaps", jobs=2)
    summary.cache, summary.keys, summary.done, summary.failed, summary.failures

:class:`ExtractConfig` holds every option of `cli.py extract` with its default; it is the one
source of those defaults (the click options read theirs from it). :func:`extract` raises
:class:`extract.runner.UsageError` or :class:`extract.registry.SpecError` for bad options (nothing
was done), :class:`extract.cache.CacheError` for a cache it cannot use; bad clips are not errors,
they are recorded as failures in the cache and listed in the returned summary. Messages go through
``logging`` (logger ``moe.extract``); nothing here prints.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, fields

from . import media
from .defaults import DEFAULT_FEATURES
from .runner import Summary, UsageError, load_transcripts, parse_shard, run_extract

log = logging.getLogger("moe.extract")

DEFAULT_CACHE = "cache"
DEVICES = ("auto", "cpu", "cuda")


def parse_extensions(value) -> tuple[str, ...]:
    """``".mp4,ts, .MKV"`` or a sequence -> ``(".mp4", ".ts", ".mkv")`` (lower case, dotted, unique)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (str(i).strip().lower() for i in items):
        if not item:
            continue
        ext = item if item.startswith(".") else "." + item
        if ext == "." or any(ch in ext for ch in "/\\ *?"):
            raise UsageError(f"--extensions: {item!r} is not a file extension (e.g. .mp4)")
        if ext not in out:
            out.append(ext)
    return tuple(out)


@dataclass
class ExtractConfig:
    """Every option of `cli.py extract` (same names, ``_`` for ``-``) with its default."""

    #: feature SPECs; each item may hold several comma-separated SPECs (see extract.registry)
    features: tuple[str, ...] = (DEFAULT_FEATURES,)
    transcripts: str | None = None  # CSV with name,text (or MER's name,chinese,english)
    text_column: str | None = None  # transcript column (default: "text")
    fps: float = media.DecodeConfig.fps
    max_frames: int = media.DecodeConfig.max_frames
    max_side: int = media.DecodeConfig.max_side
    #: local processes: an int >= 1, or "auto" (one per usable core, fewer for short runs or little
    #: memory: extract.executors.resolve_jobs)
    jobs: int | str = "auto"
    threads: int = 1  # torch, BLAS and CTranslate2 threads per process
    device: str = "auto"
    strict: bool = False  # the CLI exits 1 when any clip failed (see Summary.exit_code)
    retry_failed: bool = False
    flush_every: int = 32  # clips per shard (a shard is also written every 10 s)
    progress: bool = True
    #: file extensions taken as media under VIDEO_DIR (a comma-separated string is accepted)
    extensions: tuple[str, ...] = media.MEDIA_EXTENSIONS
    #: library output (MediaPipe/absl lines, warnings) on the terminal instead of CACHE/extract.log
    verbose: bool = False
    #: where clips are computed: None (local worker processes, ``jobs``), "local:N" or "tcp://HOST:PORT" (Dask)
    scheduler: str | None = None
    #: "i/n": only shard i of n (1-based) of the sorted clip ids (batch arrays, e.g. SLURM); join with cache merge
    shard: str | None = None

    def __post_init__(self):
        if isinstance(self.features, str):
            self.features = (self.features,)
        self.features = tuple(self.features) or (DEFAULT_FEATURES,)
        self.extensions = parse_extensions(self.extensions)
        if self.transcripts is not None:
            self.transcripts = os.fspath(self.transcripts)

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the first option out of range."""
        if self.jobs != "auto" and (isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1):
            raise UsageError(f"--jobs must be auto or an integer >= 1, not {self.jobs!r}")
        for name, low in (("threads", 1), ("max_frames", 1), ("max_side", 1), ("flush_every", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {low}, not {value!r}")
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not self.fps > 0 \
                or self.fps == float("inf"):
            raise UsageError(f"--fps must be a number > 0, not {self.fps!r}")
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if not self.extensions:
            raise UsageError("--extensions is empty: name at least one, e.g. .mp4")
        from .executors import SchedulerError, parse_scheduler
        from .runner import parse_shard

        parse_shard(self.shard)
        try:
            parse_scheduler(self.scheduler)
        except SchedulerError as exc:
            raise UsageError(str(exc)) from None

    def decode_config(self) -> media.DecodeConfig:
        return media.DecodeConfig(fps=float(self.fps), max_frames=self.max_frames, max_side=self.max_side)

    def specs(self) -> list[str]:
        from .registry import split_specs

        return [s for value in self.features for s in split_specs(value)]


def config_from(config: ExtractConfig | None = None, **overrides) -> ExtractConfig:
    """``config`` (default: all defaults) with ``overrides`` applied, validated."""
    config = config if config is not None else ExtractConfig()
    if overrides:
        known = {f.name for f in fields(ExtractConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown extract option(s) {', '.join(unknown)}; options: {', '.join(sorted(known))}")
        config = dataclasses.replace(config, **overrides)
    config.validate()
    return config


def extract(video_dir: str | os.PathLike, cache: str | os.PathLike = DEFAULT_CACHE,
            config: ExtractConfig | None = None, **overrides) -> Summary:
    """Decode every media file under ``video_dir`` once and cache the requested features in
    ``cache``; return the run's :class:`~extract.runner.Summary` (cache folder, feature keys, counts
    per key, failures, files skipped). ``overrides`` are :class:`ExtractConfig` fields."""
    from .registry import build, load_all

    cfg = config_from(config, **overrides)
    load_all()
    decode = cfg.decode_config()
    device = resolved_device(cfg.device, cfg.scheduler)
    # "auto" is resolved where a model loads, so signal-only runs never import torch; on a cluster
    # every worker computes what the run planned (the keys): the device as resolved for the cluster
    from .executors import parse_scheduler

    planned = device if parse_scheduler(cfg.scheduler) is not None else cfg.device
    extractors = [build(spec, decode=decode, device=planned) for spec in cfg.specs()]
    texts = load_transcripts(cfg.transcripts, cfg.text_column) if cfg.transcripts else {}
    return run_extract(video_dir, extractors, cache, decode, texts, cfg.transcripts, jobs=cfg.jobs,
                       threads=cfg.threads, retry_failed=cfg.retry_failed, flush_every=cfg.flush_every,
                       progress=cfg.progress, extensions=cfg.extensions, verbose=cfg.verbose, scheduler=cfg.scheduler,
                       device=device, shard=parse_shard(cfg.shard))


def resolved_device(device: str, scheduler: str | None) -> str:
    """The device the executor plans for (GPU assignment, resources). Without a scheduler, or with
    --device cpu, nothing needs to know: "auto" is resolved where a model loads, so signal-only runs
    never import torch. An existing cluster is asked (its workers' declared GPU resources), not this
    machine; a local one is this machine."""
    from .executors import SchedulerError, cluster_device, gpu_visible, parse_scheduler

    if device == "cpu" or not scheduler:  # local processes: each extractor resolves (and checks) its device
        return "cpu"
    try:
        kind, address = parse_scheduler(scheduler) or (None, None)
        if kind == "address":
            return cluster_device(address, device)
    except SchedulerError as exc:
        raise UsageError(str(exc)) from None

    if device == "auto" and not gpu_visible():  # no NVIDIA driver: cpu, without importing torch (1-2 s)
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise UsageError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return "cpu"
