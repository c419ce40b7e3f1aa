"""Synthetic media, encoded with PyAV: for tests, benchmarks and the demo (no download needed).

The clips are plain signals (tones, noise, coloured shapes), not people: they exercise the real
decode and extraction code, and class-dependent parameters make them learnable.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def tone(seconds: float, rate: int, freq: float = 220.0, seed: int = 0, amp: float = 0.3,
         vibrato: float = 0.0, noise: float = 0.02, channels: int = 1) -> np.ndarray:
    """(channels, n) float32: a harmonic tone with optional vibrato, plus a little noise."""
    rng = np.random.default_rng(seed)
    n = max(int(round(seconds * rate)), 1)
    t = np.arange(n) / rate
    f = freq * (1 + vibrato * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f) / rate
    x = amp * (np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.2 * np.sin(3 * phase)) / 1.6
    x = x + noise * rng.standard_normal(n)
    env = np.minimum(1, np.minimum(t, t[::-1]) / 0.02 + 1e-3)
    x = (x * env).astype(np.float32)
    return np.repeat(x[None], channels, axis=0)


def frames_pattern(n: int, size: tuple[int, int] = (96, 128), seed: int = 0, level: int = 128,
                   motion: float = 1.0) -> np.ndarray:
    """(n, H, W, 3) uint8: a moving bright square on a gray background."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = np.full((n, h, w, 3), level, dtype=np.uint8)
    color = rng.integers(0, 255, size=3)
    for i in range(n):
        s = max(h // 4, 4)
        y = int((h - s) * (0.5 + 0.4 * np.sin(motion * i / 5)))
        x = int((w - s) * (0.5 + 0.4 * np.cos(motion * i / 7)))
        out[i, y:y + s, x:x + s] = color
    return out


def write_media(path: str | Path, frames: np.ndarray | None = None, fps: int = 25,
                audio: np.ndarray | None = None, rate: int = 16000, vcodec: str | None = None,
                acodec: str | None = None) -> Path:
    """Encode frames (T,H,W,3 uint8) and/or audio (C,n float32) into ``path`` with PyAV.

    The container follows the extension: mp4/mkv/mov/avi/webm/flv for video (with or without
    audio), wav/flac/mp3/m4a for audio only.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    vcodec = vcodec or {".webm": "libvpx", ".flv": "flv", ".avi": "mpeg4"}.get(ext, "libx264")
    acodec = acodec or {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "libmp3lame", ".webm": "libopus",
                        ".flv": "aac", ".avi": "mp3"}.get(ext, "aac")
    with av.open(str(path), "w") as out:
        vs = as_ = None
        if frames is not None:
            vs = out.add_stream(vcodec, rate=fps)
            vs.width, vs.height = frames.shape[2], frames.shape[1]
            vs.pix_fmt = "yuv420p"
        if audio is not None:
            if audio.ndim == 1:
                audio = audio[None]
            if acodec == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
                raise ValueError("opus needs a standard rate")
            as_ = out.add_stream(acodec, rate=rate)
            as_.layout = "mono" if audio.shape[0] == 1 else "stereo"
        if vs is not None:
            for i, img in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                vf.pts = i
                vf.time_base = Fraction(1, fps)
                for pkt in vs.encode(vf):
                    out.mux(pkt)
            for pkt in vs.encode():
                out.mux(pkt)
        if as_ is not None:
            fmt = "fltp" if audio.shape[0] > 1 or acodec not in ("pcm_s16le",) else "s16"
            chunk = 1024
            n = audio.shape[1]
            for start in range(0, n, chunk):
                block = audio[:, start:start + chunk]
                if fmt == "s16":
                    data = (np.clip(block, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
                else:
                    data = np.ascontiguousarray(block.astype(np.float32))
                af = av.AudioFrame.from_ndarray(data, format=fmt, layout=as_.layout.name)
                af.sample_rate = rate
                af.pts = start
                af.time_base = Fraction(1, rate)
                for pkt in as_.encode(af):
                    out.mux(pkt)
            for pkt in as_.encode():
                out.mux(pkt)
    return path


def make_clip(path: str | Path, seconds: float = 1.0, fps: int = 25, size: tuple[int, int] = (96, 128),
              rate: int = 16000, channels: int = 1, freq: float = 220.0, seed: int = 0,
              video: bool = True, audio: bool = True, level: int = 128) -> Path:
    """A small test clip: moving square + tone (either may be left out)."""
    frames = frames_pattern(max(int(round(seconds * fps)), 1), size, seed, level) if video else None
    sound = tone(seconds, rate, freq, seed, channels=channels) if audio else None
    return write_media(path, frames, fps, sound, rate)
