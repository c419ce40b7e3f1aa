"""pseudo-label -> fit --pseudo (joint, pretrain-finetune, rounds) on a synthetic cache."""
import csv
import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import cli
from models import train as train_mod
from models.synth import make_synthetic_cache

TINY = ["--folds", "3", "--epochs", "12", "--patience", "4", "--hidden", "32", "--batch-size", "32", "--quiet",
        "--threads", "1"]


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    syn = make_synthetic_cache(root / "cache", n_labeled=60, n_unlabeled=60, seed=3)
    rng = np.random.default_rng(0)
    classes = ["neutral", "happy", "sad"]
    ann = root / "annotator.jsonl"
    with open(ann, "w") as fh:  # a judge right 80% of the time on the unlabeled clips
        for cid in syn.unlabeled:
            label = syn.truth[cid] if rng.random() < 0.8 else str(rng.choice([c for c in classes if c != syn.truth[cid]]))
            fh.write(json.dumps({"name": cid, "label": label, "scores": {label: 0.8, "other": 0.2}}) + "\n")
    stage1 = root / "stage1"
    res = invoke("fit", "--cache", syn.cache, "--labels", syn.labels_csv, "--features", "vec,lay,ser", "--out", stage1,
                 "--groups", "speaker", *TINY)
    assert res.exit_code == 0, res.output
    pseudo = root / "pseudo.csv"
    res = invoke("pseudo-label", stage1, "--cache", syn.cache, "--annotator", ann, "--out", pseudo,
                 "--min-confidence", "0.5")
    assert res.exit_code == 0, res.output
    return {"syn": syn, "root": root, "stage1": stage1, "pseudo": pseudo, "annotator": ann, "pl_output": res.output}


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def fit2(world, out, *extra):
    syn = world["syn"]
    return invoke("fit", "--cache", syn.cache, "--labels", syn.labels_csv, "--features", "vec,lay,ser", "--out", out,
                  "--groups", "speaker", "--pseudo", world["pseudo"], *TINY, *extra)


def test_pseudo_labels_are_precise_and_summarised(world):
    syn = world["syn"]
    got = rows(world["pseudo"])
    assert list(got[0]) == ["name", "discrete", "confidence", "annotator_label", "annotator_confidence"]
    assert 5 <= len(got) < len(syn.unlabeled)
    assert all(r["name"] in syn.unlabeled and r["discrete"] == r["annotator_label"] for r in got)
    precision = np.mean([syn.truth[r["name"]] == r["discrete"] for r in got])
    assert precision >= 0.85  # agreement of two imperfect judges beats either alone (judge: 0.8)
    out = world["pl_output"]
    assert "agreement" in out and f"kept {len(got)}" in out and "per class" in out
    meta = json.loads((world["pseudo"].parent / "pseudo.csv.meta.json").read_text())
    assert meta["stage1_run"].endswith("stage1") and meta["min_confidence"] == 0.5


def test_joint_stage2_records_provenance_and_compares_with_stage1(world, tmp_path, monkeypatch):
    seen = []
    real = train_mod.train_model

    def spy(model, tensors, train_rows, y_train, w_train, val_rows, *a, **k):
        seen.append((np.asarray(train_rows).copy(), np.asarray(w_train).copy(), np.asarray(val_rows).copy()))
        return real(model, tensors, train_rows, y_train, w_train, val_rows, *a, **k)

    monkeypatch.setattr(train_mod, "train_model", spy)
    out = tmp_path / "joint"
    res = fit2(world, out, "--pseudo-weight", "0.5")
    assert res.exit_code == 0, res.output
    n_pseudo = len(rows(world["pseudo"]))
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["pseudo"].endswith("pseudo.csv") and cfg["stage2"] == "joint" and cfg["stage2_clips"] == n_pseudo
    assert cfg["pseudo_meta"]["annotator"].endswith("annotator.jsonl")
    # pseudo-labeled clips train in every fold (weight 0.5) and never validate
    ids = sorted(set(world["syn"].labels) | set(world["syn"].unlabeled))
    assert len(seen) == 3
    for train_rows, w, val_rows in seen:
        assert (w == 0.5).sum() == n_pseudo
        assert not set(train_rows[w == 0.5]) & set(val_rows)
    oof_ids = [r["name"] for r in rows(out / "oof" / "routed.csv")]
    assert sorted(oof_ids) == sorted(world["syn"].labels)  # metrics stay on labeled clips only
    assert "stage 1 vs stage 2" in res.output
    table = rows(out / "metrics_vs_stage1.csv")
    assert {r["member"] for r in table} >= {"fused", "routed"}
    assert ids  # every id still predicted or labeled


def test_pretrain_finetune_runs_both_phases(world, tmp_path):
    out = tmp_path / "ptft"
    res = fit2(world, out, "--stage2", "pretrain-finetune")
    assert res.exit_code == 0, res.output
    curve = rows(out / "curves" / "fold0_seed0.csv")
    phases = [r["phase"] for r in curve]
    assert phases[0] == "pretrain" and phases[-1] == "finetune"
    m = {r["member"]: float(r["weighted_f1"]) for r in rows(out / "metrics.csv")}
    assert m["routed"] > 0.6


def test_stage2_is_reproducible(world, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert fit2(world, a).exit_code == 0 and fit2(world, b).exit_code == 0
    assert (a / "oof" / "routed.csv").read_text() == (b / "oof" / "routed.csv").read_text()
    assert (a / "test" / "routed.csv").read_text() == (b / "test" / "routed.csv").read_text()


def test_rounds_relabel_with_the_newest_run(world, tmp_path):
    out = tmp_path / "r"
    res = fit2(world, out, "--rounds", "2")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r-round2.pseudo.csv").is_file()  # next to the runs: never written into a RUN_DIR
    assert (tmp_path / "r-round1" / "run.json").is_file()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["pseudo"].endswith("r-round2.pseudo.csv")


def test_pseudo_overlapping_labels_is_refused(world, tmp_path):
    bad = tmp_path / "bad.csv"
    labeled = next(iter(world["syn"].labels))
    bad.write_text(f"name,discrete\n{labeled},happy\n")
    syn = world["syn"]
    res = CliRunner().invoke(cli.main, ["fit", "--cache", str(syn.cache), "--labels", str(syn.labels_csv), "--features",
                                        "vec", "--out", str(tmp_path / "o"), "--pseudo", str(bad), *TINY])
    assert res.exit_code == 1 and "refused" in res.output and labeled in res.output


def test_empty_agreement_and_unknown_annotator_ids_are_clear(world, tmp_path):
    syn = world["syn"]
    wrong = tmp_path / "wrong.csv"
    with open(wrong, "w") as fh:
        fh.write("name,label,confidence\n")
        for cid in syn.unlabeled:
            fh.write(f"{cid},sad,0.1\n")
        fh.write("not_a_clip,happy,0.9\n")
    res = CliRunner().invoke(cli.main, ["pseudo-label", str(world["stage1"]), "--cache", str(syn.cache),
                                        "--annotator", str(wrong), "--out", str(tmp_path / "p.csv"),
                                        "--min-annotator-confidence", "0.5"])
    assert res.exit_code == 1 and "empty agreement" in res.output
    assert "1 annotator ids have no features" in res.output and "not_a_clip" in res.output


def test_compare_stages_table_and_stage2_writes_it_into_its_run(world, tmp_path):
    from ensemble.synth import write_run_dir
    from models.fitting import compare_stages, format_comparison

    p = np.array([[0.6, 0.4], [0.3, 0.7]])
    s1 = write_run_dir(tmp_path / "s1", ["a", "b"], {"x": "a", "y": "b"}, {"routed": (["x", "y"], p),
                                                                          "fused": (["x", "y"], p[::-1])}, {})
    now = [{"member": "fused", "weighted_f1": 0.55}, {"member": "routed", "weighted_f1": 0.75},
           {"member": "new", "weighted_f1": 0.1}]
    cmp = compare_stages(s1, now)
    assert [(r["member"], r["stage1"]) for r in cmp] == [("fused", 0.0), ("routed", 1.0)]
    text = format_comparison(cmp, s1)
    assert "-0.2500" in text and "+0.5500" in text
    out = tmp_path / "stage2"
    res = fit2(world, out)
    assert res.exit_code == 0, res.output
    assert "stage 1 vs stage 2" in res.output
    table = rows(out / "metrics_vs_stage1.csv")
    assert [r["member"] for r in table] == [r["member"] for r in rows(out / "metrics.csv")]
    assert "metrics_vs_stage1.csv" in json.loads((out / "run.json").read_text())["files"]
