"""`hf-text`: any transformers text encoder, or a sentence-transformers model folder, over the clip's
transcript; every hidden layer pooled over tokens -> (layers, dim).

A sentence-transformers folder (e.g. the ``minilm`` alias) loads through the same
AutoTokenizer + AutoModel code: its transformer is the folder's root model. With ``pooling=mean``
the last layer is the sentence-transformers embedding before its optional Normalize step.

Transcripts longer than ``max_length`` tokens (capped by the model's own limit) are TRUNCATED to
their first ``max_length`` tokens: transcripts of emotion clips are a few sentences, far below it.

A clip without a transcript, or with an empty one, is handled as ``on_missing`` says: ``fail``
records the clip as a failure ("no transcript for this clip" / "empty transcript"), so the fit
stage masks the text expert for it; ``empty`` encodes the empty string (special tokens only).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cache import Feature
from ..registry import ExtractionError, register
from .hf_common import LAYER_CHOICES, HFExtractor, encoder_of, validate_common

POOLINGS = ("mean", "cls")
ON_MISSING = ("fail", "empty")


@dataclass
class HFTextConfig:
    model: str = "minilm"  # hub id, local folder, or alias (minilm: the offline all-MiniLM-L6-v2 package)
    revision: str | None = None  # hub branch, tag or commit
    pooling: str = "mean"  # mean: masked mean over tokens; cls: the first token
    max_length: int = 512  # tokens kept (longer transcripts truncated); capped by the model's limit
    on_missing: str = "fail"  # fail: missing/empty transcript is a recorded failure; empty: encode ""
    layers: str = "all"  # all: embeddings + every layer; last: the last layer only
    dtype: str = "float32"  # float32 | float16 | bfloat16

    def validate(self):
        validate_common(self)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        if self.on_missing not in ON_MISSING:
            raise ValueError(f"on_missing must be one of {', '.join(ON_MISSING)}, not {self.on_missing!r}")
        if self.layers not in LAYER_CHOICES:
            raise ValueError(f"layers must be one of {', '.join(LAYER_CHOICES)}, not {self.layers!r}")
        if self.max_length < 2:
            raise ValueError("max_length must be at least 2")


@register
class HFTextExtractor(HFExtractor):
    name = "hf-text"
    modality = "text"
    kind = "layers"
    needs = ("text",)
    Config = HFTextConfig
    loaders = {"tokenizer": "AutoTokenizer", "model": "AutoModel"}
    handles_missing = True  # the runner hands over clips without a transcript; on_missing decides
    description = ("transformers text encoder or sentence-transformers folder over the transcript: every layer "
                   "pooled (mean|cls) -> (layers, dim); missing/empty transcript: on_missing=fail|empty")

    def runs_without(self, missing) -> bool:
        return not missing or self.config.on_missing == "empty"  # fail: no transcript, nothing to load for

    def setup(self):
        model = encoder_of(self.model)
        self.encoder = getattr(model, "text_model", model)  # CLIP-like dual encoders: the text tower
        limits = [self.config.max_length]
        tok_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_limit, int) and tok_limit < 1_000_000:
            limits.append(tok_limit)
        pos_limit = getattr(self.encoder.config, "max_position_embeddings", None)
        if isinstance(pos_limit, int) and pos_limit > 0:
            limits.append(pos_limit)
        self.max_length = min(limits)

    def extract(self, clip):
        text = clip.text
        if text is None or not text.strip():
            if self.config.on_missing == "fail":
                raise ExtractionError("no transcript for this clip" if text is None else "empty transcript")
            text = ""
        return Feature(data=self.encode_texts([text])[0])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, layers, dim) float32, each layer pooled over that text's tokens."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        mask = batch["attention_mask"]
        if int(mask.sum(dim=1).min()) == 0:
            raise ExtractionError(f"the tokenizer of {self.config.model} turns this transcript into no token")
        accepted = ("input_ids", "attention_mask", "token_type_ids")
        inputs = {k: self.to_device(v) for k, v in batch.items() if k in accepted}
        with self.inference():
            out = self.encoder(**inputs, output_hidden_states=True)
            states = out.hidden_states if self.config.layers == "all" else out.hidden_states[-1:]
            stacked = self._torch.stack(states, dim=1).float()  # (n, L, T, D)
            if self.config.pooling == "cls":
                pooled = stacked[:, :, 0]
            else:
                m = inputs["attention_mask"].to(stacked.dtype)[:, None, :, None]
                pooled = (stacked * m).sum(dim=2) / m.sum(dim=2)
        return pooled.cpu().numpy().astype(np.float32)
