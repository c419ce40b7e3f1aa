"""Router weights per clip (which expert decided), calibration of the final scores, and both in the report."""
import csv

import numpy as np
import pytest

from ensemble import ensemble, evaluate
from ensemble.calibration import TemperatureScaler, coverage_curve, ece
from ensemble.explain import short, top_experts
from models import fit, open_run, predict
from models.synth import make_synthetic_cache

QUICK = dict(folds=3, epochs=10, patience=4, hidden=32, batch_size=32, threads=1, progress=False)


def test_temperature_scaling_softens_overconfident_scores_and_keeps_labels():
    rng = np.random.default_rng(0)
    n, c = 2000, 4
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), y] += 1.0
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    over = true_p ** 4 / (true_p ** 4).sum(1, keepdims=True)  # same argmax, far too confident
    s = TemperatureScaler().fit(over, y)
    cal = s.transform(over)
    assert 3.0 < s.temperature_ < 5.0  # recovers the power it was sharpened by
    assert ece(cal, y) < 0.5 * ece(over, y)
    assert (cal.argmax(1) == over.argmax(1)).all()
    cov, acc, thr = coverage_curve(cal, y)
    assert cov[-1] == 1 and acc[0] >= acc[-1] and np.all(np.diff(thr) <= 0)
    assert TemperatureScaler(2.0).fit(over, []).temperature_ == 2.0


def test_short_names_and_top_experts():
    assert short("expert-librosa-ff175773bc") == "librosa" and short("fused") == "fused"
    assert short("expert-vec") == "vec"
    assert top_experts(np.array([[0.1, 0.6, 0.3]]), ["expert-a", "expert-b", "fused"]) == [
        [("b", 0.6), ("fused", 0.3)]]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    syn = make_synthetic_cache(root / "cache", n_labeled=60, n_unlabeled=20, seed=4)
    res = fit(syn.cache, syn.labels_csv, ["vec", "noise", "ser"], root / "run", **QUICK)
    return syn, res, root


def test_fit_stores_router_weights_per_clip_and_predict_reproduces_them(fitted):
    syn, res, _ = fitted
    run = open_run(res.run_dir)
    ids, w, names = run.router("oof")
    assert sorted(ids) == sorted(syn.labels) and names[-1] == "fused" and len(names) == 4
    np.testing.assert_allclose(w.sum(1), 1, atol=1e-6)
    t_ids, t_w, _ = run.router("test")
    assert sorted(t_ids) == sorted(syn.unlabeled)
    pred = predict(res.run_dir, syn.cache, ids=t_ids, progress=False)
    assert pred.weight_names == names
    order = [pred.ids.index(i) for i in t_ids]
    np.testing.assert_allclose(pred.weights[order], t_w, atol=1e-6)
    # an expert whose modality is missing for a clip gets no weight there (the router renormalises)
    vec = names.index(next(n for n in names if "vec" in n))
    have_vec = set(run.probs("oof", names[vec])[0])
    missing = [k for k, i in enumerate(ids) if i not in have_vec]
    assert missing and np.all(w[missing, vec] == 0) and np.all(w[[k for k in range(len(ids)) if k not in missing], vec] > 0)


def test_evaluate_reports_calibration_and_router_weights(fitted):
    syn, res, root = fitted
    ens = ensemble([res.run_dir], root / "pred.csv", progress=False)
    cal = ens.meta["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0 and cal["fitted_on_rows"] == 60
    assert cal["oof_ece_after"] <= cal["oof_ece_before"] + 1e-9
    truth = root / "truth.csv"
    with open(truth, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "discrete"])
        w.writerows((i, syn.truth[i]) for i in syn.unlabeled)
    rep = evaluate(ens.predictions, truth, root / "report", runs=[res.run_dir])
    assert rep.calibration and rep.calibration["temperature"] == pytest.approx(cal["temperature"])
    for name in ("reliability.png", "coverage.png", "router_weights_0.png"):
        assert (root / "report" / name).stat().st_size > 1000
    md = (root / "report" / "report.md").read_text()
    assert "## Calibration" in md and "## Router weights: run" in md and "| true class |" in md
    assert rep.routers[0]["experts"][-1] == "fused"
