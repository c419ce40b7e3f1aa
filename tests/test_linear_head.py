"""--head linear: a multinomial logistic regression per expert (small data), inside the same MoE."""
import numpy as np
import torch

from models import fit, open_run, predict
from models.heads import HEADS
from models.synth import make_synthetic_cache


def test_linear_expert_pools_layers_by_learned_weights_and_frames_by_the_mask():
    torch.manual_seed(0)
    e = HEADS["linear"](kind="layers", d_in=4, n_tokens=3, n_classes=2, hidden=8, dropout=0.0).eval()
    x = torch.randn(5, 3, 4)
    h, logits = e(x, torch.ones(5, 3, dtype=torch.bool))
    assert h.shape == (5, 8) and logits.shape == (5, 2)
    with torch.no_grad():  # all weight on layer 2: the logits are a linear map of that layer alone
        e.layer_logits[:] = torch.tensor([-30.0, -30.0, 30.0])
        _, lg = e(x, torch.ones(5, 3, dtype=torch.bool))
    np.testing.assert_allclose(lg.numpy(), e.logit(x[:, 2]).detach().numpy(), atol=1e-5)
    s = HEADS["linear"](kind="series", d_in=4, n_tokens=6, n_classes=3, hidden=8, dropout=0.0).eval()
    xs = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    _, lg = s(xs, mask)
    np.testing.assert_allclose(lg[0].detach().numpy(), s.logit(xs[0, :2].mean(0)).detach().numpy(), atol=1e-5)


def test_fit_with_linear_heads_learns_and_predict_reproduces_it(tmp_path):
    syn = make_synthetic_cache(tmp_path / "cache", n_labeled=90, n_unlabeled=20, seed=8)
    res = fit(syn.cache, syn.labels_csv, ["vec", "lay", "ser"], tmp_path / "run", head="linear", folds=3, epochs=20,
              hidden=32, batch_size=32, threads=1, progress=False)
    assert res.routed_f1 > 0.6
    run = open_run(res.run_dir)
    ids, want = run.probs("test", "routed")
    pred = predict(res.run_dir, syn.cache, ids=ids, progress=False)
    np.testing.assert_allclose(pred.probs["routed"][[pred.ids.index(i) for i in ids]], want, atol=1e-6)
