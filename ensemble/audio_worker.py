"""The Recogniser's second process: a clip's audio feature sets are computed in one worker process
while this process computes the others (the face sets, text), instead of one after the other.

Why: on a CPU one 2-s clip of the default bundle costs about 0.5 s of audio work (whisper's padded
encoder most of it) and 0.3 s of video work, one after the other in one process; with the audio side
in a worker the two halves use both cores (a loaded Recogniser 1.06-1.12x clips/s, paired; a cold
one, whose worker starts loading when the Recogniser is created, gained 1.10-1.14x while the face
side imported torchvision and nothing measurable since: bench/README.md).

Each stream is still decoded once: the worker decodes the audio, this process the frames. The worker
writes its sets into a temporary cache of its own (a cache has one writer), whose set folders are then
moved into the Recogniser's temporary cache; the values are the ones a single process computes (same
extractors, same configuration; whisper's thread count does not change them). Used only where it
can help: at least two usable cores, no GPU, a bundle with both audio-only and other sets, and the
Recogniser's own temporary cache (with ``cache=`` given, one process extracts, so a re-run finds
every set there). A worker that dies costs nothing but time: its sets are computed here instead.
"""
from __future__ import annotations

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


class AudioWorker:
    """One worker process holding the audio extractors, loaded once (it starts loading at once)."""

    def __init__(self, extractors, decode, log_path: str | None = None):
        from extract.executors import local_pool
        from extract.runner import warm

        self.audio = [ex for ex in extractors if audio_only(ex)]
        self.rest = [ex for ex in extractors if not audio_only(ex)]
        self.decode = decode
        self.warming = local_pool(1).submit(warm, self.audio, os.getpid(), log_path)

    def extract(self, folders: list[Path], cache, run_here) -> None:
        """The audio sets of ``folders`` in the worker while ``run_here(folder, extractors, cache)``
        computes the other sets here; then the worker's sets are moved into ``cache``."""
        from concurrent.futures.process import BrokenProcessPool

        from extract.cache import FeatureCache
        from extract.executors import local_pool
        from extract.runner import run_extract_warm

        side = Path(tempfile.mkdtemp(prefix="moe-recognise-audio-"))
        try:
            try:
                pool = local_pool(1)  # the same worker, or a new one if it was stopped (it loads again)
                futures = [pool.submit(run_extract_warm, folder, self.audio, side, self.decode, 1)
                           for folder in folders]
            except (BrokenProcessPool, RuntimeError) as exc:  # the pool is gone (a worker died earlier)
                futures, broken = [], exc
            else:
                broken = None
            for folder in folders:
                run_here(folder, self.rest, cache)
            try:
                for f in futures:
                    f.result()
            except BrokenProcessPool as exc:
                broken = exc
            if broken is None and futures:
                for key in FeatureCache(side).keys():
                    os.replace(side / key, Path(cache) / key)
                return
            LOG.warning("the audio worker process stopped (%s): its feature sets are computed here",
                        str(broken) or type(broken).__name__)
            for folder in folders:
                run_here(folder, self.audio, cache)
        finally:
            shutil.rmtree(side, ignore_errors=True)
