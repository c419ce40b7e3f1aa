"""Vision-language model providers for the `vlm` extractor: a registry (name -> class).

A provider turns a :class:`Request` (the filled prompt, sampled frames, audio, or the media file)
into a :class:`Reply` (the model's raw text, the model name that answered, call metadata). The
extractor parses the text (``answer.parse_answer``) and caches the record. Providers:

- ``gemini`` (``gemini.py``): Google's Gemini through the official google-genai SDK;
- ``transformers`` (``local.py``): a local vision-language model (Qwen2.5-VL class) by path or id;
- ``jsonl`` (``jsonl.py``): answers made elsewhere, imported from a JSONL file.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PROVIDERS: dict[str, type["Provider"]] = {}


class VLMError(Exception):
    """A provider cannot be set up (no API key, model not found...); the message says what to do."""


class VLMCallError(Exception):
    """One call failed for good (retries exhausted, no answer, or the clip has nothing to show)."""


def register_provider(cls):
    PROVIDERS[cls.name] = cls
    return cls


@dataclass
class Request:
    clip_id: str
    prompt: str
    frames: np.ndarray | None = None  # (k, H, W, 3) uint8, sampled (and cropped) already
    frame_times: np.ndarray | None = None
    audio: np.ndarray | None = None
    sample_rate: int = 16000
    media: tuple[bytes, str] | None = None  # (file bytes, mime type) when the whole clip is sent inline
    upload: tuple[str, str] | None = None  # (file path, mime type): the whole clip, through a file upload
    path: str | None = None


@dataclass
class Reply:
    text: str
    model: str
    meta: dict = field(default_factory=dict)


class Provider:
    """Base class. ``needs``: what the extractor must decode for it (subset of media.NEEDS)."""

    name = "base"
    needs: tuple[str, ...] = ("frames", "text")

    def __init__(self, config, device: str = "cpu"):
        self.config = config
        self.device = device

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def ask(self, request: Request) -> Reply:  # pragma: no cover - abstract
        raise NotImplementedError

    def provenance(self) -> dict:
        return {"provider": self.name}

    def key_extra(self) -> dict:
        """What, beyond the config, changes this provider's answers (e.g. an imported file's hash)."""
        return {}


def load_providers() -> dict[str, type[Provider]]:
    from . import gemini, jsonl, local  # noqa: F401  (register on import)

    return PROVIDERS
