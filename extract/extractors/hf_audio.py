"""`hf-audio`: any transformers speech encoder (HuBERT, wav2vec2, WavLM, data2vec-audio, the Whisper
encoder...), every hidden layer mean-pooled over time -> (layers, dim), as s3prl's upstreams do.

Long audio is cut into equal chunks of at most ``chunk_seconds`` (never truncated); each chunk is
encoded alone and the clip value is the frame-count-weighted mean over chunks, i.e. the mean over
every frame of the clip. Chunks are read from the clip one at a time
(:meth:`extract.media.Clip.read_audio`), so memory does not grow with the clip's length; only a
model whose rate differs from the decoded rate (16 kHz) has the whole signal resampled at once.
Encoder-decoder models (Whisper) contribute their encoder only. Whisper's feature extractor pads
every input to its 30 s window: only the encoder frames that cover real audio are pooled, and a
chunk is never longer than that window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..cache import Feature
from ..librosa_import import import_librosa
from ..registry import ExtractionError, register
from .hf_common import LAYER_CHOICES, HFExtractor, ModelLoadError, encoder_of, validate_common

DEFAULT_CHUNK_SECONDS = 20.0


@dataclass
class HFAudioConfig:
    model: str = "facebook/hubert-base-ls960"  # hub id or local folder (from save_pretrained / a download)
    revision: str | None = None  # hub branch, tag or commit
    chunk_seconds: float | None = None  # None: 20 s, or the model's fixed window (Whisper: 30 s)
    layers: str = "all"  # all: embeddings + every layer; last: the last layer only
    dtype: str = "float32"  # float32 | float16 | bfloat16 (half precision is meant for GPUs)

    def validate(self):
        validate_common(self)
        if self.layers not in LAYER_CHOICES:
            raise ValueError(f"layers must be one of {', '.join(LAYER_CHOICES)}, not {self.layers!r}")
        if self.chunk_seconds is not None and not self.chunk_seconds >= 1.0:
            raise ValueError("chunk_seconds must be at least 1")


def split_even(n: int, max_len: int) -> list[tuple[int, int]]:
    """Cut ``n`` samples into the fewest equal chunks of at most ``max_len`` (no tiny last chunk)."""
    parts = max(1, math.ceil(n / max_len))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@register
class HFAudioExtractor(HFExtractor):
    name = "hf-audio"
    modality = "audio"
    kind = "layers"
    needs = ("audio",)
    Config = HFAudioConfig
    loaders = {"processor": "AutoFeatureExtractor", "model": "AutoModel"}
    description = ("transformers speech encoder (HuBERT, wav2vec2, WavLM, Whisper encoder): every hidden layer "
                   "mean-pooled over time -> (layers, dim); long audio chunked, never truncated")

    def setup(self):
        self.encoder = encoder_of(self.model)
        self.rate = int(getattr(self.processor, "sampling_rate", 16000))
        # a feature extractor that pads every input to a fixed window (Whisper) says so with n_samples
        self.window = getattr(self.processor, "n_samples", None)
        limit = self.window / self.rate if self.window else None
        wanted = self.config.chunk_seconds or (limit or DEFAULT_CHUNK_SECONDS)
        if limit is not None and wanted > limit + 1e-9:
            raise ModelLoadError(f"chunk_seconds={wanted:g} is longer than the {limit:g} s input window of "
                                 f"{self.config.model}; use chunk_seconds<={limit:g}")
        self.chunk_samples = int(round(wanted * self.rate))

    def extract(self, clip):
        if clip.audio is None:
            raise ExtractionError(clip.missing.get("audio", "no audio"))
        if clip.sample_rate != self.rate:  # resampled whole (a resampler has no chunk borders)
            librosa = import_librosa()

            audio = librosa.resample(np.asarray(clip.audio, dtype=np.float32), orig_sr=clip.sample_rate,
                                     target_sr=self.rate)
            size, piece = audio.size, lambda a, b: audio[a:b]
        else:  # one chunk in memory at a time
            size, piece = clip.audio_samples, clip.read_audio
        if size == 0:
            raise ExtractionError("empty audio")
        total, frames = None, 0
        for a, b in split_even(size, self.chunk_samples):
            sums, n = self.encode_chunk(piece(a, b))
            total = sums if total is None else total + sums
            frames += n
        if not frames:
            raise ExtractionError(f"audio too short for {self.config.model}: no encoder frame")
        return Feature(data=(total / frames).astype(np.float32))

    def encode_chunk(self, chunk: np.ndarray) -> tuple[np.ndarray, int]:
        """One chunk -> (per-layer SUM over its real frames as float64 (L, D), number of frames)."""
        fixed = self.window is not None
        inputs = self.processor(chunk, sampling_rate=self.rate, return_tensors="pt",
                                **({"return_attention_mask": True} if fixed else {}))
        model_inputs = {k: self.to_device(inputs[k]) for k in ("input_values", "input_features") if k in inputs}
        with self.inference():
            out = self.encoder(**model_inputs, output_hidden_states=True)
        states = out.hidden_states if self.config.layers == "all" else out.hidden_states[-1:]
        steps = states[-1].shape[1]
        n = steps
        if fixed:  # pool only the frames that cover real audio, not the padding to the window
            mask = inputs.get("attention_mask")
            real = float(mask.sum()) / mask.shape[-1] if mask is not None else chunk.size / self.window
            n = min(steps, max(1, math.ceil(real * steps)))
        stacked = self._torch.stack([h[0, :n] for h in states])  # (L, n, D)
        return stacked.double().sum(dim=1).cpu().numpy(), n
