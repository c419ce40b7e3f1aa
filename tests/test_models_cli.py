"""Bad input to `cli.py fit` / `predict`: one clear message each, naming the file/id and the cause."""
import numpy as np
import pytest
from click.testing import CliRunner

from extract.cache import Feature, put
from models.cli_fit import fit, predict
from models.synth import make_synthetic_cache

QUICK = ["--folds", "2", "--epochs", "1", "--hidden", "8", "--heads", "2", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("cli") / "cache", n_labeled=40, n_unlabeled=6)


def invoke(syn, labels, tmp_path, *extra, features="vec,ser"):
    args = ["--cache", str(syn.cache), "--labels", str(labels), "--features", features,
            "--out", str(tmp_path / "run"), *QUICK, *extra]
    return CliRunner().invoke(fit, args)


def labels_with(syn, tmp_path, extra_rows):
    text = syn.labels_csv.read_text() + "".join(f"{r}\n" for r in extra_rows)
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return p


def test_ids_absent_from_cache_are_counted_and_skipped_or_fatal_with_strict(syn, tmp_path):
    labels = labels_with(syn, tmp_path, [f"ghost{i},happy,spk0" for i in range(7)])
    res = invoke(syn, labels, tmp_path)
    assert res.exit_code == 0, res.output
    assert "7 of 47 labeled ids are not in cache" in res.output
    assert "ghost0, ghost1, ghost2, ghost3, ghost4, ... (2 more)" in res.output
    assert "--strict makes this fatal" in res.output
    res = invoke(syn, labels, tmp_path, "--strict")
    assert res.exit_code != 0 and "7 of 47 labeled ids are not in cache" in res.output


def test_labels_outside_classes(syn, tmp_path):
    res = invoke(syn, syn.labels_csv, tmp_path, "--classes", "neutral,happy")
    assert res.exit_code == 0, res.output
    assert "have a label outside --classes neutral,happy (sad x" in res.output
    res = invoke(syn, syn.labels_csv, tmp_path, "--classes", "neutral,happy", "--strict")
    assert res.exit_code != 0 and "outside --classes" in res.output


def test_class_with_fewer_samples_than_folds(syn, tmp_path):
    labels = labels_with(syn, tmp_path, [])
    rows = labels.read_text().splitlines()
    kept, sad = [rows[0]], 0
    for r in rows[1:]:
        if ",sad," in r:
            sad += 1
            if sad > 2:
                continue
        kept.append(r)
    labels.write_text("\n".join(kept) + "\n")
    res = invoke(syn, labels, tmp_path, "--folds", "3")
    assert res.exit_code != 0
    assert "class 'sad' has 2 labeled clips, fewer than --folds 3" in res.output


def test_unknown_feature_key(syn, tmp_path):
    res = invoke(syn, syn.labels_csv, tmp_path, features="vec,hubert")
    assert res.exit_code != 0
    assert "unknown feature 'hubert'" in res.output and syn.keys["vec"] in res.output


def test_empty_intersection_of_ids(syn, tmp_path):
    labels = tmp_path / "other.csv"
    labels.write_text("name,discrete\nx1,happy\nx2,sad\n")
    res = invoke(syn, labels, tmp_path)
    assert res.exit_code != 0
    assert "no labeled id of" in res.output and "x1, x2" in res.output and "clip0000" in res.output


def test_missing_columns_groups_and_cache(syn, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("clip,emotion\na,happy\n")
    res = invoke(syn, bad, tmp_path)
    assert res.exit_code != 0 and "no 'name' column" in res.output and "bad.csv" in res.output
    res = invoke(syn, syn.labels_csv, tmp_path, "--groups", "actor")
    assert res.exit_code != 0 and "--groups 'actor' is not a column" in res.output
    res = invoke(syn, syn.labels_csv, tmp_path, "--groups", "speaker", "--folds", "7")
    assert res.exit_code != 0 and "only 6 distinct groups for --folds 7" in res.output
    res = CliRunner().invoke(fit, ["--cache", str(tmp_path / "nope"), "--labels", str(syn.labels_csv),
                                   "--features", "vec", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "no such directory" in res.output


def test_group_normalisation_without_a_table_for_unlabeled_clips_warns(syn, tmp_path):
    res = invoke(syn, syn.labels_csv, tmp_path, "--normalize", "group", "--groups", "speaker")
    assert res.exit_code == 0, res.output
    assert "--normalize group: 6 of 46 ids have no group" in res.output and "--group-table" in res.output
    res = invoke(syn, syn.labels_csv, tmp_path, "--normalize", "group")
    assert res.exit_code != 0 and "--normalize group needs a group per clip" in res.output


def test_ids_whose_every_feature_failed_are_skipped(tmp_path):
    root = tmp_path / "cache"
    rng = np.random.default_rng(0)
    vals = {f"c{i}": Feature(data=rng.normal(size=4) + (i % 2) * 3) for i in range(20)}
    put(root, "v", "vector", vals, failures={"broken": "unreadable video"})
    labels = tmp_path / "l.csv"
    labels.write_text("name,discrete\n" + "".join(f"c{i},{'ab'[i % 2]}\n" for i in range(20)) + "broken,a\n")
    res = CliRunner().invoke(fit, ["--cache", str(root), "--labels", str(labels), "--features", "v",
                                   "--out", str(tmp_path / "run"), *QUICK])
    assert res.exit_code == 0, res.output
    assert "1 labeled ids failed extraction in every selected feature (first: broken)" in res.output
    assert "20 labeled clips" in res.output


def test_predict_bad_run_dir_and_missing_features(syn, tmp_path):
    res = CliRunner().invoke(predict, [str(tmp_path), "--cache", str(syn.cache), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code != 0 and "has no valid run.json (not a RUN_DIR)" in res.output
    res = invoke(syn, syn.labels_csv, tmp_path)
    assert res.exit_code == 0, res.output
    other = tmp_path / "other_cache"
    put(other, "vec", "vector", {"a": Feature(data=np.ones(3))}, meta={"config": {"changed": 1}})
    res = CliRunner().invoke(predict, [str(tmp_path / "run"), "--cache", str(other), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code != 0 and "lacks the feature sets this run was trained on" in res.output


def test_ids_without_any_usable_value_and_predict_without_groups(tmp_path):
    root = tmp_path / "cache"
    rng = np.random.default_rng(0)
    vals = {f"c{i}": Feature(data=rng.normal(size=4) + (i % 2) * 3) for i in range(20)}
    vals["nan0"] = Feature(data=np.full(4, np.nan))            # cached, but no finite value
    put(root, "v", "vector", vals)
    labels = tmp_path / "l.csv"
    labels.write_text("name,discrete,spk\n" + "".join(f"c{i},{'ab'[i % 2]},s{i % 4}\n" for i in range(20))
                      + "nan0,a,s0\n")
    run = tmp_path / "run"
    res = CliRunner().invoke(fit, ["--cache", str(root), "--labels", str(labels), "--features", "v", "--out", str(run),
                                   "--normalize", "group", "--groups", "spk", *QUICK])
    assert res.exit_code == 0, res.output
    assert "1 ids have no usable value in any selected feature (first: nan0); skipped" in res.output
    assert "20 labeled clips" in res.output
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(predict, [str(run), "--cache", str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 ids have no usable value in any feature of the run (first: nan0); no prediction" in res.output
    assert ("this run normalises per group: 20 ids have no group (first: c0, c1, c10, c11, c12, ... (15 more)); "
            "they get pool statistics; pass --group-table CSV (name,group)") in res.output
    assert "20 clips predicted" in res.output
    table = tmp_path / "g.csv"
    table.write_text("name,group\n" + "".join(f"c{i},s{i % 4}\n" for i in range(19)))
    res = CliRunner().invoke(predict, [str(run), "--cache", str(root), "--out", str(out), "--group-table", str(table)])
    assert res.exit_code == 0 and "1 ids have no group (first: c19)" in res.output
    res = CliRunner().invoke(predict, [str(run), "--cache", str(root), "--out", str(out), "--group-table", str(table),
                                       "--strict"])
    assert res.exit_code != 0 and "1 ids have no group (first: c19)" in res.output
