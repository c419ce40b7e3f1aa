"""The Mixture of Experts: one expert per feature, a fused expert, and a router (gating MLP).

For N experts with hidden size h: the fused expert is the classifier over the concatenated expert
hiddens (N*h); the router is Linear(N*h -> h) -> GELU -> Linear(h -> N+1), softmaxed into one weight
per expert and one for the fused expert, and the routed logits are ``sum_i w_i * logits_i``.

Missing modality: an expert whose feature is absent for a sample is *masked* for that sample: its
router weight is -inf before the softmax (so the weights renormalise over the experts present), its
logits never count, and its slot in the concatenation is a learned "absent" embedding of that expert
(not a zero vector, and not a function of the NaN input). The fused expert is always present.

Loss = CE(routed) + mean over the experts present for a sample (and the fused one) of their CE.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from models.heads import HEADS, Classifier, run_on_present


@dataclass
class ExpertSpec:
    key: str          # feature key
    kind: str         # vector | layers | series
    dim: int
    n_tokens: int
    head: str = "mlp"  # a HEADS name

    @property
    def member(self) -> str:
        return f"expert-{self.key}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Output:
    logits: dict            # member -> (B, C)
    present: dict           # member -> (B,) bool
    main: str               # the member trained with the main loss (routed / attention)
    weights: torch.Tensor | None = None   # (B, N+1) router weights (MoE) or (B, N) attention weights


class MoEModel(nn.Module):
    main = "routed"

    def __init__(self, specs: list[ExpertSpec], n_classes: int, hidden: int = 256, n_layers: int = 1,
                 n_heads: int = 4, dropout: float = 0.2):
        super().__init__()
        self.specs = list(specs)
        self.n_classes = n_classes
        self.hidden = hidden
        n = len(self.specs)
        self.experts = nn.ModuleList(
            HEADS[s.head](kind=s.kind, d_in=s.dim, n_tokens=s.n_tokens, n_classes=n_classes, hidden=hidden,
                          n_layers=n_layers, n_heads=n_heads, dropout=dropout)
            for s in self.specs)
        self.absent = nn.Parameter(torch.zeros(n, hidden))
        nn.init.normal_(self.absent, std=0.02)
        self.fused = Classifier(n * hidden, n_classes, dropout=dropout)
        self.router = nn.Sequential(nn.Linear(n * hidden, hidden), nn.GELU(), nn.Linear(hidden, n + 1))

    def members(self) -> list[dict]:
        out = [{"member": s.member, "kind": "expert", "feature": s.key} for s in self.specs]
        return out + [{"member": "fused", "kind": "fused"}, {"member": "routed", "kind": "routed"}]

    def forward(self, xs, masks, presents) -> Output:
        hiddens, logits, present = [], {}, {}
        for i, (spec, expert) in enumerate(zip(self.specs, self.experts)):
            h, lg = run_on_present(expert, xs[i], masks[i], presents[i], self.hidden, self.n_classes)
            h = torch.where(presents[i].unsqueeze(1), h, self.absent[i].expand_as(h))
            hiddens.append(h)
            logits[spec.member] = lg
            present[spec.member] = presents[i]
        cat = torch.cat(hiddens, dim=1)
        fused = self.fused(cat)
        gate = self.router(cat)
        avail = torch.stack(list(presents) + [torch.ones_like(presents[0])], dim=1)
        weights = torch.softmax(gate.masked_fill(~avail, float("-inf")), dim=1)
        stacked = torch.stack([logits[s.member] for s in self.specs] + [fused], dim=1)   # (B, N+1, C)
        routed = (weights.unsqueeze(-1) * stacked).sum(1)
        logits["fused"] = fused
        logits["routed"] = routed
        ones = torch.ones_like(presents[0])
        present["fused"] = ones
        present["routed"] = ones
        return Output(logits, present, self.main, weights)

    def loss(self, out: Output, y, w):
        main = F.cross_entropy(out.logits[self.main], y, reduction="none")
        terms, count = 0.0, 0.0
        # an expert over outside probabilities (ProbExpert) has fixed logits: no loss of its own
        trained = [s.member for s, e in zip(self.specs, self.experts) if e.kind != "probs"] + ["fused"]
        for m in trained:
            p = out.present[m].to(main.dtype)
            terms = terms + F.cross_entropy(out.logits[m], y, reduction="none") * p
            count = count + p
        per_sample = main + terms / count.clamp_min(1.0)
        return (per_sample * w).sum() / w.sum().clamp_min(1e-12)
