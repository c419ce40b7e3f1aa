"""`cli.py fit` / `predict` end to end on a small synthetic cache whose classes are learnable."""
import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from models.cli_fit import fit, predict
from models.run_dir import read_probs
from models.synth import make_synthetic_cache

TINY = ["--folds", "3", "--epochs", "20", "--patience", "6", "--hidden", "32", "--batch-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("syn") / "cache", n_labeled=120, n_unlabeled=30)


def run_fit(syn, out, *extra):
    args = ["--cache", str(syn.cache), "--labels", str(syn.labels_csv), "--features", "vec,lay,ser,noise",
            "--out", str(out), *TINY, *extra]
    res = CliRunner().invoke(fit, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def metrics(run):
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0] == "member,weighted_f1,macro_f1,accuracy"
    return {ln.split(",")[0]: [float(v) for v in ln.split(",")[1:]] for ln in lines[1:]}


@pytest.fixture(scope="module")
def moe_run(syn, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "moe"
    res = run_fit(syn, out, "--groups", "speaker")
    return out, res


def test_moe_beats_chance_and_the_noisy_expert(syn, moe_run):
    run, res = moe_run
    m = metrics(run)
    keys = syn.keys
    assert m["routed"][0] > 0.75, m                       # chance is about 0.33 (3 balanced classes)
    assert m[f"expert-{keys['noise']}"][0] < 0.55, m      # the noise expert has nothing to learn
    assert m["routed"][0] > m[f"expert-{keys['noise']}"][0] + 0.3
    assert "routed" in res.output and "run directory:" in res.output   # the table is printed


def test_run_dir_follows_the_contract(syn, moe_run):
    run, _ = moe_run
    classes = json.loads((run / "classes.json").read_text())
    assert classes == ["neutral", "happy", "sad"]          # the labels' own set, in the MER order
    members = json.loads((run / "members.json").read_text())
    experts = [f"expert-{syn.keys[k]}" for k in ("vec", "lay", "ser", "noise")]
    assert [m["member"] for m in members] == experts + ["fused", "routed"]
    assert members[0] == {"member": experts[0], "kind": "expert", "feature": syn.keys["vec"]}
    lab = (run / "labels.csv").read_text().splitlines()
    assert lab[0] == "name,discrete" and len(lab) == 1 + len(syn.labels)
    for part, ids in (("oof", sorted(syn.labels)), ("test", sorted(syn.unlabeled))):
        for m in members:
            got, p = read_probs(run / part / f"{m['member']}.csv", classes)
            assert got == sorted(got)
            np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
            if m["kind"] != "expert":
                assert got == ids                          # fused / routed: a row for every id
        # vec is absent for some clips: no row in its own file
        vec_ids, _ = read_probs(run / part / f"{experts[0]}.csv")
        assert set(vec_ids) < set(ids)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("cache", "features", "classes", "folds", "seeds", "model", "head", "normalize", "epochs",
                "batch_size", "device", "groups", "pseudo", "feature_meta", "provenance"):
        assert key in cfg, key
    assert cfg["provenance"]["libraries"]["torch"] and cfg["feature_meta"][syn.keys["vec"]]["extractor"] == "vec"
    assert sorted(p.name for p in (run / "models").iterdir()) == [f"fold{k}_seed0.pt" for k in range(3)]
    curve = (run / "curves" / "fold0_seed0.csv").read_text().splitlines()
    assert curve[0] == "epoch,train_loss,val_loss,val_weighted_f1,phase" and len(curve) >= 2


def test_same_seed_gives_identical_probabilities(syn, moe_run, tmp_path):
    run, _ = moe_run
    again = tmp_path / "again"
    run_fit(syn, again, "--groups", "speaker")
    for f in ["metrics.csv", "oof/routed.csv", "test/routed.csv", "oof/fused.csv", f"test/expert-{syn.keys['ser']}.csv"]:
        assert (run / f).read_bytes() == (again / f).read_bytes(), f


def test_predict_reproduces_test_probabilities_from_the_saved_models(syn, moe_run, tmp_path):
    run, _ = moe_run
    out = tmp_path / "p.csv"
    ids_csv = tmp_path / "ids.csv"
    ids_csv.write_text("name\n" + "\n".join(syn.unlabeled[:10] + ["not-a-clip"]) + "\n")
    res = CliRunner().invoke(predict, [str(run), "--cache", str(syn.cache), "--ids", str(ids_csv), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 of 11 ids have no feature" in res.output and "not-a-clip" in res.output
    got_ids, got = read_probs(out)
    ref_ids, ref = read_probs(run / "test" / "routed.csv")
    ref = dict(zip(ref_ids, ref))
    assert got_ids == sorted(syn.unlabeled[:10])
    np.testing.assert_allclose(got, np.stack([ref[i] for i in got_ids]), atol=1e-7)
    res = CliRunner().invoke(predict, [str(run), "--cache", str(syn.cache), "--out", str(out), "--member", "nope"])
    assert res.exit_code != 0 and "--member 'nope' is not a member" in res.output


def test_attention_baseline_runs_by_the_same_loop(syn, tmp_path):
    run_fit(syn, tmp_path / "att", "--model", "attention", "--normalize", "pool")
    members = json.loads((tmp_path / "att" / "members.json").read_text())
    assert members == [{"member": "attention", "kind": "routed"}]
    m = metrics(tmp_path / "att")
    assert m["attention"][0] > 0.6, m
    ids, p = read_probs(tmp_path / "att" / "test" / "attention.csv")
    assert ids == sorted(syn.unlabeled)


def test_lgbm_head_and_group_normalisation(syn, tmp_path):
    table = tmp_path / "groups.csv"
    table.write_text("name,speaker\n" + "".join(f"{i},{s}\n" for i, s in syn.speaker.items()))
    res = run_fit(syn, tmp_path / "lgbm", "--head", "lgbm", "--normalize", "group", "--group-table", str(table),
                  "--groups", "speaker", "--class-weight", "balanced")
    m = metrics(tmp_path / "lgbm")
    assert m[f"expert-{syn.keys['vec']}"][0] > 0.6, m     # the LightGBM expert learned the vector feature
    assert m["routed"][0] > 0.7, m
    saved = __import__("torch").load(tmp_path / "lgbm" / "models" / "fold0_seed0.pt", weights_only=True)
    assert set(saved["prob_heads"]) == {syn.keys["vec"], syn.keys["noise"]}
    assert set(saved["normalizers"][syn.keys["lay"]]["groups"]) == set(syn.speaker.values())
    assert "warning:" not in res.output


def test_logreg_head_is_the_tuned_linear_model_and_predicts_new_rows_the_same(syn, tmp_path):
    run = tmp_path / "logreg"
    run_fit(syn, run, "--head", "logreg", "--groups", "speaker")
    m = metrics(run)
    assert m[f"expert-{syn.keys['vec']}"][0] > 0.6, m       # the logistic regression learned the vector feature
    assert m["routed"][0] > 0.7, m
    saved = __import__("torch").load(run / "models" / "fold0_seed0.pt", weights_only=True)
    heads = {s["key"]: s["head"] for s in saved["specs"]}
    assert heads == {syn.keys["vec"]: "logreg", syn.keys["noise"]: "logreg", syn.keys["lay"]: "mlp",
                     syn.keys["ser"]: "mlp"}                 # layered and series features keep the transformer
    stored = json.loads(saved["prob_heads"][syn.keys["vec"]])
    assert stored["kind"] == "logreg" and stored["C"] in (0.01, 0.1, 1.0)
    out = tmp_path / "pred.csv"
    res = CliRunner().invoke(predict, [str(run), "--cache", str(syn.cache), "--out", str(out)])
    assert res.exit_code == 0, res.output
    got_ids, got = read_probs(out)
    ref_ids, ref = read_probs(run / "test" / "routed.csv")
    got = dict(zip(got_ids, got))
    assert set(ref_ids) <= set(got) and len(ref_ids) == 30
    np.testing.assert_allclose(np.stack([got[i] for i in ref_ids]), ref, atol=1e-6)


def test_fit_threads_apply_to_training_only_and_the_callers_count_comes_back(syn, tmp_path, monkeypatch):
    """fit(threads=1) from a notebook (the demo does it) must not leave torch at one thread for
    what the caller computes next, whether the fit finishes or fails."""
    import torch

    import models.fitting as fitting
    from models.data import InputError

    seen = []
    real = fitting._fit_rounds

    def spy(*args, **kw):
        seen.append(torch.get_num_threads())
        return real(*args, **kw)

    monkeypatch.setattr(fitting, "_fit_rounds", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fitting.fit(syn.cache, syn.labels_csv, ["vec"], tmp_path / "r", folds=3, epochs=2, hidden=16, threads=1)
        assert seen == [1] and torch.get_num_threads() == 2
        with pytest.raises(InputError, match="nosuch"):
            fitting.fit(syn.cache, syn.labels_csv, ["nosuch"], tmp_path / "r2", folds=3, epochs=2, threads=1)
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
