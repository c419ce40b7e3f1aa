"""`speaker`: a speaker embedding per clip, Resemblyzer's VoiceEncoder (a 3-layer LSTM over 40-band
mel frames, GE2E-trained; 256-d, L2-normed, vector kind) on the decoded 16 kHz audio.

Weights: by default the ``pretrained.pt`` inside the PyPI wheel ``resemblyzer`` 0.1.4 (Apache-2.0),
checked against the sha256 recorded here (:data:`SHIPPED_SHA256`) before it loads; ``weights=FILE``
takes another VoiceEncoder checkpoint (its sha256 is part of the feature key).

Per clip, as Resemblyzer's ``preprocess_wav`` + ``embed_utterance`` do: the volume is raised to
-30 dBFS (never lowered), silences longer than ~0.2 s are cut (webrtcvad, ``trim_silence=true``),
the signal is cut into 1.6-s partial utterances (``rate`` per second, the last kept when it covers
``min_coverage``), and the embedding is the L2-normed mean of the partial embeddings. A clip in
which the VAD finds no voice is embedded untrimmed rather than dropped. Audio longer than
``chunk_seconds`` is processed chunk by chunk (bounded memory: Resemblyzer packs the whole signal
into bytes for the VAD) and the partial embeddings of every chunk are averaged; a clip shorter than
that gets exactly Resemblyzer's value.

Install: resemblyzer's metadata requires the ``typing`` backport and the ``webrtcvad`` source
package (built with a C compiler), neither of which this environment should take, so it is not in
setup.cfg's install_requires. What it imports at run time is torch, numpy, scipy, librosa and the
``webrtcvad`` module, which setup.cfg installs as the binary wheel ``webrtcvad-wheels``; install the
package itself with::

    pip install --no-deps resemblyzer==0.1.4

Without it, `speaker` stops before any clip with that line in its message.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import Feature
from ..checksum import sha256_file
from ..librosa_import import import_librosa
from ..registry import ExtractionError, Extractor, library_versions, register
from .hf_common import ModelLoadError, load_once, resolve_device

SAMPLE_RATE = 16000
INSTALL = "pip install --no-deps resemblyzer==0.1.4 webrtcvad-wheels"
SHIPPED_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"  # resemblyzer 0.1.4 pretrained.pt
LICENSE = "Apache-2.0 (resemblyzer 0.1.4, weights included)"


def missing_modules() -> list[str]:
    """The run-time imports of resemblyzer that are not installed."""
    return [m for m in ("resemblyzer", "webrtcvad", "librosa", "scipy", "torch") if importlib.util.find_spec(m) is None]


def import_resemblyzer():
    missing = missing_modules()
    if missing:
        raise ModelLoadError(f"speaker needs {', '.join(missing)} (resemblyzer's VoiceEncoder): {INSTALL} "
                             "(--no-deps: its metadata pins the `typing` backport and the webrtcvad source package)")
    with warnings.catch_warnings():  # resemblyzer imports scipy.ndimage.morphology, a deprecated namespace
        warnings.simplefilter("ignore", DeprecationWarning)
        import_librosa()  # resemblyzer imports librosa: its numba helpers compile under the lock
        import resemblyzer
        import resemblyzer.audio  # noqa: F401
    return resemblyzer


def shipped_weights() -> Path | None:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"


_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    stamp = (str(path), path.stat().st_size, path.stat().st_mtime_ns)
    if stamp not in _HASHES:
        _HASHES[stamp] = sha256_file(path)
    return _HASHES[stamp]


def split_even(n: int, max_len: int) -> list[tuple[int, int]]:
    parts = max(1, math.ceil(n / max_len))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@dataclass
class SpeakerConfig:
    weights: str | None = None  # None: resemblyzer's shipped pretrained.pt (checked); or a VoiceEncoder .pt file
    trim_silence: bool = True  # cut silences longer than ~0.2 s (webrtcvad), as resemblyzer's preprocess_wav
    rate: float = 1.3  # partial utterances (1.6 s) per second
    min_coverage: float = 0.75  # the last partial is kept when it covers this fraction of 1.6 s
    chunk_seconds: float = 30.0  # long audio: processed in chunks of at most this length

    def validate(self):
        if not 0.625 <= self.rate <= 100:
            raise ValueError("rate must be in [0.625, 100] partial utterances per second (partials are 1.6 s)")
        if not 0 < self.min_coverage <= 1:
            raise ValueError("min_coverage must be in (0, 1]")
        if not self.chunk_seconds >= 2.0:
            raise ValueError("chunk_seconds must be at least 2")
        if self.weights is not None and not Path(self.weights).expanduser().is_file():
            raise ValueError(f"weights file {self.weights!r} does not exist")


@register
class SpeakerExtractor(Extractor):
    name = "speaker"
    modality = "audio"
    kind = "vector"
    needs = ("audio",)
    Config = SpeakerConfig
    libraries = ("resemblyzer", "webrtcvad-wheels", "webrtcvad", "torch", "librosa")
    description = ("speaker embedding (Resemblyzer VoiceEncoder, 256-d, weights in the resemblyzer wheel): "
                   "VAD-trimmed, 1.6-s partials averaged; install: " + INSTALL)

    def weights_path(self) -> Path | None:
        if self.config.weights is not None:
            return Path(self.config.weights).expanduser().resolve()
        return shipped_weights()

    def weights_id(self) -> str:
        if self.config.weights is None:
            return "sha256:" + SHIPPED_SHA256  # verified when it loads
        if "_weights_id" not in self.__dict__:
            self._weights_id = "sha256:" + file_sha256(self.weights_path())
        return self._weights_id

    def key_payload(self) -> dict:
        payload = super().key_payload()
        payload["weights"] = self.weights_id()
        return payload

    def model_provenance(self) -> dict:
        path = self.weights_path()
        out = {"id": "resemblyzer VoiceEncoder", "source": "package" if self.config.weights is None else "local",
               "path": str(path) if path else None, "checksum": self.weights_id(),
               "device_requested": self.device}
        if self.config.weights is None:
            out.update(package="resemblyzer", package_version=library_versions(["resemblyzer"])["resemblyzer"],
                       license=LICENSE)
        missing = missing_modules()
        if missing:
            out["error"] = f"not installed: {', '.join(missing)} ({INSTALL})"
        return out

    def check_device(self) -> None:
        resolve_device(self.device)

    def preflight(self, load: bool) -> None:
        import_resemblyzer()  # missing: a usage error naming the install line, before any clip
        path = self.weights_path()
        if path is None or not path.is_file():
            raise ModelLoadError(f"speaker: no VoiceEncoder weights at {path}; reinstall resemblyzer ({INSTALL})")
        super().preflight(load)

    def load(self) -> None:
        load_once(self, self._load)

    def _load(self) -> None:
        rz = import_resemblyzer()
        path = self.weights_path()
        if self.config.weights is None:
            got = file_sha256(path)
            if got != SHIPPED_SHA256:
                raise ModelLoadError(f"speaker: {path} has sha256 {got}, not the {SHIPPED_SHA256} of resemblyzer "
                                     f"0.1.4's pretrained.pt; reinstall it ({INSTALL} --force-reinstall)")
        device = resolve_device(self.device)
        try:
            self.encoder = rz.VoiceEncoder(device=device, verbose=False, weights_fpath=path)
        except Exception as exc:  # noqa: BLE001 - torch.load and load_state_dict raise several kinds
            raise ModelLoadError(f"speaker: cannot load VoiceEncoder weights {path}: {exc}") from exc
        self.encoder.eval()
        self.audio = rz.audio

    def prepare(self, wav: np.ndarray) -> np.ndarray:
        """resemblyzer.preprocess_wav without its resampling: volume up to -30 dBFS, long silences cut
        (the whole chunk when the VAD finds no voice in it)."""
        from resemblyzer.hparams import audio_norm_target_dBFS

        wav = self.audio.normalize_volume(wav, audio_norm_target_dBFS, increase_only=True)
        if self.config.trim_silence:
            trimmed = self.audio.trim_long_silences(wav)
            if len(trimmed) >= SAMPLE_RATE // 10:
                return trimmed
        return wav

    def extract(self, clip):
        if clip.audio is None:
            raise ExtractionError(clip.missing.get("audio", "no audio"))
        if clip.sample_rate != SAMPLE_RATE:
            librosa = import_librosa()

            audio = librosa.resample(np.asarray(clip.audio, np.float32), orig_sr=clip.sample_rate,
                                     target_sr=SAMPLE_RATE)
            size, piece = audio.size, lambda a, b: audio[a:b]
        else:
            size, piece = clip.audio_samples, clip.read_audio
        if size == 0:
            raise ExtractionError("empty audio")
        total, count = None, 0
        for a, b in split_even(size, int(round(self.config.chunk_seconds * SAMPLE_RATE))):
            wav = np.asarray(piece(a, b), np.float32)
            if not np.any(wav):
                continue  # silence: no voice to embed
            wav = self.prepare(wav)
            _, partials, _ = self.encoder.embed_utterance(wav, return_partials=True, rate=self.config.rate,
                                                          min_coverage=self.config.min_coverage)
            partials = np.asarray(partials, np.float64)
            total = partials.sum(0) if total is None else total + partials.sum(0)
            count += len(partials)
        if not count:
            raise ExtractionError("silent audio: no voice to embed")
        mean = total / count
        norm = float(np.linalg.norm(mean))
        if not np.isfinite(norm) or norm == 0.0:
            raise ExtractionError("the voice encoder gave a zero embedding for this clip")
        return Feature(data=(mean / norm).astype(np.float32))
