"""`librosa`: hand-crafted speech descriptors pooled over the clip (MFCC + deltas, pitch, energy,
spectral shape).

Bounded memory: audio up to :data:`CHUNK_SECONDS` is analysed in one piece (librosa needs about
90 MB per minute of audio for it). Longer audio is analysed in chunks of that length, read one at a
time from the clip (:meth:`extract.media.Clip.read_audio`), and the per-frame features are pooled
with running statistics (count, mean and M2 merged as Chan et al. do, min, max; in float64), so
memory no longer grows with the clip's length. What makes this the same computation as on the whole
signal:

* every frame sees the samples (and the zero/edge padding at the clip's ends) it sees in one piece:
  each chunk is read with the frame half-lengths around it, and framed without centring;
* the MFCC's dB floor (``power_to_db``'s ``top_db=80``) is relative to the loudest mel bin of the
  WHOLE clip: a first pass over the chunks finds it;
* deltas get :data:`DELTA_CONTEXT` frames of context on each side (their window is 9 frames);
* the pitch track and its RMS (whose voicing threshold is relative to the clip's loudest frame) are
  kept for every frame (8 bytes a frame, 2.9 MB an hour) and pooled at the end as before.

So ``pitch=yin`` gives the whole-signal values up to float rounding (a test checks 1e-5 relative,
measured about 1e-7). ``pitch=pyin`` decodes its voicing HMM per chunk with
:data:`PYIN_CONTEXT_SECONDS` of context on each side: the Viterbi path can differ from the
whole-clip path next to a chunk border, rarely (a test bounds the difference of the voiced fraction
and pitch statistics). Values of clips up to :data:`CHUNK_SECONDS` are exactly those of before, so
the extractor version (and every cache key) is unchanged.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..cache import Feature
from ..librosa_import import import_librosa
from ..registry import ExtractionError, Extractor, register

STATS = ("mean", "std", "min", "max")

#: audio longer than this is analysed in chunks of at most this length (see the module docstring)
CHUNK_SECONDS = 30.0
#: frames of context on each side of a chunk for the deltas (their window is 9 frames)
DELTA_CONTEXT = 8
#: seconds of context on each side of a chunk for pyin's HMM decoding
PYIN_CONTEXT_SECONDS = 3.0


@dataclass
class LibrosaConfig:
    n_mfcc: int = 20
    pitch: str = "yin"  # yin (fast) or pyin (probabilistic, slower, better voicing)
    fmin: float = 65.0
    fmax: float = 600.0
    hop_ms: float = 10.0
    win_ms: float = 25.0

    def validate(self):
        if self.pitch not in ("yin", "pyin"):
            raise ValueError(f"pitch must be yin or pyin, not {self.pitch!r}")
        if not 1 <= self.n_mfcc <= 128:
            raise ValueError("n_mfcc must be in 1..128")


def _pool(x: np.ndarray) -> np.ndarray:
    """(channels, frames) -> (channels * 4) mean, std, min, max (NaN-safe; all-NaN -> 0)."""
    out = []
    for fn in (np.nanmean, np.nanstd, np.nanmin, np.nanmax):
        # an all-NaN row (no voiced frame, e.g. silent audio) is expected: 0, without numpy's warnings
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            v = fn(x, axis=1) if x.shape[1] else np.zeros(x.shape[0])
        out.append(np.nan_to_num(v))
    return np.concatenate(out)


def spectral_rows(mag: np.ndarray, sr: int, n_fft: int, zcr: np.ndarray) -> np.ndarray:
    """The spectral-shape rows of the frames of a magnitude spectrogram: RMS, centroid, bandwidth,
    rolloff, flatness, the given zero-crossing rate and contrast (whole-clip and chunked paths alike)."""
    librosa = import_librosa()

    return np.vstack([
        librosa.feature.rms(S=mag, frame_length=n_fft),
        librosa.feature.spectral_centroid(S=mag, sr=sr),
        librosa.feature.spectral_bandwidth(S=mag, sr=sr),
        librosa.feature.spectral_rolloff(S=mag, sr=sr),
        librosa.feature.spectral_flatness(S=mag),
        zcr,
        librosa.feature.spectral_contrast(S=mag, sr=sr),
    ])


@register
class LibrosaExtractor(Extractor):
    name = "librosa"
    modality = "audio"
    kind = "vector"
    needs = ("audio",)
    Config = LibrosaConfig
    libraries = ("librosa",)
    description = "MFCC + deltas, pitch (yin/pyin), RMS energy, spectral descriptors; mean/std/min/max"

    def _frame_params(self, sr: int) -> tuple[int, int]:
        hop = int(sr * self.config.hop_ms / 1000)
        win = int(sr * self.config.win_ms / 1000)
        n_fft = 1 << (win - 1).bit_length()
        return hop, n_fft

    def _rows(self) -> list[str]:
        c = self.config
        names = [f"mfcc{i}" for i in range(c.n_mfcc)] + [f"dmfcc{i}" for i in range(c.n_mfcc)]
        names += [f"ddmfcc{i}" for i in range(c.n_mfcc)]
        names += ["rms", "centroid", "bandwidth", "rolloff", "flatness", "zcr"]
        names += [f"contrast{i}" for i in range(7)]
        names += ["f0_semitones"]
        return names

    def channels(self) -> list[str]:
        names = [f"{r}_{s}" for s in STATS for r in self._rows()]
        return names + ["voiced_fraction", "f0_delta_mean_abs"]

    def extract(self, clip):
        if clip.audio is None or not clip.audio_samples:
            raise ExtractionError(clip.missing.get("audio", "no audio"))
        if clip.audio_samples > CHUNK_SECONDS * clip.sample_rate:
            return self._extract_chunked(clip)
        return self._extract_whole(clip)

    def _extract_whole(self, clip):
        """The clip in one piece (audio up to CHUNK_SECONDS): the reference computation."""
        librosa = import_librosa()

        c = self.config
        y, sr = clip.audio, clip.sample_rate
        hop, n_fft = self._frame_params(sr)
        S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop)) ** 2
        mel = librosa.feature.melspectrogram(S=S, sr=sr, n_mels=64)
        mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=c.n_mfcc)
        width = min(9, mfcc.shape[1] if mfcc.shape[1] % 2 else mfcc.shape[1] - 1)
        if width >= 3:
            d1 = librosa.feature.delta(mfcc, width=width)
            d2 = librosa.feature.delta(mfcc, order=2, width=width)
        else:
            d1 = d2 = np.zeros_like(mfcc)
        mag = np.sqrt(S)
        spec = spectral_rows(mag, sr, n_fft, librosa.feature.zero_crossing_rate(
            y, frame_length=n_fft, hop_length=hop)[:, : mag.shape[1]])
        f0, voiced = self._pitch(y, sr, n_fft, hop)
        semis = np.where(voiced, 12 * np.log2(np.maximum(f0, 1e-6) / 27.5), np.nan)[None, :]
        n = min(mfcc.shape[1], spec.shape[1], semis.shape[1])
        rows = np.vstack([mfcc[:, :n], d1[:, :n], d2[:, :n], spec[:, :n], semis[:, :n]])
        voiced_semis = semis[0][~np.isnan(semis[0])]
        extra = [float(voiced.mean()) if len(voiced) else 0.0,
                 float(np.mean(np.abs(np.diff(voiced_semis)))) if len(voiced_semis) > 1 else 0.0]
        return Feature(data=np.concatenate([_pool(rows), extra]).astype(np.float32))

    def _pitch(self, y, sr, n_fft, hop):
        librosa = import_librosa()

        c = self.config
        frame_length = self._pitch_frame_length(sr, n_fft)
        if c.pitch == "pyin":
            f0, voiced, _ = librosa.pyin(y, fmin=c.fmin, fmax=c.fmax, sr=sr, frame_length=frame_length,
                                         hop_length=hop)
            return np.nan_to_num(f0), voiced.astype(bool)
        f0 = librosa.yin(y, fmin=c.fmin, fmax=c.fmax, sr=sr, frame_length=frame_length, hop_length=hop)
        # yin always answers; call a frame voiced when it carries energy and a stable period
        rms = librosa.feature.rms(y=y, frame_length=frame_length, hop_length=hop)[0][: len(f0)]
        voiced = (rms > 0.1 * (rms.max() + 1e-9)) & (f0 < c.fmax * 0.98) & (f0 > c.fmin * 1.02)
        return f0, voiced

    # -- long audio: chunk by chunk, pooled with running statistics ------------------------------
    def _pitch_frame_length(self, sr: int, n_fft: int) -> int:
        return max(n_fft, int(2 * sr / self.config.fmin) + 2)

    def _extract_chunked(self, clip):
        """The same features and statistics as :meth:`_extract_whole`, over chunks of CHUNK_SECONDS
        read one at a time (see the module docstring for why the values agree)."""
        librosa = import_librosa()

        c = self.config
        sr = clip.sample_rate
        hop, n_fft = self._frame_params(sr)
        pitch_len = self._pitch_frame_length(sr, n_fft)
        total = 1 + clip.audio_samples // hop  # frames of every centred feature (as in one piece)
        chunks = _split_even(total, max(1, int(CHUNK_SECONDS * sr) // hop))

        def segment(g0: int, g1: int, length: int, pad: str = "constant") -> np.ndarray:
            """The samples frames g0..g1-1 (centred, ``length`` long) cover, padded at the clip's ends."""
            start = g0 * hop - length // 2
            return clip.read_audio(start, (g1 - 1) * hop + length - length // 2, pad=pad)

        def power(g0: int, g1: int) -> np.ndarray:
            y = segment(g0, g1, n_fft)
            return np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, center=False)) ** 2

        def mel_db(S: np.ndarray) -> np.ndarray:
            return librosa.power_to_db(librosa.feature.melspectrogram(S=S, sr=sr, n_mels=64), top_db=None)

        top = None  # pass 1: the loudest mel bin of the whole clip sets the dB floor
        for f0, f1 in chunks:
            peak = mel_db(power(f0, f1)).max()
            top = peak if top is None else max(top, peak)
        floor = top - 80.0  # as power_to_db(top_db=80) computes it on the whole clip

        stats = _RunningStats()
        f0_track = np.zeros(total, np.float64)
        voiced_track = np.zeros(total, bool)
        rms_track = np.zeros(total, np.float64)
        for f0, f1 in chunks:
            g0, g1 = max(0, f0 - DELTA_CONTEXT), min(total, f1 + DELTA_CONTEXT)
            S = power(g0, g1)
            mfcc = librosa.feature.mfcc(S=np.maximum(mel_db(S), floor), n_mfcc=c.n_mfcc)
            d1 = librosa.feature.delta(mfcc, width=9)
            d2 = librosa.feature.delta(mfcc, order=2, width=9)
            mag = np.sqrt(S)
            y_edge = segment(g0, g1, n_fft, pad="edge")
            spec = spectral_rows(mag, sr, n_fft, librosa.feature.zero_crossing_rate(
                y_edge, frame_length=n_fft, hop_length=hop, center=False))
            keep = slice(f0 - g0, f1 - g0)
            stats.add(np.vstack([mfcc[:, keep], d1[:, keep], d2[:, keep], spec[:, keep]]))
            f0_track[f0:f1], voiced_track[f0:f1], rms_track[f0:f1] = self._pitch_chunk(
                segment, f0, f1, total, sr, hop, pitch_len)
        if c.pitch == "yin":  # the voicing threshold is relative to the clip's loudest frame
            voiced_track = ((rms_track > 0.1 * (rms_track.max() + 1e-9)) & (f0_track < c.fmax * 0.98)
                            & (f0_track > c.fmin * 1.02))
        semis = np.where(voiced_track, 12 * np.log2(np.maximum(f0_track, 1e-6) / 27.5), np.nan)[None, :]
        mean, std, lo, hi = stats.result()
        s_mean, s_std, s_lo, s_hi = np.split(_pool(semis), 4)
        voiced_semis = semis[0][~np.isnan(semis[0])]
        extra = [float(voiced_track.mean()) if len(voiced_track) else 0.0,
                 float(np.mean(np.abs(np.diff(voiced_semis)))) if len(voiced_semis) > 1 else 0.0]
        pooled = np.concatenate([mean, s_mean, std, s_std, lo, s_lo, hi, s_hi, extra])
        return Feature(data=pooled.astype(np.float32))

    def _pitch_chunk(self, segment, f0: int, f1: int, total: int, sr: int, hop: int, length: int):
        """(f0, voiced, rms) of frames f0..f1-1; yin's voicing is decided later, over the whole clip."""
        librosa = import_librosa()

        c = self.config
        if c.pitch == "pyin":
            ctx = int(round(PYIN_CONTEXT_SECONDS * sr / hop))
            h0, h1 = max(0, f0 - ctx), min(total, f1 + ctx)
            f0s, voiced, _ = librosa.pyin(segment(h0, h1, length), fmin=c.fmin, fmax=c.fmax, sr=sr,
                                          frame_length=length, hop_length=hop, center=False)
            keep = slice(f0 - h0, f1 - h0)
            return np.nan_to_num(f0s[keep]), voiced[keep].astype(bool), 0.0
        y = segment(f0, f1, length)
        f0s = librosa.yin(y, fmin=c.fmin, fmax=c.fmax, sr=sr, frame_length=length, hop_length=hop, center=False)
        rms = librosa.feature.rms(y=y, frame_length=length, hop_length=hop, center=False)[0]
        return f0s, False, rms


def _split_even(n: int, max_len: int) -> list[tuple[int, int]]:
    """``n`` frames cut into the fewest equal chunks of at most ``max_len`` (no tiny last chunk)."""
    parts = max(1, -(-n // max_len))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class _RunningStats:
    """Mean, std (population), min and max per row over columns added chunk by chunk, NaN ignored
    as np.nanmean & co. ignore it: counts, means and M2 merged with Chan et al.'s update, in float64."""

    def __init__(self):
        self.n = self.mean = self.m2 = self.lo = self.hi = None

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        ok = ~np.isnan(x)
        n = ok.sum(axis=1).astype(np.float64)
        with np.errstate(all="ignore"):
            mean = np.where(n > 0, np.where(ok, x, 0.0).sum(axis=1) / np.maximum(n, 1), 0.0)
            m2 = np.where(ok, (x - mean[:, None]) ** 2, 0.0).sum(axis=1)
        lo = np.where(ok, x, np.inf).min(axis=1)
        hi = np.where(ok, x, -np.inf).max(axis=1)
        if self.n is None:
            self.n, self.mean, self.m2, self.lo, self.hi = n, mean, m2, lo, hi
            return
        both = self.n + n
        delta = mean - self.mean
        with np.errstate(all="ignore"):
            share = np.where(both > 0, n / np.maximum(both, 1), 0.0)
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2 + delta ** 2 * self.n * share
        self.n = both
        self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean, std, min, max); a row without any value gives 0 for each, as _pool does."""
        empty = self.n == 0
        std = np.sqrt(self.m2 / np.maximum(self.n, 1))
        return tuple(np.where(empty, 0.0, v) for v in (self.mean, std, self.lo, self.hi))
