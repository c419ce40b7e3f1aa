"""`asr`: speech recognition with a transformers Whisper-class model (by hub id or local folder);
each clip's transcript is cached as a record ``{"text", ...}``.

The record's text becomes the transcript of clips that ``--transcripts`` does not cover (the runner
feeds it to `hf-text` and `vlm` in the same run, and later runs read it from the cache), and the
text features record that source (``asr:<key>``).

Audio longer than ``chunk_seconds`` (at most Whisper's 30 s window) is cut into consecutive chunks
that are transcribed as one batch and joined, so nothing is truncated. Decoding is greedy by
default (``num_beams=1``): same audio, same text. ``language`` (e.g. ``zh``, ``en``) forces the
language token; unset, Whisper detects it. ``task=translate`` gives English text.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cache import Feature
from ..registry import ExtractionError, register
from .hf_common import HFExtractor, validate_common

WHISPER_WINDOW = 30.0


@dataclass
class AsrConfig:
    model: str = "openai/whisper-large-v3"  # hub id or local folder (Whisper class)
    revision: str | None = None
    language: str | None = None  # e.g. zh, en; None: detected by the model
    task: str = "transcribe"  # transcribe | translate (to English)
    chunk_seconds: float = 30.0  # audio is cut into chunks of at most this length (<= 30)
    max_new_tokens: int = 440  # per chunk (capped by the model's decoder length)
    num_beams: int = 1
    batch_size: int = 8  # chunks per generate call
    dtype: str = "float32"

    def validate(self):
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
class AsrExtractor(HFExtractor):
    name = "asr"
    modality = "text"
    kind = "record"
    needs = ("audio",)
    provides = ("text",)
    Config = AsrConfig
    loaders = {"processor": "AutoProcessor", "model": "AutoModelForSpeechSeq2Seq"}
    description = ("speech recognition (transformers Whisper-class model): the clip's transcript as a record; "
                   "feeds hf-text/vlm for clips without a given transcript")

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
