"""`librosa`: hand-crafted speech descriptors pooled over the clip (MFCC + deltas, pitch, energy,
spectral shape)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..cache import Feature
from ..registry import Extractor, register

STATS = ("mean", "std", "min", "max")


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
        import librosa

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
        spec = np.vstack([
            librosa.feature.rms(S=mag, frame_length=n_fft),
            librosa.feature.spectral_centroid(S=mag, sr=sr),
            librosa.feature.spectral_bandwidth(S=mag, sr=sr),
            librosa.feature.spectral_rolloff(S=mag, sr=sr),
            librosa.feature.spectral_flatness(S=mag),
            librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop)[:, : mag.shape[1]],
            librosa.feature.spectral_contrast(S=mag, sr=sr),
        ])
        f0, voiced = self._pitch(y, sr, n_fft, hop)
        semis = np.where(voiced, 12 * np.log2(np.maximum(f0, 1e-6) / 27.5), np.nan)[None, :]
        n = min(mfcc.shape[1], spec.shape[1], semis.shape[1])
        rows = np.vstack([mfcc[:, :n], d1[:, :n], d2[:, :n], spec[:, :n], semis[:, :n]])
        voiced_semis = semis[0][~np.isnan(semis[0])]
        extra = [float(voiced.mean()) if len(voiced) else 0.0,
                 float(np.mean(np.abs(np.diff(voiced_semis)))) if len(voiced_semis) > 1 else 0.0]
        return Feature(data=np.concatenate([_pool(rows), extra]).astype(np.float32))

    def _pitch(self, y, sr, n_fft, hop):
        import librosa

        c = self.config
        frame_length = max(n_fft, int(2 * sr / c.fmin) + 2)
        if c.pitch == "pyin":
            f0, voiced, _ = librosa.pyin(y, fmin=c.fmin, fmax=c.fmax, sr=sr, frame_length=frame_length,
                                         hop_length=hop)
            return np.nan_to_num(f0), voiced.astype(bool)
        f0 = librosa.yin(y, fmin=c.fmin, fmax=c.fmax, sr=sr, frame_length=frame_length, hop_length=hop)
        # yin always answers; call a frame voiced when it carries energy and a stable period
        rms = librosa.feature.rms(y=y, frame_length=frame_length, hop_length=hop)[0][: len(f0)]
        voiced = (rms > 0.1 * (rms.max() + 1e-9)) & (f0 < c.fmax * 0.98) & (f0 > c.fmin * 1.02)
        return f0, voiced
