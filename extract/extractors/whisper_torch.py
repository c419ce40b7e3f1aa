"""Whisper's encoder in PyTorch on the CTranslate2 model's own weights: `whisper`'s runtime for
``compute_type=bfloat16`` on the CPU, which CTranslate2's CPU backend does not offer (it has float32,
int8 and int8_float32), and for ``compute_type=torch_float32`` (float32, CTranslate2's values to
~1e-5, faster for a padded window: the last layer computes only the kept rows, the constant tail's
convolutions run once; 481 vs 657 ms per window, one thread, on a CPU without bfloat16 products).

Why: the padded encoder of tiny.en (30-s window, 1500 positions) costs 0.37-0.41 s of one core per clip
in CTranslate2 float32 (int8 is no faster: attention stays float32), at the core's float32 matmul
peak. On a CPU with bfloat16 dot products (AVX512_BF16, AMX) PyTorch's bfloat16 matmuls run ~5x
faster: the extractor's 0.42 s per clip (median, mel included) becomes 0.18 s. On EmoDB (408 clips,
leave-one-speaker-out, pooled mean+std, tuned logistic regression; bench/bench_whisper_bf16.py) it is
as accurate: UAR 0.813 vs 0.812 for CTranslate2 float32; the pooled values moved by a median 0.013
(99th percentile 0.065) of each value's spread over the clips.

What runs in bfloat16: the convolutions, every linear layer, the attention products and softmax
(in blocks of queries).
The residual stream and the layer norms are float32. Only the rows a caller keeps are computed in
the last layer (``rows``: the frames that cover real audio, 100 of 1500 for a padded 2-s clip);
their values are those of the full computation. With ``dtype=float32`` the same code reproduces
CTranslate2's float32 encoder (to ~1e-5; tests/test_whisper.py checks both).

Values do not depend on the thread count (oneDNN splits these products over rows and columns, not
the reduction; checked for 1 and 2 threads), so a call may take the threads of the extractor's pool
(as CTranslate2's intra-op threads do), whatever torch's setting for the run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..threads import torch_threads
from .ct2_weights import CT2FormatError, read_ct2_weights

LAYER = "encoder/layer_{}/"
#: queries per attention block: a block's scores (heads x 256 x 1500 in bfloat16: 4.6 MB for tiny.en)
#: are read by the softmax and the second product while still in the caches; each row's values are those
#: of the whole product (same kernels per row): 20 vs 45 ms per layer of tiny.en, one thread
QUERY_BLOCK = 256
#: columns of a padded window's constant tail the convolutions still read (see TorchWhisperEncoder._front)
TAIL_CONTEXT = 12


class TorchWhisperEncoder:
    def __init__(self, model_dir, dtype: str = "bfloat16"):
        import torch

        self.torch = torch
        self.dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
        weights = read_ct2_weights(Path(model_dir) / "model.bin", prefix="encoder/")
        if weights.spec != "WhisperSpec":
            raise CT2FormatError(f"{model_dir}: a CTranslate2 {weights.spec}, not a Whisper model")
        if "encoder/num_heads" not in weights.variables:
            raise CT2FormatError(f"{model_dir}: a Whisper model without encoder/num_heads (spec revision "
                                 f"{weights.revision}): convert it with ctranslate2 >= 4")
        self.heads = int(weights.variables["encoder/num_heads"])
        self.layers = 0
        while (LAYER.format(self.layers) + "ffn/linear_0/weight") in weights.variables:
            self.layers += 1
        if not self.layers:
            raise CT2FormatError(f"{model_dir}: no encoder layers in model.bin")

        self.w = {}
        for name in weights.variables:
            if name == "encoder/num_heads":
                continue
            t = torch.from_numpy(weights.float32(name))  # a new array: float32() widens or copies
            # matmul / convolution operands in the low dtype; norms and positions stay float32
            self.w[name] = t.to(self.dtype) if "/linear_" in name or name.startswith("encoder/conv") else t
        self.width = int(self.w["encoder/layer_norm/gamma"].shape[0])
        self.positions = int(self.w["encoder/position_encodings/encodings"].shape[0])

    def encode(self, mel: np.ndarray, rows: int | None = None, threads: int | None = None) -> np.ndarray:
        """``mel`` (n_mels, T) float32 -> the encoder states (ceil(T/2), D) float32, or only the first
        ``rows`` of them; ``threads``: torch's intra-op threads for this call (None: as they are)."""
        with torch_threads(threads):
            return self._encode(mel, rows)

    def _convolutions(self, mel: np.ndarray):
        F = self.torch.nn.functional
        w = self.w
        x = self.torch.from_numpy(mel)[None].to(self.dtype)
        x = F.gelu(F.conv1d(x, w["encoder/conv1/weight"], w["encoder/conv1/bias"], padding=1))
        return F.gelu(F.conv1d(x, w["encoder/conv2/weight"], w["encoder/conv2/bias"], stride=2, padding=1))[0]

    def _front(self, mel: np.ndarray):
        """The two convolutions (GELU after each) of ``mel`` (n_mels, T): (D, T/2) in the low dtype.

        A padded window's last columns are all equal (zero audio: the log floor). An output row reads
        7 input columns, so every row whose columns are all in that run is the same vector: the
        convolutions run on the columns before the run + :data:`TAIL_CONTEXT` of it, and that row is
        repeated up to the last one, which (reading the zero padding past the end) is the short run's
        last: 1 vs 11 ms for a padded 2-s clip. Equal to the whole window's convolutions up to the
        kernels' rounding (oneDNN may pick another algorithm for the shorter input): bit for bit in
        bfloat16 on AVX512_BF16, within 7e-6 in float32 (tests/test_whisper.py bounds both)."""
        T = mel.shape[1]
        same = np.all(mel == mel[:, -1:], axis=0)[::-1]
        start = T - (T if same.all() else int(np.argmin(same)))  # first column of the equal run
        start += start % 2
        if T % 2 or start + TAIL_CONTEXT > T:
            return self._convolutions(mel)
        short = self._convolutions(mel[:, :start + TAIL_CONTEXT])
        n = short.shape[1]
        return self.torch.cat([short[:, :n - 1], short[:, n - 3:n - 2].expand(-1, T // 2 - n), short[:, n - 1:]], 1)

    def _encode(self, mel: np.ndarray, rows: int | None) -> np.ndarray:
        torch = self.torch
        F = torch.nn.functional
        w, low, D = self.w, self.dtype, self.width
        with torch.inference_mode():
            x = self._front(np.ascontiguousarray(mel, dtype=np.float32)).T.float()
            L = x.shape[0]
            if L > self.positions:
                raise ValueError(f"{L} encoder frames, more than the model's {self.positions} positions")
            x = x + w["encoder/position_encodings/encodings"][:L]
            keep = L if rows is None else max(1, min(int(rows), L))
            head = D // self.heads
            for i in range(self.layers):
                p = LAYER.format(i)
                h = F.layer_norm(x, (D,), w[p + "self_attention/layer_norm/gamma"],
                                 w[p + "self_attention/layer_norm/beta"]).to(low)
                q, k, v = F.linear(h, w[p + "self_attention/linear_0/weight"],
                                   w[p + "self_attention/linear_0/bias"]).split(D, -1)
                if i == self.layers - 1 and keep < L:  # the last layer: only the rows kept
                    q, x = q[:keep], x[:keep]
                q = q.reshape(-1, self.heads, head).transpose(0, 1) * head ** -0.5
                k = k.reshape(L, self.heads, head).permute(1, 2, 0)
                v = v.reshape(L, self.heads, head).transpose(0, 1)
                att = torch.empty(self.heads, q.shape[1], head, dtype=low)
                for a in range(0, q.shape[1], QUERY_BLOCK):  # the block's scores stay in the core's cache
                    att[:, a:a + QUERY_BLOCK] = torch.bmm(torch.bmm(q[:, a:a + QUERY_BLOCK], k).softmax(-1), v)
                att = att.transpose(0, 1).reshape(-1, D)
                x = x + F.linear(att, w[p + "self_attention/linear_1/weight"],
                                 w[p + "self_attention/linear_1/bias"]).float()
                h = F.layer_norm(x, (D,), w[p + "ffn/layer_norm/gamma"], w[p + "ffn/layer_norm/beta"]).to(low)
                h = F.gelu(F.linear(h, w[p + "ffn/linear_0/weight"], w[p + "ffn/linear_0/bias"]))
                x = x + F.linear(h, w[p + "ffn/linear_1/weight"], w[p + "ffn/linear_1/bias"]).float()
            x = F.layer_norm(x, (D,), w["encoder/layer_norm/gamma"], w["encoder/layer_norm/beta"])
            return x[:keep].numpy().astype(np.float32, copy=False)
