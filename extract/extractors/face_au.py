"""`face-au`: a facial Action Unit time series of the clip's largest face (T x K, per frame).

Backends:

- ``mediapipe`` (default, offline): the 52 blendshape coefficients of MediaPipe FaceLandmarker
  (vendored model, checksum verified). Blendshapes are ARKit-style muscle activations; most map
  onto one FACS Action Unit (table below), so the series is an AU series in another basis.
- ``pyfeat``: py-feat's Detectorv2 pipeline: RetinaFace boxes (or MediaPipe's with
  ``detector=mediapipe``), the isotropic square-pad 256 px chip (expand 1.2), and the multitask
  model's AU intensities (20 AUs for the v2.5 weights). Weights: ``weights=DIR`` or
  ``$MOE_PYFEAT_WEIGHTS`` (a folder with ``face_multitask_v28.safetensors`` and, for the RetinaFace
  detector, ``retinaface_r34.safetensors``), else ``$FEAT_MULTITASK_WEIGHTS`` / py-feat's own hub
  download.

Frames without a face are kept: zeros with mask False. A clip where no frame has a face is a
recorded failure of this feature only. ``Feature.pooled`` holds, per channel over the frames with a
face: mean, std, min, max and the mean absolute frame-to-frame change (temporal activity).

Blendshape -> Action Unit correspondence (FACS; L/R variants map to the same AU):

=========================  ==============================  ===========================
blendshape                 AU                              note
=========================  ==============================  ===========================
browInnerUp                AU1 inner brow raiser
browOuterUp{L,R}           AU2 outer brow raiser
browDown{L,R}              AU4 brow lowerer
eyeWide{L,R}               AU5 upper lid raiser
cheekSquint{L,R}           AU6 cheek raiser
eyeSquint{L,R}             AU7 lid tightener
noseSneer{L,R}             AU9 nose wrinkler
mouthUpperUp{L,R}          AU10 upper lip raiser
mouthSmile{L,R}            AU12 lip corner puller
mouthDimple{L,R}           AU14 dimpler
mouthFrown{L,R}            AU15 lip corner depressor
mouthLowerDown{L,R}        AU16 lower lip depressor
mouthShrugLower            AU17 chin raiser
mouthShrugUpper            AU17 (upper-lip part)           approximate
mouthPucker                AU18 lip pucker
mouthStretch{L,R}          AU20 lip stretcher
mouthFunnel                AU22 lip funneler
mouthPress{L,R}            AU24 lip pressor
mouthClose                 AU25 negated (lips together     approximate
                           while the jaw is open)
jawOpen                    AU26 jaw drop (AU27 when wide)
mouthRoll{Lower,Upper}     AU28 lip suck
jawForward                 AU29 jaw thrust
jaw{Left,Right}            AU30 jaw sideways
cheekPuff                  AU34 puff
eyeBlink{L,R}              AU45 blink / AU43 eyes closed
eyeLook{Up,Down,In,Out}*   AU61-64 eye movements           gaze, not expression
mouth{Left,Right}          none (lips sideways)
_neutral                   none (always ~0)
=========================  ==============================  ===========================
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .. import faces
from ..cache import Feature
from ..checksum import sha256_file
from ..registry import ExtractionError, Extractor, register
from .hf_common import resolve_device

POOL_STATS = ("mean", "std", "min", "max", "delta_mean_abs")
AU_BACKENDS = ("mediapipe", "pyfeat")
MULTITASK_FILES = ("face_multitask_v28.safetensors", "face_multitask_v2.safetensors", "model.safetensors")


@dataclass
class FaceAuConfig:
    backend: str = "mediapipe"  # mediapipe (52 blendshapes) | pyfeat (Detectorv2 AU intensities)
    detector: str | None = None  # face detector for backend=pyfeat: pyfeat (RetinaFace) or mediapipe
    model: str | None = None  # mediapipe: a .task file instead of the vendored one
    weights: str | None = None  # pyfeat: folder of py-feat weights (else $MOE_PYFEAT_WEIGHTS)
    min_confidence: float = 0.5
    iou: float = 0.3  # IoU with the previous frame's box to stay on the same face
    head_pose: bool = False  # append yaw, pitch, roll (degrees) as 3 more channels
    max_faces: int = 4

    def validate(self):
        if self.backend not in AU_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(AU_BACKENDS)}, not {self.backend!r}")
        if self.detector is not None and self.detector not in faces.FACE_BACKENDS:
            raise ValueError(f"detector must be one of {', '.join(sorted(faces.FACE_BACKENDS))}")
        if self.backend == "mediapipe" and self.detector not in (None, "mediapipe"):
            raise ValueError("backend=mediapipe reads blendshapes from MediaPipe's own detector; drop detector=")
        if not 0 < self.min_confidence < 1 or not 0 <= self.iou < 1:
            raise ValueError("min_confidence must be in (0, 1) and iou in [0, 1)")

    @property
    def face_detector(self) -> str:
        return self.detector or ("mediapipe" if self.backend == "mediapipe" else "pyfeat")


def pool_series(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(T, D) series, (T,) mask -> (5 * D,) mean, std, min, max, mean |delta| over masked frames."""
    v = x[mask]
    if len(v) == 0:
        return np.zeros(5 * x.shape[1], np.float32)
    delta = np.abs(np.diff(v, axis=0)).mean(0) if len(v) > 1 else np.zeros(x.shape[1])
    return np.concatenate([v.mean(0), v.std(0), v.min(0), v.max(0), delta]).astype(np.float32)


class PyFeatAU:
    """py-feat's multitask model (Detectorv2's AU head) on square-pad chips of given boxes."""

    def __init__(self, weights: str | None, device: str):
        from feat.multitask.inference import MultitaskModel

        folder = faces.pyfeat_weights_dir(weights)
        path = None
        if folder is not None:
            path = faces.find_weight(folder, MULTITASK_FILES, "py-feat multitask weights")
        elif os.environ.get("FEAT_MULTITASK_WEIGHTS"):
            path = os.environ["FEAT_MULTITASK_WEIGHTS"]
        try:
            self.model = MultitaskModel(device=device, weights_path=str(path) if path else None)
        except faces.FaceError:
            raise
        except Exception as exc:
            where = f"{path}" if path else "py-feat's hub download (py-feat/face_multitask_v2)"
            raise faces.FaceError(f"cannot load py-feat multitask weights from {where} ({type(exc).__name__}: "
                                  f"{exc}); set weights=DIR or ${faces.PYFEAT_WEIGHTS_ENV} to a folder with "
                                  f"{MULTITASK_FILES[0]}") from exc
        self.weights_file = str(path) if path else "hub:py-feat/face_multitask_v2"
        self.sha256 = sha256_file(path) if path else None
        self.au_names = list(self.model.au_names)

    def __call__(self, frames: np.ndarray, boxes: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """frames (T, H, W, 3) uint8, boxes (N, 4) with frame index order -> (N, n_au), (N, 3) pose."""
        import torch
        from feat.multitask.inference import CHIP_SIZE, EXPAND_BBOX
        from feat.utils.image_operations import extract_face_square_pad_torch

        aus, poses = [], []
        for start in range(0, len(frames), batch_size):
            f = torch.from_numpy(np.ascontiguousarray(frames[start:start + batch_size])).permute(0, 3, 1, 2).float() / 255
            b = torch.from_numpy(np.asarray(boxes[start:start + batch_size], dtype=np.float32))
            chips, _ = extract_face_square_pad_torch(f, b, face_size=CHIP_SIZE, expand_bbox=EXPAND_BBOX,
                                                     frame_idx=torch.arange(len(b)))
            out = self.model(chips)
            aus.append(out.au)
            poses.append(np.degrees(out.pose[:, :3]) if out.pose.shape[1] >= 3 else np.zeros((len(b), 3)))
        return np.concatenate(aus).astype(np.float32), np.concatenate(poses).astype(np.float32)


@register
class FaceAuExtractor(Extractor):
    name = "face-au"
    modality = "face"
    kind = "series"
    needs = ("frames",)
    Config = FaceAuConfig
    libraries = ("mediapipe", "py-feat", "torch")
    description = ("Action Unit series of the largest face: MediaPipe's 52 blendshapes (default) or py-feat "
                   "AU intensities; masked frames without a face; pooled mean/std/min/max/delta")

    def load(self):
        c = self.config
        det = c.face_detector
        model = c.model if det == "mediapipe" else c.weights
        device = resolve_device(self.device)
        self.backend = faces.open_backend(det, model=model, min_confidence=c.min_confidence,
                                          max_faces=c.max_faces, device=device)
        self.au = PyFeatAU(c.weights, device) if c.backend == "pyfeat" else None

    def close(self):
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()
        self.loaded = False

    def channels(self):
        if self.config.backend == "mediapipe":
            names = list(faces.BLENDSHAPES)
        else:
            self.ensure_loaded()
            names = list(self.au.au_names)
        return names + (list(faces.POSE) if self.config.head_pose else [])

    def model_provenance(self):
        c = self.config
        if c.backend == "mediapipe":  # no need to load anything: the checksum says which model
            out = faces.MediaPipeBackend(model=c.model).provenance()
        else:
            self.ensure_loaded()
            out = dict(self.backend.provenance())
            out.update(au_model="py-feat multitask (Detectorv2)", au_weights=self.au.weights_file,
                       au_weights_sha256=self.au.sha256)
        out["pooled"] = "for each channel in order: " + ", ".join(POOL_STATS) + " (stat-major: all means first)"
        return out

    def extract(self, clip):
        if clip.frames is None or len(clip.frames) == 0:
            raise ExtractionError("no video frames")
        track = faces.track_clip(self.backend, clip, self.config.iou)
        if not track.present.any():
            raise ExtractionError(f"no face detected in any of {len(clip.frames)} frames")
        if self.au is None:
            values, pose = track.blendshapes, track.pose
        else:
            idx = np.flatnonzero(track.present)
            au, au_pose = self.au(clip.frames[idx], track.boxes[idx])
            values = np.zeros((len(track), au.shape[1]), np.float32)
            values[idx] = au
            pose = track.pose if track.pose is not None else np.zeros((len(track), 3), np.float32)
            if track.pose is None:
                pose[idx] = au_pose
        if self.config.head_pose:
            values = np.concatenate([values, pose], axis=1)
        values = np.where(track.present[:, None], values, 0.0).astype(np.float32)
        return Feature(data=values, timestamps=np.asarray(clip.frame_times, np.float64), mask=track.present.copy(),
                       pooled=pool_series(values, track.present))
