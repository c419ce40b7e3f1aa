"""What a VLM is shown of a clip: evenly sampled frames (optionally face crops), the audio as WAV,
or the media file itself."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

#: media types Gemini accepts inline, by file extension
MIME = {".mp4": "video/mp4", ".mov": "video/mov", ".avi": "video/avi", ".flv": "video/x-flv", ".webm": "video/webm",
        ".mpg": "video/mpg", ".mpeg": "video/mpeg", ".wmv": "video/wmv", ".3gp": "video/3gpp",
        ".wav": "audio/wav", ".mp3": "audio/mp3", ".flac": "audio/flac", ".aac": "audio/aac", ".ogg": "audio/ogg"}
INLINE_LIMIT = 18 * 1024 * 1024  # Gemini takes at most 20 MB of inline data per request


def sample_indices(n: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``n`` frames (all of them when n <= k)."""
    if n <= k:
        return np.arange(n)
    return np.linspace(0, n - 1, k).round().astype(int)


def sample_frames(frames: np.ndarray, times: np.ndarray | None, k: int):
    idx = sample_indices(len(frames), k)
    return frames[idx], (times[idx] if times is not None else idx.astype(float))


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def wav(audio: np.ndarray, rate: int) -> bytes:
    """float32 mono in [-1, 1] -> 16-bit PCM WAV bytes."""
    import wave

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def media_type(path: str | None) -> str | None:
    """The mime type of a clip's file when Gemini takes that type, else None (or no such file)."""
    if not path or not os.path.isfile(path):
        return None
    return MIME.get(Path(path).suffix.lower())


def media_file(path: str | None, limit: int = INLINE_LIMIT) -> tuple[bytes, str] | None:
    """(bytes, mime type) of a clip's file when Gemini can take it inline (type, size), else None."""
    mime = media_type(path)
    if mime is None or os.path.getsize(path) > limit:
        return None
    return Path(path).read_bytes(), mime


def face_frames(frames: np.ndarray, backend, margin: float, size: int):
    """Face crops of sampled frames (frames without a face are left whole, resized). ``backend``: an
    open :class:`extract.faces.FaceBackend` (the extractor opens one in load() and keeps it)."""
    from PIL import Image

    from .. import faces

    track = faces.track_faces(backend, frames)
    out = []
    for t, frame in enumerate(frames):
        if track.present[t]:
            out.append(faces.crop(frame, track.boxes[t], margin, size))
        else:
            out.append(np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR)))
    return np.stack(out), track
