"""The MERTools "attention" baseline (Lian et al., MERBench), trained by the same loop as the MoE.

Per feature: an utterance-level vector (a ``layers`` feature is averaged over its layers, a
``series`` over its valid frames) -> MLP encoder (dropout, then three Linear+ReLU). The encoder
outputs are concatenated, an MLP + Linear gives one attention weight per feature, the weighted sum of
the encoder outputs goes to a linear classifier. Departure from MERTools: the attention weights are
softmaxed, so that an absent modality can be masked and the weights renormalised over the rest
(MERTools uses raw weights and has no missing modalities); an absent feature's slot in the
concatenation is a learned "absent" embedding.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.heads import pool_tokens
from models.router import ExpertSpec, Output


class MLPEncoder(nn.Module):
    def __init__(self, d_in: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, x):
        return self.net(x)


class AttentionBaseline(nn.Module):
    main = "attention"

    def __init__(self, specs: list[ExpertSpec], n_classes: int, hidden: int = 256, dropout: float = 0.2, **_):
        super().__init__()
        self.specs = list(specs)
        self.hidden = hidden
        n = len(self.specs)
        self.encoders = nn.ModuleList(MLPEncoder(s.dim, hidden, dropout) for s in self.specs)
        self.absent = nn.Parameter(torch.zeros(n, hidden))
        nn.init.normal_(self.absent, std=0.02)
        self.attention_mlp = MLPEncoder(n * hidden, hidden, dropout)
        self.fc_att = nn.Linear(hidden, n)
        self.fc_out = nn.Linear(hidden, n_classes)

    def members(self) -> list[dict]:
        return [{"member": "attention", "kind": "routed"}]

    def forward(self, xs, masks, presents) -> Output:
        hiddens = []
        for i, enc in enumerate(self.encoders):
            h = enc(pool_tokens(xs[i], masks[i]))
            hiddens.append(torch.where(presents[i].unsqueeze(1), h, self.absent[i].expand_as(h)))
        att = self.fc_att(self.attention_mlp(torch.cat(hiddens, dim=1)))
        avail = torch.stack(list(presents), dim=1)
        att = torch.softmax(att.masked_fill(~avail, float("-inf")), dim=1)            # (B, N)
        fused = (torch.stack(hiddens, dim=2) * att.unsqueeze(1)).sum(2)                # (B, h)
        logits = self.fc_out(fused)
        return Output({"attention": logits}, {"attention": torch.ones_like(presents[0])}, self.main, att)

    def loss(self, out: Output, y, w):
        ce = F.cross_entropy(out.logits[self.main], y, reduction="none")
        return (ce * w).sum() / w.sum().clamp_min(1e-12)
