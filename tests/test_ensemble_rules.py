"""Re-ranking rules on constructed cases, and validation of rules files."""
import json

import numpy as np
import pytest
import yaml

from extract.annotator import Annotator, Answer, load_annotator
from ensemble.reranking import (RULES, Context, RulesError, State, load_rules, parse_rules, sample_rules)

MER = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
AV = ["angry", "disgust", "fear", "happy", "sad"]


def state(rows, labels=None, ids=None):
    s = np.array(rows, float)
    lab = s.argmax(axis=1) if labels is None else np.array(labels)
    return State(ids or [f"i{k}" for k in range(len(s))], s, lab)


def rule(entry, classes=MER, annotator=None):
    rs = parse_rules([entry], classes, "test.yaml")
    return rs.rules[0], Context(classes, annotator)


# -- class priority --------------------------------------------------------------------------------

def test_worried_yields_to_a_close_sad_and_to_the_best_close_preferred_class():
    r, ctx = rule({"rule": "class_priority", "when_top": ["worried"], "prefer": ["sad", "surprise", "neutral"],
                   "margin": 0.1})
    s = state([[0.05, 0.0, 0.0, 0.40, 0.45, 0.10],    # sad within 0.05 -> sad
               [0.38, 0.0, 0.0, 0.10, 0.42, 0.10],    # neutral within 0.04 -> neutral
               [0.36, 0.0, 0.0, 0.0, 0.42, 0.22],     # neutral (0.06 below) and surprise (0.2) -> neutral
               [0.0, 0.0, 0.0, 0.39, 0.41, 0.20]])    # sad 0.02, surprise 0.21 -> sad
    out = r.apply(s, ctx)
    assert [MER[i] for i in out.state.labels] == ["sad", "neutral", "neutral", "sad"]
    assert out.changed.all()


def test_class_priority_changes_nothing_when_its_condition_is_not_met():
    r, ctx = rule({"rule": "class_priority", "when_top": "worried", "prefer": ["sad"], "margin": 0.1})
    s = state([[0.0, 0.0, 0.0, 0.30, 0.70, 0.0],      # worried, sad far below
               [0.0, 0.0, 0.46, 0.44, 0.10, 0.0],     # top is happy, not worried
               [0.0, 0.0, 0.0, 0.10, 0.50, 0.40]])    # surprise is close but not preferred here
    out = r.apply(s, ctx)
    assert not out.changed.any()
    np.testing.assert_array_equal(out.state.labels, s.labels)


def test_margin_is_strict():
    r, ctx = rule({"rule": "class_priority", "when_top": ["worried"], "prefer": ["sad"], "margin": 0.25})
    s = state([[0, 0, 0, 0.25, 0.5, 0.25]])
    assert not r.apply(s, ctx).changed.any()
    r0, _ = rule({"rule": "class_priority", "when_top": ["worried"], "prefer": ["sad"], "margin": 0.0})
    assert not r0.apply(state([[0, 0, 0, 0.5, 0.5, 0]], labels=[4]), ctx).changed.any()


# -- prior correction ------------------------------------------------------------------------------

def _skewed(n=400, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) + np.array([1.0, 0.0, -0.5])  # over-predicts class 0
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def test_ipf_moves_the_predicted_distribution_to_the_target():
    classes = ["a", "b", "c"]
    p = _skewed()
    r, ctx = rule({"rule": "prior_correction", "target": {"a": 1, "b": 1, "c": 1}}, classes)
    s = state(p)
    r.fit(s, np.zeros(0, int), ctx)
    out = r.apply(s, ctx)
    np.testing.assert_allclose(out.state.scores.mean(axis=0), [1 / 3] * 3, atol=1e-4)
    before = np.bincount(s.labels, minlength=3)
    after = np.bincount(out.state.labels, minlength=3)
    assert before[0] > 200 and abs(after - 400 / 3).max() < abs(before - 400 / 3).max()
    assert out.changed.sum() == (out.state.labels != s.labels).sum() > 0
    np.testing.assert_allclose(out.state.scores.sum(axis=1), 1)


def test_prior_correction_toward_labeled_shares_and_logit_adjust():
    classes = ["a", "b", "c"]
    p = _skewed(seed=1)
    y = np.array([0] * 20 + [1] * 40 + [2] * 40)
    r, ctx = rule({"rule": "prior_correction", "target": "labeled", "method": "logit_adjust"}, classes)
    s = state(p)
    r.fit(s, y, ctx)
    out = r.apply(s, ctx)
    np.testing.assert_allclose(r.labeled_prior_, [0.2, 0.4, 0.4])
    assert np.bincount(out.state.labels, minlength=3)[0] < np.bincount(s.labels, minlength=3)[0]


def test_prior_correction_changes_nothing_when_the_distribution_already_matches():
    classes = ["a", "b", "c"]
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]] * 10)
    r, ctx = rule({"rule": "prior_correction", "target": {"a": 1, "b": 1, "c": 1}}, classes)
    s = state(p)
    r.fit(s, np.zeros(0, int), ctx)
    out = r.apply(s, ctx)
    assert not out.changed.any()
    zero, _ = rule({"rule": "prior_correction", "target": {"a": 5, "b": 1, "c": 1}, "strength": 0.0}, classes)
    zero.fit(state(_skewed()), np.zeros(0, int), ctx)
    assert not zero.apply(state(_skewed()), ctx).changed.any()


def test_prior_correction_keeps_labels_set_by_an_earlier_rule_where_top_does_not_move():
    classes = ["a", "b", "c"]
    r, ctx = rule({"rule": "prior_correction", "target": {"a": 1, "b": 1, "c": 1}}, classes)
    s = state([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]], labels=[2, 1, 2])
    r.fit(s, np.zeros(0, int), ctx)
    out = r.apply(s, ctx)
    assert out.state.labels.tolist() == [2, 1, 2] and not out.changed.any()


def test_prior_correction_with_labeled_shares_must_be_fitted_first():
    classes = ["a", "b", "c"]
    s = state(_skewed())
    r, ctx = rule({"rule": "prior_correction", "target": "labeled"}, classes)
    with pytest.raises(RuntimeError, match="target 'labeled' needs the rule to be fitted on labeled rows"):
        r.apply(s, ctx)
    r, ctx = rule({"rule": "prior_correction", "target": {"a": 1, "b": 1, "c": 1}, "method": "logit_adjust",
                   "source": "labeled"}, classes)
    with pytest.raises(RuntimeError, match="source 'labeled' needs the rule to be fitted on labeled rows"):
        r.apply(s, ctx)
    with pytest.raises(RulesError, match="'labeled' needs out-of-fold rows"):
        r.fit(s, np.zeros(0, int), ctx)


# -- annotator override ----------------------------------------------------------------------------

def ann(answers):
    return Annotator("mem", {k: Answer(*v) for k, v in answers.items()})


def test_annotator_override_takes_confident_answers_on_unsure_rows_only():
    a = ann({"i0": ("sad", 0.9), "i1": ("sad", 0.5), "i2": ("sad", 0.95), "i3": ("contempt", 0.99),
             "i4": ("Happy", 0.9)})
    r, ctx = rule({"rule": "annotator_override", "margin": 0.2, "confidence": 0.8}, MER, a)
    s = state([[0.45, 0.40, 0.0, 0.15, 0.0, 0.0],    # unsure, confident sad -> sad
               [0.45, 0.40, 0.0, 0.15, 0.0, 0.0],    # annotator not confident enough
               [0.90, 0.05, 0.0, 0.05, 0.0, 0.0],    # ensemble sure
               [0.45, 0.40, 0.0, 0.15, 0.0, 0.0],    # annotator label outside classes: ignored, counted
               [0.45, 0.40, 0.15, 0.0, 0.0, 0.0],    # case-insensitive class match -> happy
               [0.45, 0.40, 0.0, 0.15, 0.0, 0.0]])   # no answer
    out = r.apply(s, ctx)
    assert [MER[i] for i in out.state.labels] == ["sad", "neutral", "neutral", "neutral", "happy", "neutral"]
    assert out.changed.tolist() == [True, False, False, False, True, False]
    assert out.info["outside_classes_ignored"] == 1 and out.info["no_answer"] == 1


def test_annotator_override_trust_list():
    a = ann({"i0": ("sad", 0.9), "i1": ("happy", 0.9)})
    r, ctx = rule({"rule": "annotator_override", "margin": 0.5, "confidence": 0.5, "trust": ["happy"]}, MER, a)
    out = r.apply(state([[0.5, 0.4, 0, 0.1, 0, 0], [0.5, 0.4, 0.1, 0, 0, 0]]), ctx)
    assert out.changed.tolist() == [False, True] and out.info["untrusted"] == 1


def test_auto_thresholds_are_tuned_on_given_rows_and_stay_conservative_for_a_bad_annotator():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 3, n)
    logits = 1.0 * np.eye(3)[y] + rng.normal(size=(n, 3))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ids = [f"i{k}" for k in range(n)]
    classes = ["a", "b", "c"]
    good = ann({i: (classes[t], 0.9) for i, t in zip(ids, y)})
    bad = ann({i: (classes[(t + 1) % 3], 0.9) for i, t in zip(ids, y)})
    s = State(ids, p, p.argmax(axis=1))
    for annotator, expect_changes in ((good, True), (bad, False)):
        r, ctx = rule({"rule": "annotator_override", "margin": "auto", "confidence": "auto"}, classes, annotator)
        r.fit(s, y, ctx)
        out = r.apply(s, ctx)
        assert set(r.tuned_) == {"margin", "confidence"}
        assert out.changed.any() == expect_changes
    with pytest.raises(RuntimeError, match="fit the rule"):
        rule({"rule": "annotator_override", "margin": "auto", "confidence": 0.5}, classes, good)[0].apply(
            s, Context(classes, good))


class CountingAnnotator(Annotator):
    calls = 0

    def align(self, ids, classes):
        self.calls += 1
        return super().align(ids, classes)


def test_annotator_override_aligns_once_per_fit_not_once_per_grid_point():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    ids = [f"i{k}" for k in range(200)]
    classes = ["a", "b", "c"]
    a = CountingAnnotator("mem", {i: Answer(classes[t], float(c)) for i, t, c in zip(ids, y, rng.uniform(0.4, 1, 200))})
    r, ctx = rule({"rule": "annotator_override", "margin": "auto", "confidence": "auto"}, classes, a)
    s = State(ids, p, p.argmax(axis=1))
    r.fit(s, y, ctx)
    assert len(r.grid_scores_) == 49 and a.calls <= 2
    a.calls = 0
    out = r.apply(s, ctx)
    assert a.calls == 1 and out.changed.any()
    # the tuned thresholds are the grid point a plain apply with each of them scores best on
    best = max(r.grid_scores_.values())
    m, c = next(k for k, v in r.grid_scores_.items() if v == best)
    fixed, _ = rule({"rule": "annotator_override", "margin": m, "confidence": c}, classes, a)
    np.testing.assert_array_equal(fixed.apply(s, ctx).state.labels, out.state.labels)


def test_annotator_override_errors_come_in_the_same_order():
    classes = ["a", "b", "c"]
    s = state([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    auto = {"rule": "annotator_override", "margin": "auto", "confidence": "auto"}
    r, ctx = rule(auto, classes, None)
    with pytest.raises(RulesError, match="give numbers instead of 'auto'"):
        r.fit(s, np.zeros(0, int), ctx)
    with pytest.raises(RulesError, match="'annotator_override' needs --annotator FILE"):
        r.fit(s, np.array([0, 1]), ctx)
    with pytest.raises(RuntimeError, match="fit the rule"):
        rule(auto, classes, None)[0].apply(s, ctx)
    fixed, _ = rule({"rule": "annotator_override", "margin": 0.1, "confidence": 0.5}, classes, None)
    fixed.fit(s, np.array([0, 1]), ctx)  # nothing to tune: no annotator needed yet
    with pytest.raises(RulesError, match="'annotator_override' needs --annotator FILE"):
        fixed.apply(s, ctx)


# -- validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry,match", [
    ({"rule": "swap_labels"}, r"entry 2 \(swap_labels\): unknown rule 'swap_labels'; known rules"),
    ({"rule": "class_priority", "when_top": ["wory"], "prefer": ["sad"], "margin": 0.1}, "unknown class 'wory'"),
    ({"rule": "class_priority", "when_top": ["worried"], "prefer": ["sad"], "margin": 1.5}, "'margin' must be"),
    ({"rule": "class_priority", "when_top": ["worried"], "prefer": ["sad"], "margin": "close"}, "'margin' must be"),
    ({"rule": "class_priority", "when_top": ["worried"], "prefer": ["worried"], "margin": 0.1}, "both"),
    ({"rule": "class_priority", "when_top": ["worried"], "margin": 0.1}, "needs 'prefer'"),
    ({"rule": "class_priority", "when_top": ["worried"], "prefer": ["sad"], "margin": 0.1, "treshold": 1},
     "unknown key 'treshold'"),
    ({"rule": "annotator_override", "margin": 0.1, "confidence": -0.2}, "'confidence' must be"),
    ({"rule": "prior_correction", "target": {"neutral": 1}}, "no share for angry"),
    ({"rule": "prior_correction", "method": "magic"}, "'method' must be"),
    ({"rule": "prior_correction", "strength": 3}, "'strength' must be"),
    ("class_priority", "must be a mapping with 'rule"),
])
def test_bad_rules_files_name_the_file_and_entry(tmp_path, entry, match):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"rules": [{"rule": "prior_correction"}, entry]}))
    with pytest.raises(RulesError, match=match) as exc:
        load_rules(path, MER)
    assert str(path) in str(exc.value) and "entry 2" in str(exc.value)


def test_unparsable_yaml_and_unknown_top_level_key(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("rules: [\n  - rule: x")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(p, MER)
    p.write_text("rule: []\n")
    with pytest.raises(RulesError, match="unknown top-level key 'rule'"):
        load_rules(p, MER)
    with pytest.raises(RulesError, match="does not exist"):
        load_rules(tmp_path / "nope.yaml", MER)


def test_annotator_rule_without_annotator_is_refused():
    with pytest.raises(RulesError, match="--annotator"):
        parse_rules([{"rule": "annotator_override", "margin": 0.1, "confidence": 0.5}], MER, "x.yaml",
                    have_annotator=False)


def test_shipped_samples_validate_against_their_classes():
    samples = sample_rules()
    assert {"worried-yields", "mer2025", "emo-av"} <= set(samples)
    rs = load_rules("worried-yields", MER)
    assert rs.rules[0].params == {"when_top": ["worried"], "prefer": ["sad", "surprise", "neutral"], "margin": 0.1}
    assert load_rules("mer2025", MER).needs_annotator
    assert load_rules("emo-av", AV).needs_annotator
    with pytest.raises(RulesError, match="unknown class 'worried'"):
        load_rules("worried-yields", AV)


def test_registry_lists_the_three_rules():
    assert {"class_priority", "prior_correction", "annotator_override"} <= set(RULES)


def test_annotator_file_formats(tmp_path):
    j = tmp_path / "a.jsonl"
    j.write_text("\n".join([
        json.dumps({"name": "x", "label": "sad", "scores": {"sad": 6, "happy": 2, "neutral": 2}}),
        json.dumps({"name": "y", "label": "happy", "confidence": 0.3}),
        json.dumps({"name": "z", "label": "happy"}),
        "{not json",
        json.dumps({"label": "sad"}),
    ]) + "\n")
    a = load_annotator(j)
    assert a.answers["x"].confidence == pytest.approx(0.6)
    assert a.answers["y"].confidence == pytest.approx(0.3) and a.answers["z"].confidence == 1.0
    assert len(a.problems) == 2 and f"{j}:4" in a.problems[0] and "no 'name'" in a.problems[1]
    c = tmp_path / "a.csv"
    c.write_text("name,label,confidence\nx,sad,0.7\ny,happy,\nz,angry,2\n")
    a = load_annotator(c)
    assert a.answers["x"].confidence == 0.7 and a.answers["y"].confidence == 1.0
    assert "z" not in a.answers and "not in [0, 1]" in a.problems[0]
    lab, conf, outside = a.align(["x", "y", "q"], ["sad", "angry"])
    assert lab.tolist() == [0, -1, -1] and outside.tolist() == [False, True, False]
    c.write_text("id,label\nx,sad\n")
    with pytest.raises(ValueError, match="expected name,label"):
        load_annotator(c)
    c.write_text("\ufeffname,label\nx,sad\ny,\n", encoding="utf-8")  # Excel's BOM
    a = load_annotator(c)
    assert a.answers["x"].label == "sad" and a.problems == [f"{c}:3: empty name or label"]
