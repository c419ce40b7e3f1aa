"""`egemaps`: openSMILE eGeMAPSv02 functionals (88 values per clip), the field's standard
paralinguistic set.

Bounded memory:

* ``opensmile.Smile.process_signal`` copies the whole signal three times (float, int16, bytes) and
  hands it to openSMILE at once, whose wave input then holds all of it (4 bytes a sample). Here
  the clip's audio is read in blocks of :data:`BLOCK_SECONDS` (:meth:`extract.media.Clip.read_audio`)
  and written to openSMILE while it runs in a thread, through a wave input that is a ring buffer
  of :data:`RING_SECONDS` instead of a level that grows. Everything else is ``process_signal``'s
  own configuration (the same config file and options, the same int16 conversion), so the values
  are exactly those of ``process_signal`` (a test checks it).
* What openSMILE itself must keep is every frame of the low-level descriptors the functionals are
  computed from (percentiles need them all): with its per-frame bookkeeping that is about 15 MB per
  minute of audio (0.9 GB for an hour). So a clip longer than :data:`WINDOW_SECONDS` (5 minutes) is
  cut into the fewest equal windows of at most that length; each window gets its own functionals
  and the clip's value is their mean weighted by window length. For the plain means over all
  frames that is the clip's mean; the others (deviations, percentiles, ranges, rates, segment
  lengths) become averages over 2.5-5 minute windows. Clips up to 5 minutes get exactly the values
  of before (the extractor version is unchanged; a cache that holds clips longer than 5 minutes
  extracted before this change keeps their whole-clip values).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import Feature
from ..registry import Extractor, ExtractionError, register

FEATURE_SETS = ("eGeMAPSv02", "GeMAPSv01b", "ComParE_2016")

#: seconds of audio written to openSMILE at a time
BLOCK_SECONDS = 1.0
#: length of openSMILE's wave input ring buffer (at least a few blocks)
RING_SECONDS = 10.0
#: longer audio gets functionals per window of at most this length, averaged (see the module docstring)
WINDOW_SECONDS = 300.0

# openSMILE's standard external wave input (shared/standard_external_wave_input.conf.inc) with the
# wave level as a ring buffer instead of a level that grows to hold the whole signal; a package file,
# read by openSMILE in place (no temporary copy: a killed worker would leave it behind)
SOURCE_CONF = Path(__file__).resolve().parents[1] / "assets" / "opensmile_ring_wave_input.conf.inc"
_SOURCE = "extsource"  # opensmile.config.EXTERNAL_SOURCE_COMPONENT
_SINK = "extsink"  # opensmile.config.EXTERNAL_OUTPUT_COMPONENT


@dataclass
class EgemapsConfig:
    feature_set: str = "eGeMAPSv02"

    def validate(self):
        if self.feature_set not in FEATURE_SETS:
            raise ValueError(f"feature_set must be one of {', '.join(FEATURE_SETS)}")


def _name_opensmile_for_audobject() -> None:
    """Smile() asks audobject for its class's distribution, and audobject answers by scanning every
    installed package's file list (importlib.metadata.packages_distributions(): 0.4 s, in every
    process that loads this extractor, each worker included) unless its module-level table already
    holds the module. opensmile's distribution is opensmile, so it is put there first; the answer
    only names the class in Smile's serialised form, never a feature value."""
    try:
        from audobject.core import utils
    except ImportError:  # a later opensmile without audobject: nothing to save
        return
    table = getattr(utils, "PACKAGES_DISTRIBUTIONS", None)
    if isinstance(table, dict):
        table.setdefault("opensmile", ["opensmile"])


@register
class EgemapsExtractor(Extractor):
    name = "egemaps"
    modality = "audio"
    kind = "vector"
    needs = ("audio",)
    Config = EgemapsConfig
    libraries = ("opensmile",)
    description = "openSMILE functionals (eGeMAPSv02 by default; GeMAPSv01b, ComParE_2016)"

    def load(self):
        import opensmile

        _name_opensmile_for_audobject()
        self.smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, self.config.feature_set),
                                     feature_level=opensmile.FeatureLevel.Functionals)
        if not SOURCE_CONF.is_file():
            raise FileNotFoundError(f"{SOURCE_CONF}: openSMILE's wave input config is missing from the "
                                    f"installed package (re-install it)")

    def channels(self):
        self.ensure_loaded()
        return list(self.smile.feature_names)

    def extract(self, clip):
        if clip.audio is None:
            raise ExtractionError(clip.missing.get("audio", "no audio"))
        if clip.audio_samples == 0:
            raise ExtractionError("empty audio")
        rate = clip.sample_rate
        windows = split_even(clip.audio_samples, max(1, int(WINDOW_SECONDS * rate)))
        if len(windows) == 1:
            values = self._functionals(clip, 0, clip.audio_samples)
        else:  # weighted by window length: the plain means are the clip's means
            values = sum((b - a) * self._functionals(clip, a, b).astype(np.float64) for a, b in windows)
            values = values / clip.audio_samples
        if not np.all(np.isfinite(values)):
            raise ExtractionError("openSMILE returned non-finite values")
        return Feature(data=values.astype(np.float32))

    def _functionals(self, clip, start: int, stop: int) -> np.ndarray:
        """openSMILE run on samples [start, stop) of the clip's audio, fed block by block (see the
        module docstring)."""
        rate = clip.sample_rate
        options = self.smile._options()  # process_signal's options (sink, levels, buffer modes), as it builds them
        options.update(source=str(SOURCE_CONF), sampleRate=rate, nBits=16,
                       ringSamples=int(RING_SECONDS * rate))
        smile = self.smile._smile(options=options)
        rows: list[np.ndarray] = []
        smile.external_sink_set_callback_ex(_SINK, lambda data, meta: rows.append(np.array(data)))
        failed: list[BaseException] = []

        def run():
            try:
                smile.run()
            except BaseException as exc:  # noqa: BLE001 - reported below, in the caller's thread
                failed.append(exc)

        runner = threading.Thread(target=run, name="moe-opensmile", daemon=True)
        runner.start()
        try:
            step = max(1, int(BLOCK_SECONDS * rate))
            for a in range(start, stop, step):
                block = clip.read_audio(a, min(stop, a + step))
                block *= 32768  # as process_signal converts: float * 32768 -> int16
                data = block.astype(np.int16).tobytes()
                while not smile.external_audio_source_write_data(_SOURCE, data):
                    if not runner.is_alive():
                        break
                    time.sleep(0.002)  # the ring buffer is full: openSMILE is still reading it
                if not runner.is_alive():
                    break
        finally:  # end of input in every case, or run() would wait for more audio for ever
            try:
                smile.external_audio_source_set_eoi(_SOURCE)
            finally:
                runner.join()
                smile.free()
        if failed:
            raise ExtractionError(f"openSMILE failed: {type(failed[0]).__name__}: {failed[0]}")
        if not rows:
            raise ExtractionError("openSMILE returned no functionals (audio too short)")
        return np.vstack(rows)[0]


def split_even(n: int, max_len: int) -> list[tuple[int, int]]:
    """``n`` samples cut into the fewest equal windows of at most ``max_len`` (no tiny last one)."""
    parts = max(1, -(-n // max_len))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
