"""The whole chain, as `cli.py demo` runs it, on a smaller generated set; every artefact checked."""
import csv
import json

import pytest
import yaml
from click.testing import CliRunner

import cli
from extract.cache import FeatureCache

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    res = CliRunner().invoke(cli.main, ["demo", "--out", str(out), "--labeled-per-class", "6",
                                        "--unlabeled-per-class", "3", "--epochs", "12", "--min-confidence", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, res.output


def read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_demo_says_the_data_is_synthetic_and_where_outputs_went(demo):
    out, output = demo
    assert "SYNTHETIC" in output
    for step in range(1, 9):
        assert f"[{step}/8]" in output
    assert str(out / "predictions.csv") in output and "confusion.png" in output
    # the exported system recognises two fresh clips it never saw
    assert output.count("recognised ") == 2 and (out / "model" / "bundle.json").is_file()
    assert "happy-new.mp4: " in output and "sad-new.mp4: " in output
    assert (out / "data" / "README.txt").read_text().startswith("SYNTHETIC")


def test_cache_holds_every_default_feature_for_every_clip(demo):
    out, _ = demo
    cache = FeatureCache(out / "cache")
    extractors = {cache.feature_set(k).meta["extractor"] for k in cache.keys()}
    assert extractors == {"librosa", "egemaps", "whisper", "hf-text", "face-au", "face-cnn"}
    for key in cache.keys():
        fs = cache.feature_set(key)
        assert len(fs.done_ids()) == 54 and fs.failures() == {}, key
        assert fs.meta["config_hash"] in key and fs.meta["libraries"]
    text = cache.feature_set(cache.resolve("hf-text"))
    assert set(text.sources().values()) == {"csv:transcripts.csv"}


def test_runs_follow_the_contract_and_beat_chance(demo):
    out, _ = demo
    for run in ("run-stage1", "run-stage2"):
        d = out / run
        for name in ("config.yaml", "classes.json", "labels.csv", "members.json", "metrics.csv"):
            assert (d / name).is_file(), (run, name)
        classes = json.loads((d / "classes.json").read_text())
        assert classes == ["neutral", "angry", "happy", "sad", "worried", "surprise"]
        members = [m["member"] for m in json.loads((d / "members.json").read_text())]
        for m in members:
            assert len(read(d / "oof" / f"{m}.csv")) <= 36 and (d / "test" / f"{m}.csv").is_file()
        assert len(list((d / "models").glob("fold*_seed0.pt"))) == 4
        metrics = {r["member"]: float(r["weighted_f1"]) for r in read(d / "metrics.csv")}
        assert metrics["routed"] > 0.45, metrics  # chance is about 0.17 for 6 balanced classes
    cfg = yaml.safe_load((out / "run-stage2" / "config.yaml").read_text())
    assert cfg["pseudo"].endswith("pseudo.csv") and cfg["stage2"] == "joint"
    assert (out / "run-stage2" / "metrics_vs_stage1.csv").is_file()
    pseudo = read(out / "pseudo.csv")
    assert pseudo and all(r["discrete"] == r["annotator_label"] for r in pseudo)


def test_predictions_and_report(demo):
    out, _ = demo
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["name", "discrete"] and len(rows) == 1 + 18
    truth = {r["name"]: r["discrete"] for r in read(out / "data" / "truth_unlabeled.csv")}
    assert {r[0] for r in rows[1:]} == set(truth)
    report = out / "report"
    for name in ("report.md", "metrics.json", "per_class.csv", "confusion.png", "members.csv", "oof_stages.csv"):
        assert (report / name).is_file(), name
    metrics = json.loads((report / "metrics.json").read_text())
    flat = json.dumps(metrics)
    assert "weighted_f1" in flat
    accuracy = sum(truth[n] == d for n, d in rows[1:]) / len(truth)
    assert accuracy > 0.45, accuracy
