"""`speaker`: Resemblyzer's VoiceEncoder per clip. Without resemblyzer installed, the extractor must
stop before any clip with the install line (tested always); with it, a random VoiceEncoder checkpoint
(``weights=``) goes through the same code as the shipped weights, and the shipped weights of the
resemblyzer 0.1.4 wheel are checked and used on 2-s clips made here.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from extract.runner import UsageError
from extract.media import Clip
from extract.registry import ExtractionError, SpecError, build, load_all
from tiny_models import voice

load_all()
from extract.extractors import speaker as S  # noqa: E402
from extract.extractors.hf_common import ModelLoadError  # noqa: E402

RATE = 16000
HAVE = not S.missing_modules()
needs_resemblyzer = pytest.mark.skipif(not HAVE, reason=f"resemblyzer is not installed ({S.INSTALL})")


def clip_of(y, cid="a"):
    return Clip(id=cid, path=cid, audio=y, sample_rate=RATE, duration=len(y) / RATE)


# -- without resemblyzer --------------------------------------------------------------------------------
@pytest.fixture
def no_resemblyzer(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "resemblyzer" else real(name, *a))


def test_missing_package_stops_before_any_clip_with_the_install_line(no_resemblyzer, tmp_path):
    ex = build("speaker")
    assert ex.key.startswith("speaker-")  # the key stays computable
    prov = ex.provenance()
    json.dumps(prov, allow_nan=False)
    assert "pip install --no-deps resemblyzer==0.1.4" in prov["model"]["error"]
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps resemblyzer==0\.1\.4"):
        ex.preflight(load=False)
    from extract import extract
    from extract.synth import make_clip

    make_clip(tmp_path / "v" / "a.wav", seconds=1.0, video=False)
    with pytest.raises(UsageError, match="speaker cannot start: .*--no-deps resemblyzer"):
        extract(tmp_path / "v", tmp_path / "cache", features=("speaker",), progress=False)


def test_spec_errors(tmp_path):
    for spec, what in [("speaker:rate=0.1", "rate"), ("speaker:min_coverage=0", "min_coverage"),
                       ("speaker:chunk_seconds=1", "chunk_seconds"), (f"speaker:weights={tmp_path / 'x.pt'}", "weights")]:
        with pytest.raises(SpecError, match=what):
            build(spec)


# -- with resemblyzer -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    if not HAVE:
        pytest.skip(f"resemblyzer is not installed ({S.INSTALL})")
    import torch

    rz = S.import_resemblyzer()
    torch.manual_seed(0)
    net = rz.VoiceEncoder(device="cpu", verbose=False)  # the architecture; its weights are replaced
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    path = tmp_path_factory.mktemp("voice") / "random.pt"
    torch.save({"model_state": net.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def rand(random_weights):
    return build(f"speaker:weights={random_weights}").ensure_loaded()


@needs_resemblyzer
def test_embedding_is_resemblyzers_for_a_short_clip(rand):
    rz = S.import_resemblyzer()
    y = voice(2.0)
    feat = rand.extract(clip_of(y))
    assert feat.data.shape == (256,) and feat.data.dtype == np.float32
    assert abs(float(np.linalg.norm(feat.data)) - 1.0) < 1e-5
    ref = rand.encoder.embed_utterance(rz.preprocess_wav(y))  # resemblyzer's own preprocessing and pooling
    np.testing.assert_allclose(feat.data, ref, atol=1e-6)
    assert np.array_equal(rand.extract(clip_of(y)).data, feat.data)  # deterministic


@needs_resemblyzer
def test_long_audio_is_read_in_chunks_and_pools_every_partial(rand):
    y = voice(70.0, seed=3)
    clip = clip_of(y)
    reads = []
    real_read = clip.read_audio
    clip.read_audio = lambda a, b, pad=None: (reads.append((a, b)), real_read(a, b))[1]
    feat = rand.extract(clip)
    assert reads == S.split_even(len(y), 30 * RATE) and len(reads) == 3
    partials = [rand.encoder.embed_utterance(rand.prepare(y[a:b]), return_partials=True)[1] for a, b in reads]
    mean = np.concatenate(partials).mean(0)
    np.testing.assert_allclose(feat.data, mean / np.linalg.norm(mean), atol=1e-6)


@needs_resemblyzer
def test_silence_noise_and_other_rates(rand):
    with pytest.raises(ExtractionError, match="silent"):
        rand.extract(clip_of(np.zeros(2 * RATE, np.float32)))
    noise = (0.05 * np.random.default_rng(1).standard_normal(2 * RATE)).astype(np.float32)
    assert np.isfinite(rand.extract(clip_of(noise)).data).all()  # no voice found: embedded untrimmed
    y8 = voice(2.0)[::2].copy()
    assert rand.extract(Clip(id="a", path="a", audio=y8, sample_rate=8000)).data.shape == (256,)
    with pytest.raises(ExtractionError, match="no audio stream"):
        rand.extract(Clip(id="v", path="v", missing={"audio": "no audio stream"}))
    untrimmed = build(f"speaker:weights={rand.config.weights},trim_silence=false").ensure_loaded()
    assert untrimmed.key != rand.key and untrimmed.extract(clip_of(voice(2.0))).data.shape == (256,)


@needs_resemblyzer
def test_key_follows_the_weights_file(random_weights, tmp_path):
    import shutil

    copy = tmp_path / "w.pt"
    shutil.copy(random_weights, copy)
    before = build(f"speaker:weights={copy}")
    assert before.provenance()["model"]["checksum"].startswith("sha256:")
    assert before.key != build("speaker").key
    copy.write_bytes(copy.read_bytes() + b"\0")  # other bytes under the same name
    assert build(f"speaker:weights={copy}").key != before.key


@needs_resemblyzer
def test_shipped_weights_are_checked(monkeypatch):
    monkeypatch.setattr(S, "SHIPPED_SHA256", "0" * 64)
    with pytest.raises(ModelLoadError, match="sha256"):
        build("speaker").ensure_loaded()


@needs_resemblyzer
def test_extract_api_writes_vectors(random_weights, tmp_path):
    from extract import extract
    from extract.cache import read_features
    from extract.synth import make_clip

    make_clip(tmp_path / "v" / "a.mp4", seconds=1.5, size=(32, 32), seed=1)
    make_clip(tmp_path / "v" / "b.wav", seconds=2.0, video=False, rate=22050, freq=200, seed=2)
    summary = extract(tmp_path / "v", tmp_path / "cache", features=(f"speaker:weights={random_weights}",),
                      progress=False)
    assert not summary.failures
    batch = read_features(tmp_path / "cache", "speaker", ["a", "b"])
    assert batch.kind == "vector" and batch.data.shape == (2, 256) and batch.present.all()
    np.testing.assert_allclose(np.linalg.norm(batch.data, axis=1), 1.0, atol=1e-5)


# -- the extractor contract (tests/test_extractor_contract.py) on `speaker` -------------------------------
sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_extractor_contract as contract  # noqa: E402

FRAME = np.zeros((64, 64, 3), np.uint8)


@needs_resemblyzer
def test_contract(rand, monkeypatch):
    cid, make = "speaker", (lambda d: f"speaker:weights={rand.config.weights}")
    made = {}

    def built(c, m):
        if c not in made:
            made[c] = build(m(None))
        return made[c]

    contract.test_declared_class_attributes("speaker")
    contract.test_key_is_stable_across_pickling(built, "speaker", cid, make, "audio", FRAME)
    contract.test_provenance_serialises_to_json(built, "speaker", cid, make, "audio")
    contract.test_missing_input_raises_extraction_error(built, "speaker", cid, make, "audio", FRAME, None)
    contract.test_runner_records_a_missing_input_as_a_failure_of_that_set(built, "speaker", cid, make, "audio", FRAME,
                                                                          monkeypatch)
    contract.test_output_has_the_declared_kind(built, "speaker", cid, make, "audio", FRAME)


# -- the shipped weights ------------------------------------------------------------------------------------
@needs_resemblyzer
def test_shipped_voice_encoder_on_two_second_clips():
    ex = build("speaker").ensure_loaded()
    prov = ex.provenance()["model"]
    assert prov["source"] == "package" and prov["package_version"] == "0.1.4" and prov["license"].startswith("Apache")
    assert prov["checksum"] == "sha256:" + S.SHIPPED_SHA256 == "sha256:" + S.file_sha256(Path(prov["path"]))
    low1, low2, high = (ex.extract(clip_of(voice(2.0, seed=s, f0=f))).data for s, f in ((0, 110), (1, 112), (2, 240)))
    assert float(low1 @ low2) > float(low1 @ high) + 0.2  # two near-identical voices closer than a different one
