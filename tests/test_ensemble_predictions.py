"""The predictions CSV and its details sidecar on hand-made results (margin column edge cases)."""
import csv

import numpy as np

from ensemble.pipeline import Result, Stage
from ensemble.predictions import read_predictions, write_predictions
from ensemble.voting import VoteResult


def result(ids, scores, labels, rule_labels=None):
    scores, labels = np.asarray(scores, float), np.asarray(labels, np.int64)
    vote = VoteResult(scores, labels, np.full(len(ids), 2), np.zeros(len(ids), bool))
    stages = [Stage("vote:soft", labels, scores, np.zeros(len(ids), bool))]
    if rule_labels is not None:
        rule_labels = np.asarray(rule_labels, np.int64)
        stages.append(Stage("1:r", rule_labels, scores, rule_labels != labels))
    return Result(list(ids), vote, stages)


def details(path):
    with open(path.with_name(path.stem + ".details.csv"), newline="") as fh:
        return list(csv.reader(fh))


def test_margin_is_the_labels_score_minus_the_best_other_even_after_a_rule(tmp_path):
    out = tmp_path / "p.csv"
    res = result(["b", "a"], [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], [0, 1], rule_labels=[1, 1])
    write_predictions(out, res.ids, res.final.labels, ["x", "y", "z"], res)
    assert read_predictions(out) == {"a": "y", "b": "y"}
    rows = details(out)
    assert [r[:6] for r in rows[1:]] == [["a", "y", "y", "2", "0.300000", ""],
                                         ["b", "y", "x", "2", "-0.200000", "1:r"]]


def test_margin_with_one_class_is_the_score_and_no_rows_write_only_headers(tmp_path):
    out = tmp_path / "one.csv"
    res = result(["a", "b"], [[1.0], [0.75]], [0, 0])
    write_predictions(out, res.ids, res.final.labels, ["x"], res)
    assert [r[4] for r in details(out)[1:]] == ["1.000000", "0.750000"]
    out = tmp_path / "none.csv"
    res = result([], np.zeros((0, 3)), [])
    write_predictions(out, [], res.final.labels, ["x", "y", "z"], res)
    assert read_predictions(out) == {}
    assert details(out) == [["name", "discrete", "vote", "n_members", "margin", "changed_by", "confidence",
                             "prob_x", "prob_y", "prob_z"]]
