"""`hf-image`: any transformers image encoder (CLIP/SigLIP vision tower, DINOv2, ViT...) over the
clip's frames: one embedding per frame kept as a series (T x D, with the frame timestamps) plus
their mean as the pooled vector.

``output`` chooses the per-frame embedding: ``projected`` = the joint image-text space of a dual
encoder (CLIP ``get_image_features``), ``pooler`` = the vision tower's pooled output (DINOv2: the
layer-normed CLS token), ``cls`` = the first token of the last layer, ``mean`` = the mean of all
last-layer tokens; ``auto`` = projected when the model has a projection, else pooler, else cls.

``crop=face`` encodes the clip's largest face instead of the whole frame (extract/faces.py:
MediaPipe FaceLandmarker, the face tracked across frames by IoU; a square crop grown by
``face_margin``, resized to ``face_size``): frames without a face are masked rows (zeros), the pooled
vector is the mean over frames with a face, and a clip without any face is a recorded failure.

Frames go through the model in batches of ``batch_size`` (a GPU is used well). The encoding of a
list of images is :meth:`HFImageExtractor.embed_images`, so other inputs (face crops of any size)
can reuse it unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import ExtractionError, register
from .hf_common import HFExtractor, ModelLoadError, validate_common

OUTPUTS = ("auto", "projected", "pooler", "cls", "mean")


@dataclass
class HFImageConfig:
    model: str = "openai/clip-vit-base-patch32"  # hub id or local folder
    revision: str | None = None  # hub branch, tag or commit
    output: str = "auto"  # auto | projected | pooler | cls | mean (see the module docstring)
    batch_size: int = 32  # frames per forward pass
    dtype: str = "float32"  # float32 | float16 | bfloat16
    crop: str = "face"  # face: the tracked largest face (extract/faces.py) | frame: whole frames
    face_margin: float = 0.2  # crop=face: box grown by this fraction of its size on each side
    face_size: int = 224  # crop=face: side of the square crop handed to the processor

    def validate(self):
        validate_common(self)
        if self.crop not in ("frame", "face"):
            raise ValueError(f"crop must be frame or face, not {self.crop!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, not {self.output!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


@register
class HFImageExtractor(HFExtractor):
    name = "hf-image"
    modality = "visual"
    kind = "series"
    needs = ("frames",)
    Config = HFImageConfig
    loaders = {"processor": "AutoImageProcessor", "model": "AutoModel"}
    description = ("transformers image encoder (CLIP vision tower, DINOv2...) per frame: series T x dim with "
                   "timestamps + pooled mean; output=auto|projected|pooler|cls|mean, batched frames")

    def setup(self):
        model = self.model
        # a dual encoder (CLIPModel, SiglipModel) carries its vision tower as `vision_model`
        self.tower = getattr(model, "vision_model", model)
        projects = hasattr(model, "get_image_features") or hasattr(model, "visual_projection")
        output = self.config.output
        if output == "auto":
            output = "projected" if projects else "pooler"
        if output == "projected" and not projects:
            raise ModelLoadError(f"output=projected: {self.config.model} has no image projection "
                                 "(not a CLIP-like dual encoder); use output=pooler, cls or mean")
        self.output = output
        if self.config.crop == "face":
            from .. import faces

            self.face_backend = faces.open_backend("mediapipe")

    def close(self):
        """The MediaPipe landmarker of crop=face, closed explicitly (left to the garbage collector it
        can deadlock in MediaPipe's __del__ at interpreter exit)."""
        backend = getattr(self, "face_backend", None)
        if backend is not None:
            backend.close()
            self.face_backend = None
        super().close()
        self.loaded = False

    def extract(self, clip):
        from .. import faces

        if clip.frames is None or len(clip.frames) == 0:
            raise ExtractionError(clip.missing.get("frames", "no frames"))
        backend = self.face_backend if self.config.crop == "face" else None
        return faces.encode_image_series(clip, self.decode.fps, self.embed_images, backend,
                                         self.config.face_margin, self.config.face_size)

    def model_provenance(self) -> dict:
        out = super().model_provenance()
        if self.config.crop == "face":
            from .. import faces

            out["faces"] = faces.MediaPipeBackend().provenance()
        return out

    def embed_images(self, images) -> np.ndarray:
        """RGB uint8 images, a (N, H, W, 3) array or a list of (H, W, 3) arrays of any sizes -> (N, D)
        float32 embeddings, computed in batches of ``batch_size``."""
        out = []
        for start in range(0, len(images), self.config.batch_size):
            batch = [np.asarray(im) for im in images[start:start + self.config.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt",
                                    input_data_format="channels_last")["pixel_values"]
            out.append(self._forward(self.to_device(pixels)))
        return np.concatenate(out).astype(np.float32)

    def _forward(self, pixels) -> np.ndarray:
        with self.inference():
            if self.output == "projected":
                if hasattr(self.model, "get_image_features"):
                    feats = self.model.get_image_features(pixel_values=pixels)
                    # transformers >= 5 returns an output object whose pooler_output is the projection
                    feats = feats if isinstance(feats, self._torch.Tensor) else feats.pooler_output
                else:  # *WithProjection vision models
                    feats = self.model(pixel_values=pixels).image_embeds
            else:
                out = self.tower(pixel_values=pixels)
                hidden = out.last_hidden_state
                pooler = getattr(out, "pooler_output", None)
                if self.output == "pooler" and pooler is not None:
                    feats = pooler
                elif self.output == "mean":
                    feats = hidden.mean(dim=1) if hidden.dim() == 3 else hidden.flatten(2).mean(dim=2)
                else:  # cls, or pooler on a model without a pooled output
                    feats = hidden[:, 0] if hidden.dim() == 3 else hidden.flatten(2).mean(dim=2)
            return feats.float().reshape(len(pixels), -1).cpu().numpy()
