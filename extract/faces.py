"""Faces: detection backends (a registry), the largest face tracked across frames, crops.

A clip's frames go through a face backend, which returns every face of every frame. The tracker
keeps ONE face per clip: the largest face of the first frame that has one, then, frame after
frame, the detection that overlaps most (IoU) with the previous kept box; when nothing overlaps
enough (the person turned away, a cut) it re-acquires the largest face. Frames without a face are
kept as masked rows (``FaceTrack.present`` False), never dropped.

Backends (``FACE_BACKENDS``):

- ``mediapipe`` (default, offline): MediaPipe FaceLandmarker from the vendored
  ``extract/assets/face_landmarker.task`` (checksum verified at load; see assets/README.md). Also
  gives the 52 blendshape coefficients and the head pose of each face.
- ``pyfeat``: py-feat's RetinaFace-R34 detector. Weights: ``weights=DIR`` or the environment
  variable ``MOE_PYFEAT_WEIGHTS`` (a folder with ``retinaface_r34.safetensors``), else py-feat's
  own download (needs the Hugging Face hub).

MediaPipe landmarkers must be closed explicitly (they raise at interpreter exit otherwise): use a
backend as a context manager, or call ``close()``; :func:`open_backend` also registers an atexit
close as a safety net for long-lived workers.
"""
from __future__ import annotations

import atexit
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checksum import sha256_file

ASSETS = Path(__file__).resolve().parent / "assets"
FACE_LANDMARKER = ASSETS / "face_landmarker.task"
FACE_LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
PYFEAT_WEIGHTS_ENV = "MOE_PYFEAT_WEIGHTS"

#: MediaPipe's 52 blendshape names, in the order the model outputs them
BLENDSHAPES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
POSE = ("yaw", "pitch", "roll")


class FaceError(Exception):
    """A face backend cannot be set up (missing or wrong model file); the message says what to do."""


def checked_model_file(path: Path, user_given: bool, vendored_sha256: str, what: str, kind: str,
                       error: type[Exception] = FaceError) -> str:
    """sha256 of a model file; a vendored file (``user_given`` False) must match ``vendored_sha256``
    (extract/assets/README.md). A missing or damaged file raises ``error`` saying what to do."""
    if not path.is_file():
        raise error(f"{what} {path} not found; " + (f"pass model=PATH to an existing {kind} file" if user_given
                    else f"re-install the package (it ships extract/assets/{path.name})"))
    digest = sha256_file(path)
    if not user_given and digest != vendored_sha256:
        raise error(f"{path} has sha256 {digest}, expected {vendored_sha256} "
                    "(see extract/assets/README.md); the file is damaged: re-install the package")
    return digest


@dataclass
class Detection:
    """One face in one frame: box (x0, y0, x1, y1) in pixels, a score, and optional extras."""

    box: np.ndarray
    score: float = 1.0
    blendshapes: np.ndarray | None = None  # (52,) MediaPipe only
    pose: np.ndarray | None = None  # (3,) yaw, pitch, roll in degrees (MediaPipe only)

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@dataclass
class FaceTrack:
    """The kept face of each frame of a clip. Rows where ``present`` is False hold NaN boxes."""

    boxes: np.ndarray  # (T, 4) float32 pixels x0, y0, x1, y1
    present: np.ndarray  # (T,) bool
    scores: np.ndarray  # (T,) float32
    blendshapes: np.ndarray | None = None  # (T, 52) float32, zeros where absent
    pose: np.ndarray | None = None  # (T, 3) float32 degrees, zeros where absent
    switches: int = 0  # times the track was lost and re-acquired on another face
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.present)


# -- geometry ----------------------------------------------------------------------------------
def box_overlaps(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of ``box`` with each of ``boxes`` (x0, y0, x1, y1), by pycocotools' box IoU (the COCO
    evaluation's C code; two boxes without area overlap by 0). Not ``torchvision.ops.box_iou``: same
    values, but importing torchvision.ops imports ``torch._dynamo`` (1.6-3.2 s of a cold recognise,
    on its critical path; bench/README.md)."""
    from pycocotools import mask as coco

    def xywh(b):
        b = np.asarray(b, np.float64).reshape(-1, 4)
        return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)

    b = xywh(boxes)
    return np.asarray(coco.iou(xywh(box), b, [0] * len(b)), np.result_type(box, boxes, np.float32)).reshape(-1)


def track_largest(detections: list[list[Detection]], iou_threshold: float = 0.3) -> tuple[list[int | None], int]:
    """Pick one detection per frame: the largest face first, then the best IoU with the previous
    kept box (>= ``iou_threshold``); if none overlaps enough, re-acquire the largest face.

    Returns (index of the kept detection per frame or None, number of re-acquisitions).
    """
    chosen: list[int | None] = []
    prev: np.ndarray | None = None
    switches = 0
    for dets in detections:
        if not dets:
            chosen.append(None)
            continue
        pick = None
        if prev is not None:
            overlaps = box_overlaps(prev, np.stack([d.box for d in dets]))
            best = int(np.argmax(overlaps))
            if overlaps[best] >= iou_threshold:
                pick = best
            else:
                switches += 1
        if pick is None:
            pick = int(np.argmax([d.area for d in dets]))
        chosen.append(pick)
        prev = dets[pick].box
    return chosen, switches


def crop_box(box: np.ndarray, margin: float, square: bool = True) -> np.ndarray:
    """Grow a box by ``margin`` (fraction of its size, each side) and optionally square it."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = w * (1 + 2 * margin), h * (1 + 2 * margin)
    if square:
        w = h = max(w, h)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float32)


def crop(frame: np.ndarray, box: np.ndarray, margin: float = 0.2, size: int = 224, square: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 frame -> (size, size, 3) uint8 crop of ``box`` grown by ``margin``.

    Regions beyond the frame edge are filled by replicating the edge (a face at the border stays
    centred and at the same scale)."""
    from PIL import Image

    h, w = frame.shape[:2]
    x0, y0, x1, y1 = crop_box(box, margin, square)
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    ix1, iy1 = max(int(np.ceil(x1)), ix0 + 1), max(int(np.ceil(y1)), iy0 + 1)
    pad = (max(0, -iy0), max(0, iy1 - h)), (max(0, -ix0), max(0, ix1 - w)), (0, 0)
    if any(p for pair in pad[:2] for p in pair):
        frame = np.pad(frame, pad, mode="edge")
        ix0, ix1 = ix0 + pad[1][0], ix1 + pad[1][0]
        iy0, iy1 = iy0 + pad[0][0], iy1 + pad[0][0]
    region = frame[iy0:iy1, ix0:ix1]
    return np.array(Image.fromarray(np.ascontiguousarray(region)).resize((size, size), Image.BILINEAR))


def face_crops(frames: np.ndarray, track: FaceTrack, margin: float = 0.2, size: int = 224,
               square: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the tracked face: (T, size, size, 3) uint8 (zeros where no face) and the mask (T,)."""
    out = np.zeros((len(frames), size, size, 3), dtype=np.uint8)
    for t in np.flatnonzero(track.present):
        out[t] = crop(frames[t], track.boxes[t], margin, size, square)
    return out, track.present.copy()


def track_clip(backend: "FaceBackend", clip, iou_threshold: float = 0.3) -> FaceTrack:
    """:func:`track_faces` over ``clip.frames``, computed once per clip and detector setting: face-au,
    face-cnn and hf-image (crop=face) in one run share the same track instead of each detecting."""
    key = ("face-track", backend.name, str(backend.model), backend.min_confidence, backend.max_faces, iou_threshold)
    if key not in clip.face_tracks:
        clip.face_tracks[key] = track_faces(backend, clip.frames, iou_threshold)
    return clip.face_tracks[key]


def encode_image_series(clip, fps: float, embed, backend: "FaceBackend | None" = None, margin: float = 0.2,
                        size: int = 224):
    """Embed a clip's frames as a series Feature, with ``embed(list of RGB uint8 images) -> (N, D)``.

    ``backend=None``: every whole frame. With a face backend: the clip's largest face is tracked
    (:func:`track_clip`), cropped in every frame where it is found and embedded; frames without a
    face are masked zero rows, the pooled vector is the mean over frames with a face, and a clip
    with no face at all raises ExtractionError (a recorded failure of this feature only)."""
    from .cache import Feature
    from .registry import ExtractionError

    frames, frame_times = clip.frames, clip.frame_times
    if backend is None:
        present = np.ones(len(frames), dtype=bool)
        emb = np.asarray(embed(frames), np.float32)
    else:
        track = track_clip(backend, clip)
        if not track.present.any():
            raise ExtractionError(f"no face detected in any of {len(frames)} frames")
        present = track.present.copy()
        emb = np.asarray(embed([crop(frames[t], track.boxes[t], margin, size) for t in np.flatnonzero(present)]),
                         np.float32)
    data = np.zeros((len(frames), emb.shape[1]), np.float32)
    data[present] = emb
    if frame_times is not None and len(frame_times) == len(frames):
        times = np.asarray(frame_times, dtype=np.float64)
    else:
        times = np.arange(len(frames), dtype=np.float64) / fps
    return Feature(data=data, timestamps=times, mask=present, pooled=emb.mean(axis=0))


# -- backends ----------------------------------------------------------------------------------
FACE_BACKENDS: dict[str, type["FaceBackend"]] = {}


def register_backend(cls):
    FACE_BACKENDS[cls.name] = cls
    return cls


class FaceBackend:
    """Finds every face in a frame. Subclasses implement ``_open``, ``detect_batch`` and ``close``."""

    name = "base"
    gives_blendshapes = False

    def __init__(self, model: str | None = None, min_confidence: float = 0.5, max_faces: int = 4,
                 device: str = "cpu"):
        self.model = model
        self.min_confidence = min_confidence
        self.max_faces = max_faces
        self.device = device
        self.opened = False

    def open(self) -> "FaceBackend":
        if not self.opened:
            self._open()
            self.opened = True
        return self

    def _open(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        self.opened = False

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def detect_batch(self, frames: np.ndarray) -> list[list[Detection]]:  # pragma: no cover
        raise NotImplementedError

    def provenance(self) -> dict:
        return {"face_backend": self.name}


@register_backend
class MediaPipeBackend(FaceBackend):
    """MediaPipe FaceLandmarker (image mode): boxes from the 478 landmarks, blendshapes, head pose."""

    name = "mediapipe"
    gives_blendshapes = True

    def model_path(self) -> Path:
        return Path(self.model) if self.model else FACE_LANDMARKER

    def checksum(self) -> str:
        return checked_model_file(self.model_path(), bool(self.model), FACE_LANDMARKER_SHA256,
                                  "MediaPipe model file", ".task")

    def _open(self) -> None:
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        self.sha256 = self.checksum()
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path())),
            running_mode=vision.RunningMode.IMAGE, num_faces=self.max_faces,
            min_face_detection_confidence=self.min_confidence, min_face_presence_confidence=self.min_confidence,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        _close_at_exit(self)

    def close(self) -> None:
        lm = getattr(self, "_landmarker", None)
        if lm is not None:
            lm.close()
            self._landmarker = None
        super().close()

    def detect_batch(self, frames):
        import mediapipe as mp

        out = []
        for frame in frames:
            h, w = frame.shape[:2]
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
            result = self._landmarker.detect(image)
            dets = []
            for i, marks in enumerate(result.face_landmarks):
                xy = np.array([(p.x * w, p.y * h) for p in marks], dtype=np.float32)
                box = np.array([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()], dtype=np.float32)
                bs = np.array([c.score for c in result.face_blendshapes[i]], dtype=np.float32)
                pose = None
                if result.facial_transformation_matrixes:
                    pose = rotation_to_euler(np.asarray(result.facial_transformation_matrixes[i])[:3, :3])
                dets.append(Detection(box=box, score=1.0, blendshapes=bs, pose=pose))
            out.append(dets)
        return out

    def provenance(self):
        return {"face_backend": self.name, "face_model": str(self.model or "extract/assets/face_landmarker.task"),
                "face_model_sha256": getattr(self, "sha256", None) or self.checksum()}


def rotation_to_euler(r: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> (yaw, pitch, roll) in degrees (y-x-z convention of MediaPipe's face
    geometry: yaw turns left/right, pitch nods, roll tilts)."""
    sy = np.hypot(r[0, 0], r[1, 0])
    pitch = np.degrees(np.arctan2(-r[1, 2], r[2, 2]))
    yaw = np.degrees(np.arcsin(np.clip(r[0, 2], -1.0, 1.0)))
    roll = np.degrees(np.arctan2(-r[0, 1], r[0, 0])) if sy > 1e-6 else 0.0
    return np.array([yaw, pitch, roll], dtype=np.float32)


def pyfeat_weights_dir(weights: str | None) -> Path | None:
    """The local py-feat weights folder: ``weights`` option, else $MOE_PYFEAT_WEIGHTS, else None."""
    value = weights or os.environ.get(PYFEAT_WEIGHTS_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FaceError(f"py-feat weights folder {path} does not exist (from "
                        f"{'weights=' if weights else '$' + PYFEAT_WEIGHTS_ENV}); create it or fix the path")
    return path


def find_weight(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FaceError(f"{folder} has no {what} file (looked for {', '.join(names)}); put py-feat's file there "
                    f"(Hugging Face repo py-feat/{'retinaface_r34' if 'retina' in names[0] else 'face_multitask_v2'})")


@register_backend
class PyFeatBackend(FaceBackend):
    """py-feat RetinaFace-R34 (the detector of py-feat's Detectorv2)."""

    name = "pyfeat"
    WEIGHT_FILES = ("retinaface_r34.safetensors", "model.safetensors")

    def _open(self):
        import torch

        grad = torch.is_grad_enabled()
        try:
            self._open_retinaface()
        finally:
            torch.set_grad_enabled(grad)  # py-feat's RetinaFace switches autograd off process-wide

    def _open_retinaface(self):
        from feat.face_detectors.Retinaface.Retinaface_test import Retinaface

        from .extractors.hf_common import resolve_device

        folder = pyfeat_weights_dir(self.model)
        device = resolve_device(self.device)
        if folder is None:
            try:
                self._net = Retinaface(device=device, detection_threshold=self.min_confidence)
            except Exception as exc:  # hub unreachable, ...
                raise FaceError(f"py-feat could not download RetinaFace ({type(exc).__name__}: {exc}); "
                                f"set weights=DIR or ${PYFEAT_WEIGHTS_ENV} to a folder with "
                                f"{self.WEIGHT_FILES[0]}") from exc
            self.weights_file = "hub:py-feat/retinaface_r34"
            self.sha256 = None
        else:
            from safetensors.torch import load_file

            path = find_weight(folder, self.WEIGHT_FILES, "RetinaFace weights")
            self._net = Retinaface(device=device, detection_threshold=self.min_confidence, pretrained="local")
            self._net.net.load_state_dict(load_file(str(path)), strict=True)
            self._net.net.to(self._net.device).eval()
            self.weights_file, self.sha256 = str(path), sha256_file(path)

    def close(self):
        self._net = None
        super().close()

    def detect_batch(self, frames):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        out = []
        for dets in self._net(x):
            dets = sorted(dets, key=lambda d: -d[4])[: self.max_faces]
            out.append([Detection(box=np.array(d[:4], dtype=np.float32), score=float(d[4])) for d in dets])
        return out

    def provenance(self):
        return {"face_backend": self.name, "face_weights": getattr(self, "weights_file", None),
                "face_weights_sha256": getattr(self, "sha256", None)}


_OPEN: "weakref.WeakSet[FaceBackend]" = weakref.WeakSet()


def _close_at_exit(backend: FaceBackend) -> None:
    _OPEN.add(backend)


@atexit.register
def _close_all() -> None:
    for backend in list(_OPEN):
        try:
            backend.close()
        except Exception:
            pass


def open_backend(name: str, **kw) -> FaceBackend:
    if name not in FACE_BACKENDS:
        raise FaceError(f"unknown face backend {name!r}; known: {', '.join(sorted(FACE_BACKENDS))}")
    return FACE_BACKENDS[name](**kw).open()


# -- the tracker -------------------------------------------------------------------------------
def track_faces(backend: FaceBackend, frames: np.ndarray, iou_threshold: float = 0.3,
                batch_size: int = 16) -> FaceTrack:
    """Run ``backend`` over (T, H, W, 3) frames and keep the largest face, tracked by IoU."""
    detections: list[list[Detection]] = []
    for start in range(0, len(frames), batch_size):
        detections.extend(backend.detect_batch(frames[start:start + batch_size]))
    chosen, switches = track_largest(detections, iou_threshold)
    n = len(frames)
    boxes = np.full((n, 4), np.nan, dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    scores = np.zeros(n, dtype=np.float32)
    blend = np.zeros((n, len(BLENDSHAPES)), dtype=np.float32) if backend.gives_blendshapes else None
    pose = np.zeros((n, 3), dtype=np.float32) if backend.gives_blendshapes else None
    for t, (dets, k) in enumerate(zip(detections, chosen)):
        if k is None:
            continue
        d = dets[k]
        boxes[t], present[t], scores[t] = d.box, True, d.score
        if blend is not None and d.blendshapes is not None:
            blend[t] = d.blendshapes
        if pose is not None and d.pose is not None:
            pose[t] = d.pose
    faces_per_frame = [len(d) for d in detections]
    return FaceTrack(boxes=boxes, present=present, scores=scores, blendshapes=blend, pose=pose,
                     switches=switches, info={"max_faces_in_a_frame": max(faces_per_frame, default=0)})
