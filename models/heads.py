"""Expert heads: per-sample tokens -> Linear -> TransformerEncoder -> classifier (ARCHITECTURE.md).

Attention runs over the tokens *of one sample* (its hidden layers, its frames, or its single vector
token), never across the samples of a batch: the input is (batch, tokens, dim) with
``batch_first=True``. An expert only computes on the rows where its modality is present.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SafeBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that accepts a training batch of one row (it then uses the running statistics,
    without updating them) and an empty batch; happens when one modality is present in a single
    sample of a batch."""

    def forward(self, x):
        if x.shape[0] == 0:
            return x
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


class Classifier(nn.Module):
    """hidden -> 128 -> C with BatchNorm and ReLU (the paper's classifier)."""

    def __init__(self, d_in: int, n_classes: int, d_mid: int = 128, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_mid), SafeBatchNorm1d(d_mid), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(d_mid, n_classes))

    def forward(self, h):
        return self.net(h)


def pool_tokens(x, tok_mask):
    """Mean of x (B, T, h) over the real tokens of each row (tok_mask (B, T)) -> (B, h)."""
    m = tok_mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class TokenExpert(nn.Module):
    """One expert over the tokens of one feature.

    kind ``series``: a learnable CLS token is prepended and its output is the hidden; masked frames
    are excluded from attention (``src_key_padding_mask``). ``layers``/``vector``: mean of the
    encoder outputs over the tokens. Tokens get a learned position embedding (layer index / frame).
    """

    def __init__(self, kind: str, d_in: int, n_tokens: int, n_classes: int, hidden: int = 256,
                 n_layers: int = 1, n_heads: int = 4, dropout: float = 0.2):
        super().__init__()
        self.kind = kind
        self.hidden = hidden
        self.proj = nn.Linear(d_in, hidden)
        self.use_cls = kind == "series"
        n_pos = n_tokens + (1 if self.use_cls else 0)
        self.pos = nn.Parameter(torch.zeros(1, n_pos, hidden))
        nn.init.normal_(self.pos, std=0.02)
        if self.use_cls:
            self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
            nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(hidden, n_heads, dim_feedforward=2 * hidden, dropout=dropout,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.classifier = Classifier(hidden, n_classes, dropout=dropout)

    def encode(self, x, tok_mask):
        """x (B, T, D), tok_mask (B, T) True on real tokens -> hidden (B, h). Rows must be present."""
        z = self.proj(x)
        if self.use_cls:   # series: CLS first, its output is the hidden; masked frames get no attention
            z = torch.cat([self.cls.expand(z.shape[0], -1, -1), z], dim=1)
            tok_mask = torch.cat([torch.ones_like(tok_mask[:, :1]), tok_mask], dim=1)
            return self.encoder(z + self.pos[:, : z.shape[1]], src_key_padding_mask=~tok_mask)[:, 0]
        # layers / a vector token are never masked (rows are present): mean of the outputs
        return pool_tokens(self.encoder(z + self.pos[:, : z.shape[1]]), tok_mask)

    def forward(self, x, tok_mask):
        h = self.encode(x, tok_mask)
        return h, self.classifier(h)


class ProbExpert(nn.Module):
    """An expert whose class probabilities come from outside the network (``--head lgbm`` or
    ``logreg``: models.prob_experts).

    Input: log-probabilities (B, 1, C). Its logits are those log-probabilities (fixed); its hidden
    for the router and the fused expert is a learned projection of them.
    """

    def __init__(self, n_classes: int, hidden: int = 256, **_):
        super().__init__()
        self.kind = "probs"
        self.hidden = hidden
        self.proj = nn.Sequential(nn.Linear(n_classes, hidden), nn.GELU())

    def forward(self, x, tok_mask):
        logp = x[:, 0]
        return self.proj(logp), logp


def run_on_present(expert: nn.Module, x, tok_mask, present, hidden: int, n_classes: int):
    """Apply ``expert`` to the present rows only. Returns hidden (B, h) and logits (B, C) with
    zeros on absent rows (callers must mask them; they are never used as predictions)."""
    b = x.shape[0]
    h = x.new_zeros(b, hidden)
    logits = x.new_zeros(b, n_classes)
    idx = torch.nonzero(present, as_tuple=False).squeeze(1)
    if idx.numel():
        hp, lp = expert(x.index_select(0, idx), tok_mask.index_select(0, idx))
        h = h.index_copy(0, idx, hp)
        logits = logits.index_copy(0, idx, lp)
    return h, logits


class LinearExpert(nn.Module):
    """A multinomial logistic regression on the pooled tokens (``--head linear``, for small data): a
    ``layers`` feature is pooled by a learned softmax weighting of its layers (s3prl's weighted sum),
    a ``series`` by the mean of its valid frames, a vector is itself. Its logits are one linear map of
    that pooled input; its hidden (for the router and the fused expert) is a projection of it."""

    def __init__(self, kind: str, d_in: int, n_tokens: int, n_classes: int, hidden: int = 256,
                 dropout: float = 0.2, **_):
        super().__init__()
        self.kind = kind
        self.layer_logits = nn.Parameter(torch.zeros(n_tokens)) if kind == "layers" else None
        self.drop = nn.Dropout(dropout)
        self.logit = nn.Linear(d_in, n_classes)
        self.proj = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU())

    def forward(self, x, tok_mask):
        if self.layer_logits is not None:
            w = torch.softmax(self.layer_logits, dim=0)
            z = (x * w[None, :, None]).sum(1)
        else:
            z = pool_tokens(x, tok_mask)
        z = self.drop(z)
        return self.proj(z), self.logit(z)


HEADS = {"mlp": TokenExpert, "lgbm": ProbExpert, "logreg": ProbExpert, "linear": LinearExpert}
