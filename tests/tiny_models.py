"""Tiny random models shared by several test files, built from configs and saved to a folder, so
the tests load them through the same code path as real weights; and the speech-like test signal
the audio models are fed."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def voice(seconds: float, seed: int = 0, f0: float = 140.0, rate: int = 16000) -> np.ndarray:
    """A voiced, speech-like signal: a gliding harmonic tone with a syllable envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f) / rate
    y = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t))
    return (0.2 * y + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def save_tiny_hubert(d: Path) -> Path:
    """A random HuBERT (hidden size 16, 2 layers) with its feature extractor, saved to ``d``."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.HubertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                    conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
                                    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=10)
    transformers.HubertModel(cfg).save_pretrained(d)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(d)
    return d

#: Whisper's special tokens, in the order the tiny tokenizers give them their (last) ids
WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
                    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def byte_bpe(texts, specials, vocab_size=300):
    """A byte-level BPE tokenizer trained on ``texts``; special tokens get the LAST ids, as in
    Whisper (where ids above <|notimestamps|> are timestamps)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    return tok


def save_tiny_hf_whisper(d: Path, text: str) -> Path:
    """A random transformers Whisper (d_model 16, 2 layers) with a byte-level BPE tokenizer trained on
    ``text`` and a generation config that knows English/Chinese and both tasks, saved to ``d``."""
    import torch
    import transformers as tr

    d.mkdir(parents=True, exist_ok=True)
    byte_bpe([text], WHISPER_SPECIALS).save(str(d / "tokenizer.json"))
    tok = tr.WhisperTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), unk_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    proc = tr.WhisperProcessor(feature_extractor=tr.WhisperFeatureExtractor(feature_size=80), tokenizer=tok)
    cfg = tr.WhisperConfig(vocab_size=len(tok), num_mel_bins=80, d_model=16, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_source_positions=1500, max_target_positions=64,
                           decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
                           pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
                           begin_suppress_tokens=None, suppress_tokens=None)
    torch.manual_seed(0)
    model = tr.WhisperForConditionalGeneration(cfg)
    gc = model.generation_config
    gc.lang_to_id = {"<|en|>": ids["<|en|>"], "<|zh|>": ids["<|zh|>"]}
    gc.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    gc.no_timestamps_token_id = ids["<|notimestamps|>"]
    gc.decoder_start_token_id = ids["<|startoftranscript|>"]
    gc.is_multilingual = True
    gc._from_model_config = False
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return d


def save_tiny_clip(d: Path) -> Path:
    """A random CLIP (hidden size 16, 2 layers, 32-px images in 8-px patches) with its image
    processor, saved to ``d``."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    transformers.CLIPModel(cfg).save_pretrained(d)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d
