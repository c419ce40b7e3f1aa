"""`asr`: a tiny random Whisper (hidden size 16, 2 layers) built from a config, saved with its
processor and loaded by path through the real code; its transcripts feed `hf-text` in the same run.

The random model writes gibberish: these tests check the plumbing (chunking, determinism, the
record, the transcript source), not recognition quality.
"""
import numpy as np
import pytest
from click.testing import CliRunner

from extract.cache import FeatureCache
from extract.media import Clip
from extract.registry import ExtractionError, SpecError, build, load_all
from tiny_models import save_tiny_hf_whisper

load_all()
torch = pytest.importorskip("torch")
tr = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return save_tiny_hf_whisper(tmp_path_factory.mktemp("tiny-whisper"),
                                "hello world, this is a test of speech recognition")


def audio_clip(seconds, cid="a", seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    y = (0.2 * np.sin(2 * np.pi * 180 * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    return Clip(id=cid, path=cid, audio=y, sample_rate=16000)


def test_asr_record_chunks_and_determinism(tiny_whisper):
    ex = build(f"asr:model={tiny_whisper},max_new_tokens=6,chunk_seconds=10").ensure_loaded()
    short = ex.extract(audio_clip(2.0)).record
    assert isinstance(short["text"], str) and short["chunks"] == 1 and short["seconds"] == 2.0
    assert ex.extract(audio_clip(2.0)).record["text"] == short["text"]  # greedy: same audio, same text
    long = ex.extract(audio_clip(25.0)).record
    assert long["chunks"] == 3  # 25 s in 10 s chunks: nothing truncated
    assert ex.provides == ("text",) and ex.kind == "record"
    prov = ex.provenance()["model"]
    assert prov["source"] == "local" and prov["checksum"].startswith("sha256:")
    with pytest.raises(ExtractionError, match="no audio stream"):
        ex.extract(Clip(id="v", path="v", missing={"audio": "no audio stream"}))


def test_asr_language_and_task_options(tiny_whisper):
    zh = build(f"asr:model={tiny_whisper},language=zh,max_new_tokens=4").ensure_loaded()
    assert zh.generate_kwargs()["language"] == "zh" and zh.generate_kwargs()["task"] == "transcribe"
    assert isinstance(zh.extract(audio_clip(1.0)).record["text"], str)
    with pytest.raises(SpecError, match="task"):
        build(f"asr:model={tiny_whisper},task=summarise")
    with pytest.raises(SpecError, match="chunk_seconds"):
        build(f"asr:model={tiny_whisper},chunk_seconds=60")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") + ["hello", "world"]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = tr.BertTokenizerFast(vocab_file=str(d / "vocab.txt"))
    torch.manual_seed(0)
    model = tr.BertModel(tr.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_asr_transcripts_feed_hf_text_with_their_source(tiny_whisper, tiny_bert, tmp_path):
    import cli
    from extract.synth import make_clip

    vids = tmp_path / "videos"
    make_clip(vids / "given.mp4", seconds=1.0, size=(32, 32), seed=1)
    make_clip(vids / "heard.mp4", seconds=1.0, size=(32, 32), seed=2)
    csv = tmp_path / "t.csv"
    csv.write_text("name,text\ngiven,hello world\n")
    cache = tmp_path / "cache"
    feats = f"asr:model={tiny_whisper},max_new_tokens=6,hf-text:model={tiny_bert},on_missing=empty"
    result = CliRunner().invoke(cli.main, ["extract", str(vids), "--cache", str(cache), "--features", feats,
                                           "--transcripts", str(csv)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    fc = FeatureCache(cache)
    asr = fc.read("asr", ["given", "heard"])
    assert asr.present.all() and all(isinstance(r["text"], str) for r in asr.data)
    text_key = fc.resolve("hf-text")
    sources = fc.feature_set(text_key).sources()
    assert sources["given"].startswith("csv")
    assert sources["heard"] == f"asr:{fc.resolve('asr')}"
    assert fc.read("hf-text", ["given", "heard"]).present.all()
