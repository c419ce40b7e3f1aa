"""The Recogniser's second process: a clip's audio feature sets are computed in one worker process
while this process computes the others (the face sets, text), instead of one after the other.

Why: on a CPU one 2-s clip of the default bundle costs about 0.25-0.45 s of audio work (whisper's
padded encoder most of it: 0.37 s in CTranslate2 float32, 0.16-0.2 s in bfloat16 on a CPU with
bfloat16 products) and 0.15 s of video work; with the audio side in a worker the two halves use both
cores. Which audio sets the worker computes is balanced from the seconds per clip the previous
calls measured (:func:`balance`): with bfloat16 whisper alone outweighs the face side, and eGeMAPS and
librosa then run here (this process decodes the audio too, about 5 ms per clip); a loaded Recogniser
on the default bundle, paired: 3.85 vs 2.93 clips/s per batch of 10 (1.31x), 2.52 vs 2.22 one clip
per call (bench/README.md). The first call puts every audio set in the worker, which loaded their
models while the bundle loaded (a cold one-clip run loads nothing audio here).

Each stream is decoded once per process that needs it: the worker decodes the audio, this process
the frames (and the audio when an audio set runs here). The worker writes its sets into a temporary
cache of its own (a cache has one writer), whose set folders are then moved into the Recogniser's
temporary cache; the values are the ones a single process computes (same extractors, same
configuration; whisper's thread count does not change them). Used only where it can help: at least
two usable cores, no GPU, a bundle with both audio-only and other sets, and the Recogniser's own
temporary cache (with ``cache=`` given, one process extracts, so a re-run finds every set there). A
worker that dies costs nothing but time: its sets are computed here instead; so are the sets whose
model the worker could not load (its warm-up says which, or its first clips do), and if this process
cannot load one either, the call stops with the usage error one process gives.
"""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
from pathlib import Path

LOG = logging.getLogger("moe.ensemble")


def audio_only(ex) -> bool:
    """A set the worker can compute alone: it reads only the audio and hands nothing to the others
    (an ASR set's transcript feeds the text sets, so it stays with them)."""
    return tuple(ex.needs) == ("audio",) and not ex.provides


def wanted(extractors, device: str) -> bool:
    """Whether splitting these extractors over two processes can help here."""
    from extract.executors import gpu_visible, usable_cores

    audio = [ex for ex in extractors if audio_only(ex)]
    on_cpu = device == "cpu" or (device == "auto" and not gpu_visible())
    return on_cpu and usable_cores() >= 2 and 0 < len(audio) < len(extractors)


def balance(audio: dict[str, float], rest: float, audio_decode: float) -> set[str]:
    """The audio sets (key -> seconds per clip) the worker computes so that the larger of the two
    processes' shares of a clip is smallest; the others run here beside ``rest`` (seconds per clip of
    this process's own sets and decode), which then decodes the audio too (``audio_decode``). The
    worker keeps at least one set; a tie keeps more in the worker."""
    keys = sorted(audio, key=lambda k: (-audio[k], k))
    best: tuple[float, set[str]] | None = None
    for size in range(len(keys), 0, -1):
        for chosen in itertools.combinations(keys, size):
            moved = [k for k in keys if k not in chosen]
            here = rest + sum(audio[k] for k in moved) + (audio_decode if moved else 0.0)
            span = max(here, sum(audio[k] for k in chosen) + audio_decode)
            if best is None or span < best[0] - 1e-9:
                best = (span, set(chosen))
    return best[1] if best else set()


class AudioWorker:
    """One worker process holding the audio extractors, loaded once (it starts loading at once)."""

    def __init__(self, extractors, decode, log_path: str | None = None):
        from extract.executors import local_pool
        from extract.runner import warm

        self.audio = [ex for ex in extractors if audio_only(ex)]
        self.rest = [ex for ex in extractors if not audio_only(ex)]
        self.decode = decode
        self.warming = local_pool(1).submit(warm, self.audio, os.getpid(), log_path)
        # seconds per clip of each set and of decoding, as the last call measured them
        self.costs: dict[str, float] = {}
        self.calls: dict[tuple[str, str], int] = {}  # (set or decode, which process) -> runs seen
        self.balanced = True  # False: every audio set in the worker (bench/bench_recognise.py compares)
        self.reported: set[str] = set()  # sets the worker could not load, already said

    def _seen(self, summary, extractors, decode: str) -> None:
        """Record a run's seconds per clip of each set and of decoding (as ``decode``). A set's first
        run in a process may include loading its model: the first measurement of each is not kept.
        This process's decoding is kept only from calls that decoded no audio here (``balance`` adds the
        audio's decoding to it when it moves sets here: counted twice, the next split would be off)."""
        seen = [(ex.key, summary.done.get(ex.key, 0), summary.compute_seconds.get(ex.key, 0.0)) for ex in extractors]
        if decode != "decode here" or not any(ex in self.audio for ex in extractors):
            seen.append((decode, summary.decoded, summary.compute_seconds.get("decode", 0.0)))
        for name, done, seconds in seen:
            if done:
                self.calls[name, decode] = self.calls.get((name, decode), 0) + 1
                if self.calls[name, decode] > 1:
                    self.costs[name] = seconds / done

    def plan(self) -> list:
        """The audio extractors for the worker this call: all of them until both processes' costs are
        known, then the split :func:`balance` finds (on a CPU with bfloat16 the default bundle's
        whisper is cheap enough that eGeMAPS and librosa balance better here)."""
        unloadable = self.unloadable()
        audio = [ex for ex in self.audio if ex.key not in unloadable]
        known = [ex.key for ex in audio] + ["decode audio", "decode here"]
        if not audio or not self.balanced or not all(k in self.costs for k in known):
            return audio
        rest = sum(self.costs.get(ex.key, 0.0) for ex in self.rest)  # a set no clip could feed costs nothing
        chosen = balance({ex.key: self.costs[ex.key] for ex in audio}, rest + self.costs["decode here"],
                         self.costs["decode audio"])
        return [ex for ex in audio if ex.key in chosen]

    def unloadable(self) -> set[str]:
        """The audio sets whose model the worker's warm-up could not load (computed here instead: if
        this process cannot load one either, its run stops with the usage error of one process);
        nothing while the warm-up runs or when the worker died (a broken pool, handled by ``extract``)."""
        if not self.warming.done() or self.warming.exception() is not None:
            return set()
        errors = (self.warming.result() or {}).get("errors") or {}
        for key in sorted(set(errors) - self.reported):
            LOG.warning("the audio worker cannot load %s (%s): computed in this process", key, errors[key])
            self.reported.add(key)
        return set(errors)

    def extract(self, folders: list[Path], cache, run_here) -> None:
        """The audio sets of ``folders`` in the worker while ``run_here(folder, extractors, cache)``
        computes the other sets here; then the worker's sets are moved into ``cache``."""
        from concurrent.futures.process import BrokenProcessPool

        from extract.cache import FeatureCache
        from extract.executors import local_pool
        from extract.runner import UsageError, run_extract_warm

        side = Path(tempfile.mkdtemp(prefix="moe-recognise-audio-"))
        there = self.plan()
        here = self.rest + [ex for ex in self.audio if ex not in there]
        try:
            try:
                pool = local_pool(1)  # the same worker, or a new one if it was stopped (it loads again)
                futures = [pool.submit(run_extract_warm, folder, there, side, self.decode, 1)
                           for folder in folders] if there else []
            except (BrokenProcessPool, RuntimeError) as exc:  # the pool is gone (a worker died earlier)
                futures, broken = [], exc
            else:
                broken = None
            for folder in folders:
                self._seen(run_here(folder, here, cache), here, "decode here")
            try:
                summaries = [f.result() for f in futures]
            except (BrokenProcessPool, UsageError) as exc:  # died, or a model it could not load (see plan)
                broken = exc
            if not there:
                return
            if broken is None:
                for summary in summaries:
                    self._seen(summary, there, "decode audio")
                for key in FeatureCache(side).keys():
                    os.replace(side / key, Path(cache) / key)
                return
            LOG.warning("the audio worker could not compute its feature sets (%s): they are computed here",
                        str(broken) or type(broken).__name__)
            for folder in folders:
                run_here(folder, there, cache)
        finally:
            shutil.rmtree(side, ignore_errors=True)
