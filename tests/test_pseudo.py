"""Consensus pseudo-labels: the agreement filter, thresholds, and the pseudo-label command."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from extract.annotator import Annotator, Answer
from models.pseudo import PseudoError, parse_class_thresholds, read_pseudo, select, write_pseudo

CLASSES = ["angry", "happy", "sad"]


def ann(answers):
    return Annotator(Path("a.jsonl"), {k: Answer(label, conf) for k, (label, conf) in answers.items()})


def test_keeps_only_agreement_above_both_thresholds():
    ids = ["a", "b", "c", "d", "e", "f"]
    probs = np.array([[0.9, 0.05, 0.05],    # a: angry, agrees, confident -> kept
                      [0.2, 0.7, 0.1],      # b: happy, annotator says sad -> dropped
                      [0.5, 0.3, 0.2],      # c: angry, agrees, model conf 0.5 < 0.6 -> dropped
                      [0.1, 0.1, 0.8],      # d: sad, agrees, annotator conf 0.3 < 0.4 -> dropped
                      [0.1, 0.85, 0.05],    # e: happy, no annotator answer -> dropped
                      [np.nan] * 3])        # f: no model prediction -> dropped
    a = ann({"a": ("angry", 0.9), "b": ("sad", 0.9), "c": ("Angry", 0.9), "d": ("sad", 0.3), "f": ("sad", 1.0)})
    sel = select(ids, probs, CLASSES, a, min_confidence=0.6, min_annotator_confidence=0.4)
    assert sel.keep.tolist() == [True, False, False, False, False, False]
    assert sel.counts["agree"] == 3 and sel.counts["kept"] == 1 and sel.counts["annotator_missing"] == 1
    assert sel.counts["kept_per_class"] == {"angry": 1, "happy": 0, "sad": 0}
    assert sel.rows()[0]["name"] == "a" and sel.rows()[0]["annotator_label"] == "angry"


def test_nothing_changes_without_thresholds_except_disagreement():
    ids = ["a", "b"]
    probs = np.array([[0.34, 0.33, 0.33], [0.1, 0.2, 0.7]])
    sel = select(ids, probs, CLASSES, ann({"a": ("angry", 0.01), "b": ("sad", 0.01)}))
    assert sel.keep.all()


def test_per_class_thresholds_override_the_global_one():
    ids = ["a", "b"]
    probs = np.array([[0.1, 0.8, 0.1], [0.8, 0.1, 0.1]])
    a = ann({"a": ("happy", 1.0), "b": ("angry", 1.0)})
    sel = select(ids, probs, CLASSES, a, min_confidence=0.5, class_thresholds=parse_class_thresholds("happy=0.9", CLASSES))
    assert sel.keep.tolist() == [False, True]


def test_annotator_labels_outside_classes_are_counted_never_kept():
    sel = select(["a"], np.array([[0.9, 0.05, 0.05]]), CLASSES, ann({"a": ("surprise", 1.0)}))
    assert not sel.keep.any() and sel.counts["annotator_label_outside_classes"] == 1


def test_class_threshold_parsing_errors():
    with pytest.raises(PseudoError, match="unknown class 'worried'"):
        parse_class_thresholds("worried=0.8", CLASSES)
    with pytest.raises(PseudoError, match="in \\[0, 1\\]"):
        parse_class_thresholds("happy=1.5", CLASSES)
    with pytest.raises(PseudoError, match="class=threshold"):
        parse_class_thresholds("happy", CLASSES)


def test_write_then_read_roundtrip_with_meta(tmp_path):
    sel = select(["x", "y"], np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]), CLASSES,
                 ann({"x": ("angry", 0.8), "y": ("sad", 0.7)}))
    path = write_pseudo(tmp_path / "p.csv", sel, {"annotator": "a.jsonl", "min_confidence": 0.0})
    with open(path, newline="") as fh:
        assert next(csv.reader(fh)) == ["name", "discrete", "confidence", "annotator_label", "annotator_confidence"]
    pl = read_pseudo(path, CLASSES)
    assert pl.ids == ["x", "y"] and pl.labels == ["angry", "sad"]
    assert pl.meta["counts"]["kept"] == 2 and pl.meta["annotator"] == "a.jsonl"
    with pytest.raises(PseudoError, match="outside the classes"):
        read_pseudo(path, ["happy"])


def test_a_run_dir_without_labels_is_a_clear_error(tmp_path):
    from ensemble.synth import write_run_dir
    from models.run_dir import RunDirError, open_run

    run = write_run_dir(tmp_path / "r", CLASSES, {"a": "happy", "b": "sad"}, {}, {},
                        members=[{"member": "routed", "kind": "routed"}])
    assert open_run(run).labels() == {"a": "happy", "b": "sad"}
    (run / "labels.csv").unlink()
    with pytest.raises(RunDirError, match="labels.csv missing"):
        open_run(run)


def test_write_pseudo_makes_the_folder_and_leaves_no_partial_file(tmp_path):
    from models.pseudo import meta_path

    sel = select(["x"], np.array([[0.9, 0.05, 0.05]]), CLASSES, ann({"x": ("angry", 0.8)}))
    path = write_pseudo(tmp_path / "new" / "p.csv", sel, {"annotator": "a.jsonl"})
    assert meta_path(path) == tmp_path / "new" / "p.csv.meta.json"
    assert json.loads(meta_path(path).read_text())["counts"]["kept"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.csv", "p.csv.meta.json"]   # no *.tmp left
    assert path.read_bytes().startswith(b"name,discrete,confidence,annotator_label,annotator_confidence\r\n")
