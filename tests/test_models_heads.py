"""Expert heads, MoE router and attention baseline as modules: per-sample attention, masking."""
import pytest
import torch

from models.baseline import AttentionBaseline
from models.router import ExpertSpec, MoEModel

C = 3
SPECS = [ExpertSpec("vec", "vector", 10, 1), ExpertSpec("lay", "layers", 6, 4), ExpertSpec("ser", "series", 5, 7)]


def make_inputs(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(b, s.n_tokens, s.dim, generator=g) for s in SPECS]
    masks = [torch.ones(b, s.n_tokens, dtype=torch.bool) for s in SPECS]
    masks[2][:, 5:] = False                      # every series has 5 real frames of 7
    masks[2][1, 2:] = False                      # sample 1 has only 2
    presents = [torch.ones(b, dtype=torch.bool) for _ in SPECS]
    return xs, masks, presents


def build(model_cls, seed=0):
    torch.manual_seed(seed)
    m = model_cls(SPECS, C, hidden=16, n_layers=2, n_heads=2, dropout=0.1)
    # a few training steps so BatchNorm running statistics are not the identity
    xs, masks, presents = make_inputs(16, seed=1)
    y = torch.arange(16) % C
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.train()
    for _ in range(3):
        out = m(xs, masks, presents)
        loss = m.loss(out, y, torch.ones(16))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def rows(out, i):
    return {k: v[i] for k, v in out.logits.items()}


@pytest.mark.parametrize("model_cls", [MoEModel, AttentionBaseline])
def test_prediction_does_not_depend_on_the_rest_of_the_batch(model_cls):
    model = build(model_cls)
    xs, masks, presents = make_inputs(8)
    with torch.no_grad():
        full = model(xs, masks, presents)
        alone = model([x[:1] for x in xs], [m[:1] for m in masks], [p[:1] for p in presents])
        other = [x.clone() for x in xs]
        for x in other:
            x[1:] = x[1:] * 50 + 7                # wildly different batch-mates
        changed = model(other, masks, presents)
    for k in full.logits:
        torch.testing.assert_close(full.logits[k][0], alone.logits[k][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(full.logits[k][0], changed.logits[k][0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full.logits[full.main][1], changed.logits[full.main][1], atol=1e-3)


def test_the_batch_check_catches_attention_across_samples():
    """The released paper code feeds (batch, dim) to the encoder: attention mixes samples. The same
    perturbation as above must expose it, so the test above has teeth."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    x = torch.randn(8, 16)
    other = x.clone()
    other[1:] = other[1:] * 50 + 7
    with torch.no_grad():
        a = enc(x.unsqueeze(0))[0, 0]            # the paper's bug: the batch is the sequence
        b = enc(other.unsqueeze(0))[0, 0]
    assert not torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("model_cls", [MoEModel, AttentionBaseline])
def test_missing_modality_is_masked_not_zero_filled(model_cls):
    model = build(model_cls)
    xs, masks, presents = make_inputs(8)
    with torch.no_grad():
        before = model(xs, masks, presents)
        # sample 3 loses its vector feature; the cache gives NaN rows for absent ids
        xs2 = [x.clone() for x in xs]
        xs2[0][3] = float("nan")
        p2 = [p.clone() for p in presents]
        p2[0][3] = False
        after = model(xs2, masks, p2)
    for k, v in after.logits.items():
        assert torch.isfinite(v).all(), k
    for i in (0, 1, 2, 4, 5, 6, 7):               # the other samples do not move
        for k in before.logits:
            torch.testing.assert_close(before.logits[k][i], after.logits[k][i], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before.logits[before.main][3], after.logits[after.main][3], atol=1e-4)
    w = after.weights
    torch.testing.assert_close(w.sum(1), torch.ones(8))
    assert w[3, 0] == 0 and (w[torch.arange(8) != 3, 0] > 0).all()
    if model_cls is MoEModel:
        assert not after.present["expert-vec"][3] and after.present["routed"].all()
        # the stand-in for an absent expert is a learned embedding, not the zero-filled input
        model.absent.data[0] += 1.0
        with torch.no_grad():
            moved = model(xs2, masks, p2)
        assert not torch.allclose(moved.logits["routed"][3], after.logits["routed"][3], atol=1e-4)
        torch.testing.assert_close(moved.logits["routed"][0], after.logits["routed"][0])


def test_masked_frames_are_ignored():
    model = build(MoEModel)
    xs, masks, presents = make_inputs(8)
    garbage = [x.clone() for x in xs]
    garbage[2][~masks[2]] = 1e4                   # values where the mask says "no value"
    with torch.no_grad():
        a = model(xs, masks, presents)
        b = model(garbage, masks, presents)
    for k in a.logits:
        torch.testing.assert_close(a.logits[k], b.logits[k], atol=1e-5, rtol=1e-5)


def test_training_with_absent_rows_and_a_lone_present_row_has_finite_gradients():
    torch.manual_seed(0)
    model = MoEModel(SPECS, C, hidden=16, n_layers=1, n_heads=2).train()
    xs, masks, presents = make_inputs(6)
    presents[1][:] = False
    presents[1][2] = True                         # one sample alone has the layers feature
    xs[1][~presents[1]] = float("nan")
    presents[0][4] = False
    xs[0][4] = float("nan")
    out = model(xs, masks, presents)
    loss = model.loss(out, torch.arange(6) % C, torch.ones(6))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_loss_is_routed_ce_plus_mean_ce_of_present_experts():
    torch.manual_seed(0)
    model = build(MoEModel)
    xs, masks, presents = make_inputs(4)
    presents[0][1] = False
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        out = model(xs, masks, presents)
        got = model.loss(out, y, torch.ones(4))
        ce = torch.nn.functional.cross_entropy
        per = []
        for i in range(4):
            members = [m for m in ("expert-vec", "expert-lay", "expert-ser", "fused") if out.present[m][i]]
            exp = sum(ce(out.logits[m][i:i + 1], y[i:i + 1]) for m in members) / len(members)
            per.append(ce(out.logits["routed"][i:i + 1], y[i:i + 1]) + exp)
    torch.testing.assert_close(got, torch.stack(per).mean())


def test_token_expert_hidden_is_cls_output_for_series_and_token_mean_otherwise():
    from models.heads import TokenExpert, pool_tokens

    xs, masks, _ = make_inputs()
    torch.manual_seed(0)
    for spec, x, m in zip(SPECS, xs, masks):
        expert = TokenExpert(spec.kind, spec.dim, spec.n_tokens, C, hidden=16, n_heads=2).eval()
        with torch.no_grad():
            got = expert.encode(x, m)
            z = expert.proj(x)
            if spec.kind == "series":   # the CLS token's output, frames masked out of attention
                z = torch.cat([expert.cls.expand(len(x), -1, -1), z], dim=1)
                mm = torch.cat([torch.ones_like(m[:, :1]), m], dim=1)
                want = expert.encoder(z + expert.pos[:, : z.shape[1]], src_key_padding_mask=~mm)[:, 0]
            else:
                out = expert.encoder(z + expert.pos[:, : z.shape[1]])
                want = out.mean(1)      # every token is real: the plain mean
                assert torch.equal(pool_tokens(out, m), (out * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True))
        assert got.shape == (len(x), 16)
        assert torch.allclose(got, want, atol=1e-6), spec.kind
    half = torch.tensor([[True, False]])
    assert pool_tokens(torch.tensor([[[2.0], [100.0]]]), half).tolist() == [[2.0]]
    assert pool_tokens(torch.zeros(1, 2, 1), torch.zeros(1, 2, dtype=torch.bool)).tolist() == [[0.0]]  # no token
