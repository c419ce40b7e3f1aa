"""--head logreg: a tuned standardised logistic regression per vector feature inside the MoE."""
import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.folds import make_splitter
from models.logreg import CS, LogRegExpert, crossfit_proba


def data(n=120, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, d)) * [1, 5, 0.1, 1, 1, 1][:d]
    x[:, 0] += 1.5 * y  # the signal, on one dimension among noise of other scales
    groups = np.array([f"spk{i % 6}" for i in range(n)])
    return x, y, groups


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_is_the_tuned_pipeline_of_scikit_learn():
    x, y, groups = data()
    w = np.where(y == 0, 2.0, 1.0)
    got = LogRegExpert(n_classes=4, seed=3).fit(x, y, w, groups)
    folds = list(make_splitter(3, 3, y=y, groups=groups).split(x, y, groups))
    ref = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                       {"logisticregression__C": list(CS)}, cv=folds, scoring="balanced_accuracy")
    ref.fit(x, y, logisticregression__sample_weight=w)
    assert got.C_ == ref.best_params_["logisticregression__C"]
    p = got.predict_proba(x)
    assert p.shape == (120, 4) and np.all(p[:, 3] == 0)  # a class of the run it never saw: probability 0
    np.testing.assert_allclose(p[:, :3], ref.predict_proba(x), atol=1e-9)


def test_survives_a_save_exactly_and_refuses_mismatched_arrays():
    x, y, groups = data(seed=1)
    e = LogRegExpert(n_classes=3).fit(x, y, None, groups)
    back = LogRegExpert.from_string(e.to_string(), 3)
    assert np.array_equal(back.predict_proba(x), e.predict_proba(x))
    d = json.loads(e.to_string())
    d["coef"] = d["coef"][:2]
    with pytest.raises(ValueError, match="do not match"):
        LogRegExpert.from_string(json.dumps(d), 3)
    with pytest.raises(ValueError, match="do not match"):
        LogRegExpert.from_string(e.to_string(), 2)  # classes beyond the run's


def test_two_classes_and_one_class():
    x, y, _ = data(classes=2)
    e = LogRegExpert(n_classes=2).fit(x, y)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=e.C_, max_iter=2000)).fit(x, y)
    np.testing.assert_allclose(e.predict_proba(x), ref.predict_proba(x), atol=1e-9)
    one = LogRegExpert(n_classes=3).fit(x, np.full(len(x), 2))
    assert np.array_equal(one.predict_proba(x[:4]), np.tile([0.0, 0.0, 1.0], (4, 1)))


def test_stronger_signal_is_not_over_regularised():
    # with the signal spread over many dimensions, the largest C of the grid wins; with none, the search
    # still returns a grid value and near-uniform probabilities
    rng = np.random.default_rng(5)
    y = np.arange(300) % 3
    x = rng.normal(size=(300, 40)) + 0.6 * np.eye(3)[y] @ rng.normal(size=(3, 40))
    e = LogRegExpert(n_classes=3).fit(x, y)
    assert e.C_ in CS and (e.predict(x) == y).mean() > 0.9


def test_crossfit_probabilities_are_out_of_fold():
    x, y, groups = data(seed=2)
    p = crossfit_proba(x, y, None, groups, 3, seed=0)
    full = LogRegExpert(n_classes=3).fit(x, y, None, groups).predict_proba(x)
    assert p.shape == (120, 3) and np.allclose(p.sum(1), 1)
    assert not np.allclose(p, full)  # each row predicted by an expert that did not train on it
    assert np.array_equal(p, crossfit_proba(x, y, None, groups, 3, seed=0))  # deterministic
