"""Finding media files and decoding each one ONCE with PyAV.

A decoded :class:`Clip` carries 16 kHz mono float32 audio and RGB uint8 frames sampled at a chosen
rate (with their timestamps). Every extractor of a run receives that same object, so a clip is
never decoded twice, whatever the number of extractors.

Audio in bounded memory: the decoder never holds more than :data:`AUDIO_MEMORY_SECONDS` of decoded
audio in memory. A longer clip's audio goes, block by block as it is decoded, to an unlinked
temporary file (in ``$TMPDIR``, 230 MB per hour at 16 kHz float32; deleted with the clip), and
``Clip.audio`` is then a read-only-in-effect ``np.memmap`` of it (copy-on-write), so code that reads
the whole signal still works. Extractors that must stay bounded read it piece by piece with
:meth:`Clip.audio_chunks` / :meth:`Clip.read_audio`, which read the file with ``pread`` and never
map the whole signal into the process (``librosa``, ``egemaps``, ``hf-audio`` do).
"""
from __future__ import annotations

import math
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: containers FFmpeg reads that people bring (phones, cameras, broadcast, the web); `--extensions`
#: replaces the list
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".flv", ".webm", ".3gp", ".3g2", ".ts", ".mts", ".m2ts",
                    ".wmv", ".asf", ".mpg", ".mpeg", ".m4v", ".ogv", ".vob", ".mxf")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".oga", ".opus", ".aac", ".wma", ".aif", ".aiff",
                    ".amr", ".mka")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS

#: what an extractor can ask the decoder for
NEEDS = ("audio", "frames", "text")

MIN_AUDIO_SECONDS = 0.1

#: decoded audio up to this length stays in memory (an ordinary array, 7.7 MB at 16 kHz); a longer
#: clip's audio is kept in an unlinked temporary file in $TMPDIR (see the module docstring)
AUDIO_MEMORY_SECONDS = 120.0


class DecodeError(Exception):
    """The file could not be decoded at all (corrupt, empty, not media)."""


@dataclass(frozen=True)
class DecodeConfig:
    """How clips are decoded. Part of the cache key of every extractor that uses frames/audio."""

    sample_rate: int = 16000
    fps: float = 5.0  # frames per second sampled from the video
    max_frames: int = 64  # cap; a longer clip gets max_frames spread evenly over its length
    max_side: int = 640  # frames are downscaled so that their longer side is at most this
    max_seconds: float | None = None  # decode only the first N seconds (None: everything)
    # frames are turned upright by the stream's display matrix (phone videos); part of the key of
    # frame extractors, so values from sideways frames (before this existed) never mix with these
    upright: bool = True

    def for_needs(self, needs) -> dict:
        """The decode parameters that change what an extractor with these needs receives."""
        out = {}
        if "audio" in needs:
            out.update(sample_rate=self.sample_rate)
        if "frames" in needs:
            out.update(fps=self.fps, max_frames=self.max_frames, max_side=self.max_side, upright=self.upright)
        if ("audio" in needs or "frames" in needs) and self.max_seconds is not None:
            out.update(max_seconds=self.max_seconds)
        return out


@dataclass
class Clip:
    """One decoded media file, as handed to every extractor.

    Audio, for extractors that must work in bounded memory whatever the clip's length:
    :attr:`audio_samples` (its length, without reading it), :meth:`read_audio` (a piece, optionally
    zero- or edge-padded beyond the signal, as librosa's centred frames need) and
    :meth:`audio_chunks` (consecutive pieces). ``audio`` itself is the whole signal: an array, or for
    long clips a memory map of the decoder's temporary file (reading all of it makes the whole
    signal resident)."""

    id: str
    path: str
    audio: np.ndarray | None = None  # (n,) float32 in [-1, 1] at sample_rate (np.memmap when long)
    sample_rate: int = 16000
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8 RGB
    frame_times: np.ndarray | None = None  # (T,) float64 seconds
    text: str | None = None  # transcript, when one was given
    text_source: str | None = None
    duration: float | None = None
    # counter-clockwise degrees (0, 90, 180, 270) the frames were turned to be upright, from the
    # video stream's display matrix; 0 when it has none (or DecodeConfig.upright is False)
    rotation: int = 0
    # what the decoded input is like, per need, for every extractor that reads it: e.g.
    # {"audio": ["silent audio (peak -inf dBFS)"]}; the run records them as notes of those sets
    notes: dict = field(default_factory=dict)
    # why a stream is absent, e.g. "no audio stream": an extractor that needs it fails with this
    missing: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    # per-clip results that several extractors of one run share, computed once per clip like the
    # decode itself (declared here, never ad-hoc keys):
    # the face track (extract.faces.FaceTrack) per detector setting (backend, model, thresholds)
    face_tracks: dict = field(default_factory=dict)
    # the VLM answer record per vlm feature key, for vlm-text in the same run
    vlm_answers: dict = field(default_factory=dict)
    # the unlinked temporary file that holds ``audio`` when the clip is longer than
    # AUDIO_MEMORY_SECONDS (set by decode()); read_audio() reads it without mapping the whole signal
    audio_file: object = field(default=None, repr=False, compare=False)

    def unavailable(self, needs) -> str | None:
        """Reason why this clip cannot feed an extractor with these needs, or None."""
        for need in needs:
            if need in self.missing:
                return self.missing[need]
        return None

    # -- audio in bounded memory ---------------------------------------------------------------
    @property
    def audio_samples(self) -> int:
        """Number of audio samples (0 without audio); reads nothing."""
        return 0 if self.audio is None else int(len(self.audio))

    def read_audio(self, start: int, stop: int, pad: str | None = None) -> np.ndarray:
        """Samples ``[start, stop)`` as a new float32 array, read from the temporary file for a long
        clip (nothing else of the signal becomes resident). ``pad=None`` cuts the range to the
        signal; ``pad="constant"`` (zeros) or ``"edge"`` (the first/last sample repeated) returns
        exactly ``stop - start`` samples, as ``np.pad`` of the whole signal would give."""
        n = self.audio_samples
        if stop < start:
            raise ValueError(f"read_audio: stop {stop} < start {start}")
        a, b = min(max(start, 0), n), max(min(stop, n), 0)
        inner = self._read(a, max(a, b))
        if pad is None:
            return inner
        if pad not in ("constant", "edge"):
            raise ValueError(f"read_audio: pad must be None, 'constant' or 'edge', not {pad!r}")
        before, after = max(0, min(stop, 0) - start), max(0, stop - max(start, n))
        if not before and not after:
            return inner
        if pad == "edge" and n:
            left = self._read(0, 1)[0] if before else 0.0
            right = self._read(n - 1, n)[0] if after else 0.0
        else:
            left = right = 0.0
        out = np.empty(stop - start, np.float32)
        out[:before] = left
        out[before:before + len(inner)] = inner
        out[before + len(inner):] = right
        return out

    def audio_chunks(self, samples: int):
        """Consecutive pieces of at most ``samples`` samples covering the whole signal, each a new
        float32 array (one piece in memory at a time, see :meth:`read_audio`)."""
        if samples < 1:
            raise ValueError("audio_chunks: samples must be >= 1")
        n = self.audio_samples
        for a in range(0, n, samples):
            yield self.read_audio(a, min(n, a + samples))

    def _read(self, a: int, b: int) -> np.ndarray:
        if b <= a:
            return np.zeros(0, np.float32)
        f = self.audio_file
        if f is not None and isinstance(self.audio, np.memmap):
            out = np.empty(b - a, np.float32)
            view, offset = memoryview(out).cast("B"), a * 4
            while len(view):  # pread may return less than asked
                got = os.preadv(f.fileno(), [view], offset)
                if got <= 0:
                    raise OSError(f"{self.path}: temporary audio file ended early")
                view, offset = view[got:], offset + got
            return out
        return np.array(self.audio[a:b], dtype=np.float32)


@dataclass
class Scan:
    """What :func:`scan` found under a folder."""

    root: Path
    extensions: tuple[str, ...]  # looked for
    files: dict[str, Path] = field(default_factory=dict)  # clip id -> path
    collisions: dict[str, list[Path]] = field(default_factory=dict)  # ids that 2+ files map to
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, why it is not a clip)
    seen: Counter = field(default_factory=Counter)  # extension -> files seen with it ("" for none)

    def skipped_by_reason(self) -> Counter:
        return Counter(why for _, why in self.skipped)


#: reasons a file under VIDEO_DIR is not taken as a clip (Scan.skipped)
NOT_LISTED = "extension not in --extensions"
HIDDEN = "hidden"
BROKEN_LINK = "broken symlink"
NOT_A_FILE = "not a regular file"
SEEN_FOLDER = "folder reached twice through symlinks (loop or second link): scanned once"
UNREADABLE = "folder not readable"


def scan(video_dir: str | os.PathLike, extensions=MEDIA_EXTENSIONS) -> Scan:
    """Every media file under ``video_dir``, recursive, following symlinked folders (each real
    folder is scanned once, so a link loop ends), keyed by clip id; and every other file with the
    reason it was left out. Hidden files and folders (``.name``, e.g. macOS ``._clip.mp4``) are
    left out. See :func:`clip_id` for the ids."""
    root = Path(video_dir)
    exts = tuple(e.lower() for e in extensions)
    out = Scan(root=root, extensions=exts)
    found: dict[str, list[Path]] = {}
    visited: set[tuple[int, int]] = set()

    def unreadable(err: OSError) -> None:
        out.skipped.append((Path(err.filename or root), UNREADABLE))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        here = Path(dirpath)
        try:
            st = os.stat(here)
        except OSError:
            out.skipped.append((here, UNREADABLE))
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in visited:
            out.skipped.append((here, SEEN_FOLDER))
            dirnames[:] = []
            continue
        visited.add((st.st_dev, st.st_ino))
        keep = []
        for name in sorted(dirnames):
            if name.startswith("."):
                out.skipped.append((here / name, HIDDEN))
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = here / name
            ext = path.suffix.lower()
            out.seen[ext] += 1
            if name.startswith("."):
                why = HIDDEN
            elif ext not in exts:
                why = NOT_LISTED
            elif not path.exists():
                why = BROKEN_LINK
            elif not path.is_file():
                why = NOT_A_FILE
            else:
                found.setdefault(clip_id(path, root), []).append(path)
                continue
            out.skipped.append((path, why))
    out.files = {cid: paths[0] for cid, paths in sorted(found.items()) if len(paths) == 1}
    out.collisions = {cid: paths for cid, paths in sorted(found.items()) if len(paths) > 1}
    return out


def discover(video_dir: str | os.PathLike, extensions=MEDIA_EXTENSIONS) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Every media file under ``video_dir`` (recursive), keyed by clip id.

    The clip id is the path relative to ``video_dir`` without its extension, with ``/`` separators
    and Unicode NFC normalisation (so that ids match a labels CSV typed on another OS). Returns
    ``(files, collisions)``: ids that two or more files map to are not in ``files`` but in
    ``collisions`` (never silently overwritten). :func:`scan` also says what was left out.
    """
    found = scan(video_dir, extensions)
    return found.files, found.collisions


def shown_name(name: str) -> str:
    """A file name as printed in messages; with its code points when it is not plain ASCII or is
    not in NFC form, so that two names that look the same (NFC ``é`` and NFD ``e`` + U+0301) differ."""
    if name.isascii():
        return name
    points = " ".join(f"U+{ord(ch):04X}" for ch in name if not ch.isascii())
    form = "" if unicodedata.is_normalized("NFC", name) else ", not NFC"
    return f"{name} [{points}{form}]"


def clip_id(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    return unicodedata.normalize("NFC", rel.as_posix())


def frame_targets(duration: float | None, fps: float, max_frames: int) -> np.ndarray | None:
    """Times (s) at which frames are sampled: every 1/fps, or max_frames spread over a long clip."""
    if duration is None or not math.isfinite(duration) or duration <= 0:
        return None
    n = int(math.floor(duration * fps + 1e-9)) or 1
    if n <= max_frames:
        return np.arange(n) / fps
    step = duration / max_frames
    return (np.arange(max_frames) + 0.5) * step


def _resized(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * scale))), max(2, int(round(height * scale)))


def decode(path: str | os.PathLike, clip_id_: str, needs, config: DecodeConfig = DecodeConfig(),
           threads: int = 0) -> Clip:
    """Decode ``path`` in a single demux pass: audio and/or frames, as ``needs`` asks. ``threads``:
    the video decoder's threads (0: FFmpeg's choice, one per core; the runner gives each process
    its --threads, so N processes do not start N x cores decoder threads); the frames do not depend on it.

    Raises :class:`DecodeError` when the file cannot be read at all. A missing stream, or one that
    cannot be decoded while the other one can, is not an error here: it is recorded in
    ``Clip.missing`` and only the extractors that need it fail.
    """
    import av  # local import: workers import lazily

    path = str(path)
    clip = Clip(id=clip_id_, path=path, sample_rate=config.sample_rate)
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as exc:  # PyAV raises many FFmpeg error types
        raise DecodeError(f"not a readable media file ({type(exc).__name__}: {exc})") from exc
    with container:
        astream = container.streams.audio[0] if container.streams.audio else None
        vstream = container.streams.video[0] if container.streams.video else None
        if astream is None and vstream is None:
            raise DecodeError("no audio or video stream")
        clip.duration = _duration(container, astream, vstream)
        clip.info = _stream_info(astream, vstream, clip.duration)
        want_audio = "audio" in needs
        want_frames = "frames" in needs
        if want_audio and astream is None:
            clip.missing["audio"] = "no audio stream"
        if want_frames and vstream is None:
            clip.missing["frames"] = "no video stream"
        streams = [s for s, w in ((astream, want_audio), (vstream, want_frames)) if s is not None and w]
        if not streams:
            return clip
        audio_parts = _AudioSink(int(AUDIO_MEMORY_SECONDS * config.sample_rate))
        frames: list[np.ndarray] = []
        times: list[float] = []
        # an error in one stream ends that stream only: the other one's extractors still get theirs
        errors: dict[str, str] = {}
        resampler = targets = None
        level = _Level()
        if astream is not None and want_audio:
            try:
                resampler = av.AudioResampler(format="flt", layout="mono", rate=config.sample_rate)
            except Exception as exc:  # noqa: BLE001
                errors["audio"] = _why(exc)
        if vstream is not None and want_frames:
            try:
                targets = frame_targets(clip.duration, config.fps, config.max_frames)
                vstream.thread_type = "AUTO"
                vstream.codec_context.thread_count = max(0, int(threads))
            except Exception as exc:  # noqa: BLE001
                errors["frames"] = _why(exc)
        sampler = _FrameSampler(targets, config, vstream) if vstream is not None and want_frames else None
        streams = [s for s in streams if ("audio" if s is astream else "frames") not in errors]
        max_t = config.max_seconds
        try:
            for packet in container.demux(*streams) if streams else ():
                need = "frames" if packet.stream.type == "video" else "audio"
                if need in errors:
                    continue
                try:
                    for frame in packet.decode():
                        t = frame.time
                        if max_t is not None and t is not None and t >= max_t:
                            continue
                        if need == "audio":
                            level.add(frame)
                            for out in resampler.resample(frame):
                                audio_parts.add(out.to_ndarray().reshape(-1))
                        else:
                            sampler.add(frame, t, frames, times)
                except Exception as exc:  # noqa: BLE001
                    errors[need] = _why(exc)
            if resampler is not None and "audio" not in errors:
                try:
                    for out in resampler.resample(None):
                        audio_parts.add(out.to_ndarray().reshape(-1))
                except Exception as exc:  # noqa: BLE001
                    errors["audio"] = _why(exc)
        except Exception as exc:  # demuxing itself failed: the container is damaged from here on
            if not audio_parts and not frames:
                raise DecodeError(f"decoding failed ({_why(exc)})") from exc
            clip.info["decode_warning"] = f"stopped early: {_why(exc)}"
        label = {"audio": "audio", "frames": "video"}
        wanted = {"audio" if s is astream else "frames" for s, w in ((astream, want_audio), (vstream, want_frames))
                  if s is not None and w}
        if errors and set(errors) == wanted and not audio_parts and not frames:
            raise DecodeError("decoding failed (" + "; ".join(f"{label[k]}: {v}" for k, v in errors.items()) + ")")
        for need, why in errors.items():
            if audio_parts if need == "audio" else frames:  # broke part way: what came before is kept
                clip.info.setdefault("decode_warning", f"{label[need]} stopped early: {why}")
            else:
                clip.missing[need] = f"decode failed: {label[need]} decoding failed ({why})"
    if want_audio and astream is not None and "audio" not in clip.missing:
        seconds = len(audio_parts) / config.sample_rate
        if seconds < MIN_AUDIO_SECONDS:
            audio_parts.close()
            clip.missing["audio"] = f"audio too short ({seconds:.3f} s < {MIN_AUDIO_SECONDS} s)"
        else:
            clip.audio, clip.audio_file = audio_parts.finish()
            if notes := level.notes(audio_parts.peak):
                clip.notes["audio"] = notes
    else:  # audio not asked for, or it failed: a partial temporary file goes now
        audio_parts.close()
    if want_frames and vstream is not None and "frames" not in clip.missing:
        if frames:
            clip.frames = np.stack(frames)
            clip.frame_times = np.asarray(times, dtype=np.float64)
            clip.rotation = sampler.rotation
            clip.info["video"]["rotation"] = sampler.rotation
        else:
            clip.missing["frames"] = "no video frame could be decoded"
    return clip


SILENCE_DBFS = -80.0  # audio whose peak stays below this is "silent"
CLIPPED_FRACTION = 1e-3  # this share of the source samples at or beyond full scale is "clipped"


class _Level:
    """Counts the source audio samples (before resampling) at or beyond full scale: an integer
    sample on a rail, a float sample with |x| >= 1 (beyond 1 is also cut by the decoder)."""

    def __init__(self):
        self.samples = self.at_rail = 0

    def add(self, frame) -> None:
        try:
            x = frame.to_ndarray()
        except Exception:  # noqa: BLE001 - an exotic sample format: no level figures, still decoded
            return
        self.samples += x.size
        if np.issubdtype(x.dtype, np.integer):
            info = np.iinfo(x.dtype)
            self.at_rail += int(np.count_nonzero((x >= info.max) | (x <= info.min)))
        else:
            self.at_rail += int(np.count_nonzero(np.abs(x) >= 1.0))

    def notes(self, peak: float) -> list[str]:
        """Notes on the decoded audio, from its peak (max |x| after the cut to [-1, 1])."""
        out = []
        if peak <= 10 ** (SILENCE_DBFS / 20):
            db = "-inf" if peak == 0 else f"{20 * math.log10(peak):.0f}"
            out.append(f"silent audio (peak {db} dBFS, below {SILENCE_DBFS:.0f} dBFS)")
        share = self.at_rail / self.samples if self.samples else 0.0
        if self.at_rail >= 10 and share >= CLIPPED_FRACTION:
            out.append(f"clipped audio ({100 * share:.2f}% of samples at or beyond full scale)")
        return out


class _AudioSink:
    """The decoded audio, block by block: cut to [-1, 1], its peak followed; in memory up to
    ``limit`` samples, beyond that in an unlinked temporary file (so a long clip never holds its
    whole signal, nor the copies a concatenation makes, in memory). The values are the same either
    way: float32, cut per block exactly as the whole signal was cut before."""

    def __init__(self, limit: int):
        self.limit = limit
        self.parts: list[np.ndarray] = []
        self.n = 0
        self.peak = 0.0
        self.file = None

    def __len__(self) -> int:
        return self.n

    def add(self, block: np.ndarray) -> None:
        block = np.clip(block.astype(np.float32, copy=False), -1.0, 1.0)
        if not block.size:
            return
        self.peak = max(self.peak, float(np.max(np.abs(block))))
        if self.file is None and self.n + block.size > self.limit:
            import tempfile

            self.file = tempfile.TemporaryFile(prefix="moe-audio-")  # unlinked at once: gone with the clip
            for part in self.parts:
                self.file.write(part.tobytes())
            self.parts = []
        if self.file is not None:
            self.file.write(block.tobytes())
        else:
            self.parts.append(block)
        self.n += block.size

    def finish(self):
        """``(audio, file)``: an array (file None), or a copy-on-write memory map of the file."""
        if self.file is None:
            audio = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
            self.parts = []
            return audio, None
        self.file.flush()
        return np.memmap(self.file, dtype=np.float32, mode="c", shape=(self.n,)), self.file

    def close(self) -> None:
        self.parts = []
        if self.file is not None:
            self.file.close()
            self.file = None


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _FrameSampler:
    """Keeps the video frames that fall on the sampling times (see :func:`frame_targets`)."""

    def __init__(self, targets, config: DecodeConfig, vstream):
        self.targets, self.config, self.vstream = targets, config, vstream
        self.next_target = 0
        self.n_video = 0
        self.rotation = 0

    def add(self, frame, t, frames: list, times: list) -> None:
        config = self.config
        if t is None:  # no timestamp: assume constant rate
            t = self.n_video / float(self.vstream.average_rate or 25)
        self.n_video += 1
        targets = self.targets
        if targets is None:  # unknown duration: plain fps sampling, capped
            if len(frames) >= config.max_frames or t + 1e-6 < len(frames) / config.fps:
                return
        else:
            if self.next_target >= len(targets) or t + 1e-6 < targets[self.next_target]:
                return
            while self.next_target < len(targets) and targets[self.next_target] <= t + 1e-6:
                self.next_target += 1
        w, h = _resized(frame.width, frame.height, config.max_side)
        img = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
        turns = round(getattr(frame, "rotation", 0) / 90) % 4 if config.upright else 0
        if turns:  # the display matrix says: show this frame turned counter-clockwise
            img = np.ascontiguousarray(np.rot90(img, turns))
        self.rotation = 90 * turns
        frames.append(img)
        times.append(float(t))


def _duration(container, astream, vstream) -> float | None:
    if container.duration:
        return container.duration / 1_000_000
    for s in (vstream, astream):
        if s is not None and s.duration and s.time_base:
            return float(s.duration * s.time_base)
    return None


def _stream_info(astream, vstream, duration) -> dict:
    info: dict = {"duration": duration}
    if vstream is not None:
        cc = vstream.codec_context
        info["video"] = {"codec": cc.name, "width": cc.width, "height": cc.height,
                         "fps": float(vstream.average_rate) if vstream.average_rate else None}
    if astream is not None:
        cc = astream.codec_context
        info["audio"] = {"codec": cc.name, "sample_rate": cc.sample_rate, "channels": cc.channels}
    return info
