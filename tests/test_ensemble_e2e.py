"""End to end on a small synthetic cache: `fit` -> `ensemble` -> `evaluate`, all through click."""
import csv
import json

import numpy as np
from click.testing import CliRunner

import cli
from extract.cache import Feature, put

CLASSES = ["neutral", "happy", "sad"]


def make_cache(root, n_labeled=60, n_unlabeled=30, seed=0):
    """Two vector features written with extract.cache.put: 'clear' (signal) missing for some clips,
    'faint' (weak signal) for every clip."""
    rng = np.random.default_rng(seed)
    n = n_labeled + n_unlabeled
    ids = [f"clip{i:03d}" for i in range(n)]
    y = np.arange(n) % len(CLASSES)
    rng.shuffle(y)
    centers = rng.normal(size=(len(CLASSES), 8)) * 2.0
    clear = {c: Feature(data=(centers[k] + rng.normal(size=8)).astype(np.float32))
             for i, (c, k) in enumerate(zip(ids, y)) if i % 7 != 3}
    faint = {c: Feature(data=(0.5 * centers[k] + rng.normal(size=8)).astype(np.float32)) for c, k in zip(ids, y)}
    put(root / "cache", "clear", "vector", clear, failures={ids[3]: "no face"}, meta={"model": "synthetic"})
    put(root / "cache", "faint", "vector", faint, meta={"model": "synthetic"})
    labels = {c: CLASSES[k] for c, k in zip(ids[:n_labeled], y[:n_labeled])}
    truth = {c: CLASSES[k] for c, k in zip(ids[n_labeled:], y[n_labeled:])}
    return ids, labels, truth


def write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_fit_then_ensemble_then_evaluate(tmp_path):
    from ensemble.cli_ensemble import ensemble, evaluate

    ids, labels, truth = make_cache(tmp_path)
    write_csv(tmp_path / "labels.csv", ["name", "discrete"], sorted(labels.items()))
    write_csv(tmp_path / "truth.csv", ["name", "discrete"], sorted(truth.items()))
    rng = np.random.default_rng(1)
    with open(tmp_path / "annotator.jsonl", "w") as fh:
        for name, lab in [*labels.items(), *truth.items()]:
            said = lab if rng.random() < 0.7 else "angry"  # "angry" is outside the classes
            fh.write(json.dumps({"name": name, "label": said, "scores": {said: 0.8, "other": 0.2}}) + "\n")
    (tmp_path / "rules.yaml").write_text(
        "rules:\n"
        "  - rule: class_priority\n    when_top: [sad]\n    prefer: [neutral]\n    margin: 0.05\n"
        "  - rule: annotator_override\n    margin: auto\n    confidence: auto\n")

    runner = CliRunner()
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"run{seed}"
        res = runner.invoke(cli.main, ["fit", "--cache", str(tmp_path / "cache"), "--labels", str(tmp_path / "labels.csv"),
                                           "--features", "clear,faint", "--out", str(out), "--folds", "3",
                                           "--seeds", str(seed), "--epochs", "4", "--hidden", "16", "--heads", "2",
                                           "--device", "cpu", "--quiet"])
        assert res.exit_code == 0, res.output
        runs.append(str(out))

    pred = tmp_path / "pred.csv"
    res = runner.invoke(ensemble, runs + ["--out", str(pred), "--rules", str(tmp_path / "rules.yaml"),
                                          "--annotator", str(tmp_path / "annotator.jsonl")],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = list(csv.reader(open(pred)))
    assert rows[0] == ["name", "discrete"]
    assert sorted(r[0] for r in rows[1:]) == sorted(truth)  # exactly the unlabeled cached ids
    meta = json.loads((tmp_path / "pred.meta.json").read_text())
    members = {m["member"].split("/", 1)[1] for m in meta["members"]}
    assert {"fused", "routed"} <= members and any(m.startswith("expert-") for m in members)
    assert len(meta["members"]) == 2 * len(members)
    assert meta["tuned_on"]["rows"] == len(labels)

    rep = tmp_path / "report"
    res = runner.invoke(evaluate, [str(pred), "--labels", str(tmp_path / "truth.csv"), "--out", str(rep),
                                   "--runs", *runs], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    m = json.loads((rep / "metrics.json").read_text())
    assert m["counts"]["matched"] == len(truth)
    assert m["metrics"]["weighted_f1"] > 0.6  # 'clear' separates the classes well
    assert [s["stage"] for s in m["oof_stages"]] == ["vote:reliance", "1:class_priority", "2:annotator_override"]
    assert len(m["members"]) == len(meta["members"])
    assert (rep / "confusion.png").stat().st_size > 1000
