"""`transformers` provider: a local vision-language model (Qwen2.5-VL class) from a path or an id.

The sampled frames go in as images and the filled prompt (with the transcript) as text, through the
processor's own chat template; decoding is greedy (same inputs, same answer). Any model that
``AutoModelForImageTextToText`` and ``AutoProcessor`` load and whose processor has a chat template
works the same way (Qwen2-VL, Qwen2.5-VL, LLaVA, Idefics, ...). Audio is not used (these models
take none).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import Provider, Reply, Request, VLMCallError, VLMError, register_provider


def weights_digest(path: str) -> str | None:
    """sha256 over the weight files of a local model folder (None for a hub id)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    for p in files:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest() if files else None


@register_provider
class TransformersVLM(Provider):
    name = "transformers"
    needs = ("frames", "text")

    def open(self):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ..extractors.hf_common import resolve_device

        c = self.config
        if not c.model:
            raise VLMError("provider=transformers needs model=PATH_OR_ID (e.g. a Qwen2.5-VL folder)")
        self.torch_device = resolve_device(self.device)  # "auto" (the CLI default) -> cuda when present, else cpu
        torch.manual_seed(c.seed)
        try:
            self.processor = AutoProcessor.from_pretrained(c.model)
            dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                     "float16": torch.float16}[c.dtype]
            self.model = AutoModelForImageTextToText.from_pretrained(c.model, dtype=dtype).to(self.torch_device).eval()
        except (OSError, ValueError) as exc:
            raise VLMError(f"cannot load the VLM {c.model!r} ({type(exc).__name__}: {exc}); give a local folder "
                           "saved with save_pretrained, or an id your Hugging Face cache holds") from exc
        if getattr(self.processor, "chat_template", None) is None:
            raise VLMError(f"the processor of {c.model} has no chat template; this provider needs one")

    def close(self):
        self.model = self.processor = None

    def ask(self, request: Request) -> Reply:
        import torch
        from PIL import Image

        if request.frames is None or len(request.frames) == 0:
            raise VLMCallError("no frames to show the model (the clip has no video)")
        images = [Image.fromarray(np.ascontiguousarray(f)) for f in request.frames]
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": request.prompt}]
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=images, return_tensors="pt").to(self.torch_device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        answer = self.processor.batch_decode(new, skip_special_tokens=True)[0]
        return Reply(text=answer, model=str(self.config.model),
                     meta={"prompt_tokens": int(inputs["input_ids"].shape[1]), "new_tokens": int(new.shape[1]),
                           "input": f"{len(images)} frames"})

    def provenance(self):
        return {"provider": self.name, "model": self.config.model,
                "weights_sha256": weights_digest(self.config.model) if self.config.model else None}
