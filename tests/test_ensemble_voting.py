"""Voting arithmetic on hand-made probabilities."""
import numpy as np
import pytest
from sklearn.metrics import f1_score

from ensemble.voting import (Voter, chance_f1, fast_weighted_f1, hard_vote, member_f1, pick, reliance_weights,
                             soft_vote)

NAN = np.nan


def arr(*members):
    probs = np.array(members, dtype=np.float64)
    present = ~np.isnan(probs).any(axis=2)
    return probs, present


def test_hard_vote_majority_and_vote_shares():
    probs, present = arr([[0.6, 0.3, 0.1]], [[0.2, 0.7, 0.1]], [[0.5, 0.4, 0.1]])
    res = hard_vote(probs, present)
    assert res.labels.tolist() == [0]
    np.testing.assert_allclose(res.scores[0], [2 / 3, 1 / 3, 0])


def test_hard_vote_tie_goes_to_higher_summed_probability():
    # one vote each for class 0 and 1; summed probability of class 1 (0.45+0.9) beats class 0 (0.55+0.05)
    probs, present = arr([[0.55, 0.45, 0.0]], [[0.05, 0.9, 0.05]])
    assert hard_vote(probs, present).labels.tolist() == [1]


def test_exact_tie_goes_to_first_class_in_order():
    probs, present = arr([[0.4, 0.4, 0.2]], [[0.4, 0.4, 0.2]])
    assert soft_vote(probs, present).labels.tolist() == [0]
    probs, present = arr([[0.5, 0.0, 0.5]], [[0.5, 0.0, 0.5]])
    assert hard_vote(probs, present).labels.tolist() == [0]
    assert pick(np.array([[1.0, 2.0, 2.0]]), np.array([[0.0, 0.0, 0.0]])).tolist() == [1]


def test_soft_vote_is_the_mean_and_weights_are_renormalised_over_present_members():
    probs, present = arr([[0.6, 0.4], [0.2, 0.8]],
                         [[0.2, 0.8], [NAN, NAN]],
                         [[0.1, 0.9], [0.9, 0.1]])
    res = soft_vote(probs, present)
    np.testing.assert_allclose(res.scores[0], [0.3, 0.7])
    np.testing.assert_allclose(res.scores[1], [0.55, 0.45])  # member 1 absent: mean of the two present
    assert res.n_members.tolist() == [3, 2]
    w = np.array([0.5, 0.3, 0.2])
    res = soft_vote(probs, present, w)
    np.testing.assert_allclose(res.scores[0], 0.5 * np.array([0.6, 0.4]) + 0.3 * np.array([0.2, 0.8])
                               + 0.2 * np.array([0.1, 0.9]))
    np.testing.assert_allclose(res.scores[1], (0.5 * np.array([0.2, 0.8]) + 0.2 * np.array([0.9, 0.1])) / 0.7)
    np.testing.assert_allclose(res.scores.sum(axis=1), 1)


def test_rows_without_any_member_get_the_prior_and_are_flagged():
    probs, present = arr([[0.9, 0.1], [NAN, NAN]])
    res = soft_vote(probs, present, prior=np.array([0.3, 0.7]))
    assert res.no_member.tolist() == [False, True]
    assert res.labels.tolist() == [0, 1]


def test_zero_weight_members_only_falls_back_to_their_plain_mean():
    probs, present = arr([[0.9, 0.1], [NAN, NAN]], [[0.2, 0.8], [0.3, 0.7]])
    res = soft_vote(probs, present, np.array([1.0, 0.0]))
    assert res.labels.tolist() == [0, 1]
    np.testing.assert_allclose(res.scores[1], [0.3, 0.7])


def test_fast_weighted_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    p[p == 3] = 2  # a class never predicted
    assert fast_weighted_f1(y, p, 6) == pytest.approx(f1_score(y, p, average="weighted", zero_division=0))


def test_reliance_weight_formula():
    y = np.array([0, 0, 1, 1])
    assert chance_f1(y, 2) == pytest.approx(0.5)
    f1 = np.array([0.9, 0.7, 0.5, 0.3])
    w = reliance_weights(f1, 0.5, 1.0)
    np.testing.assert_allclose(w, [0.4 / 0.6, 0.2 / 0.6, 0, 0])
    w2 = reliance_weights(f1, 0.5, 2.0)
    np.testing.assert_allclose(w2, [0.16 / 0.2, 0.04 / 0.2, 0, 0])
    np.testing.assert_allclose(reliance_weights(np.array([0.4, 0.5]), 0.5, 1.0), [0.5, 0.5])  # none beats chance


def test_member_f1_uses_only_rows_where_member_is_present():
    y = np.array([0, 1, 0, 1])
    probs, present = arr([[0.9, 0.1], [0.1, 0.9], [NAN, NAN], [NAN, NAN]])
    assert member_f1(probs, present, y, 2)[0] == pytest.approx(1.0)


def _members(y, skills, rng, C=3):
    out = []
    for s in skills:
        logits = s * np.eye(C)[y] + rng.normal(size=(len(y), C))
        e = np.exp(logits)
        out.append(e / e.sum(axis=1, keepdims=True))
    probs = np.stack(out)
    return probs, np.ones(probs.shape[:2], bool)


def test_reliance_downweights_a_useless_member_and_beats_a_plain_mean():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    probs, present = _members(y, [2.5, 0.0, 0.0, 0.0, 0.0], rng)
    voter = Voter("reliance", "auto").fit(probs, present, y, 3)
    assert voter.weights_[0] > 0.9 and voter.power_ in voter.grid
    assert set(voter.grid_scores_) == set(voter.grid)
    rel = fast_weighted_f1(y, voter.predict(probs, present).labels, 3)
    soft = fast_weighted_f1(y, soft_vote(probs, present).labels, 3)
    assert rel > soft + 0.05


def test_weights_depend_only_on_the_rows_they_are_fitted_on():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    probs, present = _members(y, [2.0, 1.0, 0.5], rng)
    v1 = Voter("reliance", 1.0).fit(probs, present, y, 3)
    target, tpresent = _members(rng.integers(0, 3, 50), [0.0, 3.0, 0.0], rng)
    before = v1.weights_.copy()
    res = v1.predict(target, tpresent)
    np.testing.assert_array_equal(v1.weights_, before)
    assert len(res.labels) == 50


def test_same_inputs_same_votes():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 200)
    probs, present = _members(y, [1.0, 1.5, 2.0], rng, C=4)
    present[0, ::3] = False
    a = Voter("reliance").fit(probs, present, y, 4).predict(probs, present)
    b = Voter("reliance").fit(probs, present, y, 4).predict(probs, present)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_bad_power_and_vote_are_rejected():
    with pytest.raises(ValueError, match="power"):
        Voter("reliance", "strong")
    with pytest.raises(ValueError, match="power"):
        Voter("reliance", -1)
    with pytest.raises(ValueError, match="unknown vote"):
        Voter("median")
