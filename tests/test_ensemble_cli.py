"""`ensemble` and `evaluate` commands on hand-made RUN_DIRs (ensemble.synth writes them to the contract)."""
import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import f1_score

from ensemble.cli_ensemble import ensemble, evaluate
from ensemble.synth import synthetic_runs, write_run_dir

MER = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    paths, labels, truth = synthetic_runs(root, n_runs=2, n_labeled=240, n_test=150, skills=(0.2, 0.8, 1.2),
                                          coverage=0.8, seed=3)
    truth_csv = root / "truth.csv"
    write_csv(truth_csv, ["name", "discrete"], sorted(truth.items()))
    rng = np.random.default_rng(0)
    ann = root / "annotator.jsonl"
    with open(ann, "w") as fh:
        for name, lab in [*labels.items(), *truth.items()]:
            said = lab if rng.random() < 0.8 else str(rng.choice(["sad", "contempt"]))
            fh.write(json.dumps({"name": name, "label": said, "scores": {said: 0.9, "other": 0.1}}) + "\n")
    return {"paths": [str(p) for p in paths], "truth": truth, "truth_csv": str(truth_csv), "annotator": str(ann),
            "root": root}


def write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def invoke(cmd, args):
    res = CliRunner().invoke(cmd, [str(a) for a in args], catch_exceptions=False)
    return res


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_ensemble_writes_submission_csv_details_and_meta(runs, tmp_path):
    out = tmp_path / "pred.csv"
    res = invoke(ensemble, [*runs["paths"], "--out", out, "--rules", "mer2025", "--annotator", runs["annotator"]])
    assert res.exit_code == 0, res.output
    rows = read_rows(out)
    assert rows[0] == ["name", "discrete"]
    assert len(rows) - 1 == len(runs["truth"]) == len({r[0] for r in rows[1:]})
    assert {r[1] for r in rows[1:]} <= set(MER)
    det = read_rows(tmp_path / "pred.details.csv")
    head = det[0]
    assert head[:7] == ["name", "discrete", "vote", "n_members", "margin", "changed_by", "confidence"]
    assert head[7:] == [f"prob_{c}" for c in MER]
    probs = np.array([[float(x) for x in r[7:]] for r in det[1:]])
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    conf = np.array([float(r[6]) for r in det[1:]])
    assert ((conf > 1 / len(MER)) & (conf <= 1)).all()
    assert [r[:2] for r in det[1:]] == rows[1:]
    meta = json.loads((tmp_path / "pred.meta.json").read_text())
    assert meta["vote"] == "reliance" and len(meta["members"]) == 10
    assert abs(sum(m["weight"] for m in meta["members"]) - 1) < 1e-9
    assert "out-of-fold predictions of 240 labeled ids" in meta["tuned_on"]["text"]
    assert set(meta["changes_per_rule"]) == {"1:worried-yields", "2:gemini-modification"}
    changed = sum(1 for r in det[1:] if "2:gemini-modification" in r[5])
    assert changed == meta["changes_per_rule"]["2:gemini-modification"]
    assert meta["annotator"]["outside_classes"] > 0
    assert "rule 2:gemini-modification: changed" in res.output and "annotator labels outside" in res.output
    assert f"wrote {out}" in res.output


def test_same_inputs_same_predictions(runs, tmp_path):
    for k in (1, 2):
        assert invoke(ensemble, [*runs["paths"], "--out", tmp_path / f"p{k}.csv"]).exit_code == 0
    assert (tmp_path / "p1.csv").read_text() == (tmp_path / "p2.csv").read_text()
    assert (tmp_path / "p1.details.csv").read_text() == (tmp_path / "p2.details.csv").read_text()


@pytest.mark.parametrize("vote", ["hard", "soft", "reliance"])
def test_every_vote_beats_the_weakest_expert_on_hidden_truth(runs, tmp_path, vote):
    out = tmp_path / f"{vote}.csv"
    assert invoke(ensemble, [*runs["paths"], "--out", out, "--vote", vote]).exit_code == 0
    pred = dict(read_rows(out)[1:])
    names = sorted(runs["truth"])
    acc = np.mean([pred[n] == runs["truth"][n] for n in names])
    assert acc > 0.6  # the weakest expert alone is near chance (1/6)


def test_bad_rules_file_fails_before_any_work(runs, tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - rule: class_priority\n    when_top: [worried]\n    prefer: [sadd]\n    margin: 0.1\n")
    out = tmp_path / "never.csv"
    res = invoke(ensemble, [*runs["paths"], "--out", out, "--rules", bad])
    assert res.exit_code != 0
    assert f"rules file {bad}, entry 1 (class_priority): unknown class 'sadd'" in res.output
    assert not out.exists()
    res = invoke(ensemble, [*runs["paths"], "--out", out, "--rules", "mer2025"])
    assert res.exit_code != 0 and "--annotator" in res.output and not out.exists()


def test_class_priority_rule_reports_exactly_the_rows_it_changed(tmp_path):
    labels = {f"l{i}": MER[i % 6] for i in range(60)}
    eye = np.eye(6) * 0.5 + 0.5 / 6
    oof = {"fused": (list(labels), eye[[i % 6 for i in range(60)]]),
           "routed": (list(labels), eye[[i % 6 for i in range(60)]])}
    close = [0.0, 0.0, 0.0, 0.42, 0.48, 0.10]   # worried, sad close -> sad
    far = [0.0, 0.0, 0.0, 0.10, 0.80, 0.10]     # worried, sad far -> stays
    happy = [0.0, 0.1, 0.8, 0.1, 0.0, 0.0]
    test_p = np.array([close, close, far, happy])
    test = {"fused": (["t0", "t1", "t2", "t3"], test_p), "routed": (["t0", "t1", "t2", "t3"], test_p)}
    run = write_run_dir(tmp_path / "run", MER, labels, oof, test)
    out = tmp_path / "p.csv"
    res = invoke(ensemble, [run, "--out", out, "--rules", "worried-yields", "--vote", "soft"])
    assert res.exit_code == 0, res.output
    assert "rule 1:worried-yields: changed 2 labels" in res.output
    assert read_rows(out)[1:] == [["t0", "sad"], ["t1", "sad"], ["t2", "worried"], ["t3", "happy"]]
    det = read_rows(tmp_path / "p.details.csv")
    assert [r[2] for r in det[1:]] == ["worried", "worried", "worried", "happy"]
    assert [r[5] for r in det[1:]] == ["1:worried-yields", "1:worried-yields", "", ""]


def test_evaluate_scores_and_reports(runs, tmp_path):
    out = tmp_path / "pred.csv"
    assert invoke(ensemble, [*runs["paths"], "--out", out, "--rules", "mer2025",
                             "--annotator", runs["annotator"]]).exit_code == 0
    labels = tmp_path / "labels.csv"
    truth = dict(runs["truth"])
    dropped = sorted(truth)[:5]
    for n in dropped:
        del truth[n]
    truth["extra-id"] = "happy"
    write_csv(labels, ["name", "discrete", "valence"], [(n, l, 0) for n, l in sorted(truth.items())])
    rep = tmp_path / "rep"
    res = invoke(evaluate, [out, "--labels", labels, "--out", rep, "--runs", *runs["paths"]])
    assert res.exit_code == 0, res.output
    pred = dict(read_rows(out)[1:])
    names = sorted(set(pred) & set(truth))
    expect = f1_score([truth[n] for n in names], [pred[n] for n in names], average="weighted")
    m = json.loads((rep / "metrics.json").read_text())
    assert m["metrics"]["weighted_f1"] == pytest.approx(expect)
    assert m["counts"] == {"predictions": 150, "labels": 146, "matched": 145, "predictions_without_label": 5,
                           "labels_without_prediction": 1}
    assert f"weighted F1 {expect:.4f}" in res.output
    assert (rep / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_class = read_rows(rep / "per_class.csv")
    assert per_class[0] == ["class", "precision", "recall", "f1", "support", "predicted"] and len(per_class) == 7
    members = read_rows(rep / "members.csv")
    assert len(members) == 11 and members[0][0] == "member"
    stages = read_rows(rep / "oof_stages.csv")
    assert [r[0] for r in stages[1:]] == ["vote:reliance", "1:worried-yields", "2:gemini-modification"]
    assert "weighted_f1_cross_fitted" in stages[0]
    report = (rep / "report.md").read_text()
    assert "## What it was tuned on" in report and "out-of-fold predictions of 240 labeled ids" in report
    assert "before and after each rule" in report


def test_evaluate_without_runs_or_meta_and_bad_inputs(runs, tmp_path):
    pred = tmp_path / "p.csv"
    write_csv(pred, ["name", "discrete"], [("a", "x"), ("b", "y"), ("c", "x")])
    lab = tmp_path / "l.csv"
    write_csv(lab, ["name", "discrete"], [("a", "x"), ("b", "x"), ("c", "x")])
    res = invoke(evaluate, [pred, "--labels", lab])
    assert res.exit_code == 0, res.output
    assert "accuracy 0.6667" in res.output
    assert (tmp_path / "p.report" / "report.md").read_text().count("tuning provenance unknown") == 1
    bad = tmp_path / "bad.csv"
    write_csv(bad, ["id", "label"], [("a", "x")])
    res = invoke(evaluate, [bad, "--labels", lab])
    assert res.exit_code != 0 and "expected `name,discrete`" in res.output
    write_csv(bad, ["name", "discrete"], [("a", "x"), ("a", "y")])
    res = invoke(evaluate, [bad, "--labels", lab])
    assert res.exit_code != 0 and "id 'a' appears twice" in res.output


def test_main_cli_has_both_commands():
    import cli

    res = CliRunner().invoke(cli.main, ["ensemble", "--help"])
    assert res.exit_code == 0 and "--vote" in res.output and "worried-yields" in res.output
    res = CliRunner().invoke(cli.main, ["evaluate", "--help"])
    assert res.exit_code == 0 and "--labels" in res.output and "--runs" in res.output


def test_runs_without_test_rows_or_tuning_rows(tmp_path):
    labels = {f"l{i}": MER[i % 6] for i in range(30)}
    p = np.full((30, 6), 0.1)
    p[np.arange(30), np.arange(30) % 6] = 0.5
    run = write_run_dir(tmp_path / "only_oof", MER, labels, {"fused": (list(labels), p)}, {})
    out = tmp_path / "p.csv"
    res = invoke(ensemble, [run, "--out", out])
    assert res.exit_code == 0, res.output
    assert read_rows(out) == [["name", "discrete"]] and "predicted 0 ids" in res.output
    # no labeled rows: reliance and 'auto' thresholds cannot be tuned -> clear errors; soft works
    run2 = write_run_dir(tmp_path / "no_labels", MER, {}, {}, {"fused": (["t0", "t1"], p[:2])})
    res = invoke(ensemble, [run2, "--out", out])
    assert res.exit_code != 0 and "use --vote soft" in res.output
    ann = tmp_path / "a.csv"
    write_csv(ann, ["name", "label"], [("t0", "sad")])
    res = invoke(ensemble, [run2, "--out", out, "--vote", "soft", "--rules", "mer2025", "--annotator", ann])
    assert res.exit_code != 0 and "give numbers instead of 'auto'" in res.output
    res = invoke(ensemble, [run2, "--out", out, "--vote", "soft", "--rules", "worried-yields"])
    assert res.exit_code == 0 and len(read_rows(out)) == 3


def test_annotator_without_answers_for_labeled_clips_is_noted(runs, tmp_path):
    ann = tmp_path / "a.csv"
    write_csv(ann, ["name", "label", "confidence"], [(n, "sad", 0.99) for n in sorted(runs["truth"])])
    out = tmp_path / "p.csv"
    res = invoke(ensemble, [*runs["paths"], "--out", out, "--rules", "mer2025", "--annotator", ann])
    assert res.exit_code == 0, res.output
    assert "rule 2:gemini-modification: changed 0 labels" in res.output
    meta = json.loads((tmp_path / "p.meta.json").read_text())
    assert any("answers none of the 240 tuning rows" in n for n in meta["notes"])


def test_ids_file_picks_the_predicted_ids(runs, tmp_path):
    ids = sorted(runs["truth"])[:3]
    ids_csv = tmp_path / "ids.csv"
    ids_csv.write_text("\ufeffname,extra\n" + "".join(f" {n} ,x\n" for n in ids) + ",x\n" + f"{ids[0]},x\n",
                       encoding="utf-8")
    out = tmp_path / "p.csv"
    res = invoke(ensemble, [*runs["paths"], "--out", out, "--vote", "soft", "--ids", ids_csv])
    assert res.exit_code == 0, res.output
    assert [r[0] for r in read_rows(out)[1:]] == ids
    write_csv(ids_csv, ["id"], [[ids[0]]])
    res = invoke(ensemble, [*runs["paths"], "--out", tmp_path / "q.csv", "--ids", ids_csv])
    assert res.exit_code != 0 and f"--ids file {ids_csv} has no 'name' column" in res.output
