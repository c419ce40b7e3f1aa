"""Libraries over hand-written code (issue 11, item 11): each library call gives what the code it
replaced gave. The replaced code is kept here, verbatim in what it computes, as the reference."""
import numpy as np
import pytest
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

# -- references: the hand-written code as it was -------------------------------------------------

OLD_LGBM = dict(learning_rate=0.05, num_leaves=15, min_data_in_leaf=5, feature_fraction=0.5, bagging_fraction=0.8,
                bagging_freq=1, lambda_l2=1.0, deterministic=True, force_col_wise=True, verbose=-1)


def old_booster(x, y, w, n_classes, seed, n_jobs=1):
    import lightgbm as lgb

    params = dict(OLD_LGBM, objective="multiclass", num_class=n_classes, seed=seed, num_threads=n_jobs)
    ds = lgb.Dataset(np.asarray(x, np.float32), label=np.asarray(y), weight=w, free_raw_data=True)
    return lgb.train(params, ds, num_boost_round=200)


def old_predict(booster, x, n_classes):
    return np.asarray(booster.predict(np.asarray(x, np.float32)), np.float64).reshape(len(x), n_classes)


def old_crossfit(x, y, w, groups, n_classes, seed, inner_folds=3):
    import warnings

    k = max(2, min(inner_folds, int(np.bincount(y).max())))
    if groups is not None and len(set(groups)) >= k:
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y, groups)
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y)
    out = np.zeros((len(x), n_classes))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splits)
    for tr, va in splits:
        b = old_booster(x[tr], y[tr], None if w is None else w[tr], n_classes, seed)
        out[va] = old_predict(b, x[va], n_classes)
    return out


def old_make_folds(y, groups, k, seed):
    idx = np.zeros(len(y))
    if groups is not None:
        return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(idx, y, groups))
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(idx, y))


def old_tuning_folds(y, n_splits, seed):
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if len(counts) > 1 and counts.min() >= n_splits:
        return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    return list(KFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y))))


def old_iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def old_track_largest(detections, iou_threshold=0.3):
    chosen, prev, switches = [], None, 0
    for dets in detections:
        if not dets:
            chosen.append(None)
            continue
        pick = None
        if prev is not None:
            overlaps = [old_iou(prev, d.box) for d in dets]
            best = int(np.argmax(overlaps))
            if overlaps[best] >= iou_threshold:
                pick = best
            else:
                switches += 1
        if pick is None:
            pick = int(np.argmax([d.area for d in dets]))
        chosen.append(pick)
        prev = dets[pick].box
    return chosen, switches


def same_splits(a, b):
    return len(a) == len(b) and all(np.array_equal(ta, tb) and np.array_equal(va, vb)
                                    for (ta, va), (tb, vb) in zip(a, b))


# -- data -----------------------------------------------------------------------------------------

def vectors(n, n_classes, seed, dim=6):
    """Learnable vectors: class means apart, plus noise; labels cycle so every class is common."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    x = rng.normal(size=(n, dim)) + 1.5 * np.eye(n_classes, dim)[y]
    return x.astype(np.float32), y


# -- 1. LightGBM: LGBMClassifier + cross_val_predict ----------------------------------------------

@pytest.mark.parametrize("n_classes", [2, 4])
def test_lgbm_expert_predicts_what_the_hand_made_booster_predicted(n_classes):
    from models.lgbm import LGBMExpert

    x, y = vectors(80, n_classes, 1)
    w = np.random.default_rng(2).uniform(0.3, 1.0, len(y))
    for seed in (0, 5):
        got = LGBMExpert(n_classes, seed=seed).fit(x[:60], y[:60], w[:60]).predict_proba(x[60:])
        want = old_predict(old_booster(x[:60], y[:60], w[:60], n_classes, seed), x[60:], n_classes)
        assert got.shape == (20, n_classes)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("grouped", [False, True])
def test_crossfit_is_what_the_hand_made_inner_folds_gave(grouped):
    from models.lgbm import crossfit_proba

    x, y = vectors(45, 3, 3)
    groups = np.repeat(np.arange(9), 5) if grouped else None
    w = np.random.default_rng(4).uniform(0.5, 1.0, len(y))
    for seed in (0, 7):
        got = crossfit_proba(x, y, w, groups, 3, seed)
        np.testing.assert_array_equal(got, old_crossfit(x, y, w, groups, 3, seed))
    # too few groups for the inner folds: ungrouped, as before
    few = np.arange(len(y)) % 2
    np.testing.assert_array_equal(crossfit_proba(x, y, None, few, 3, 1), old_crossfit(x, y, None, few, 3, 1))


def test_crossfit_with_a_class_missing_from_training_folds():
    """A rare class (one row) is absent from the training rows of the inner fold that predicts that
    row: LightGBM's estimator trains there on the classes it sees (the hand-made booster trained a
    softmax with a dead class), and the columns are laid on the run's classes by ``classes_``. The
    other folds give exactly what they gave."""
    from models.lgbm import crossfit_proba, log_proba

    x, y = vectors(40, 3, 5)
    y[0] = 3
    got = crossfit_proba(x, y, None, None, 4, 0)
    want = old_crossfit(x, y, None, None, 4, 0)
    with pytest.warns(UserWarning, match="least populated"):   # the inner folds: k = 3, as crossfit picks
        fold0 = next(va for _, va in StratifiedKFold(3, shuffle=True, random_state=0).split(x, y) if 0 in va)
    others = np.setdiff1d(np.arange(40), fold0)
    np.testing.assert_array_equal(got[others], want[others])
    assert got.shape == (40, 4) and (got[fold0, 3] == 0).all()
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
    # the unseen class's log-probability is the floor, as the dead class's ~1e-15 gave it
    np.testing.assert_array_equal(log_proba(got)[fold0, 3], log_proba(want)[fold0, 3])
    assert (got[fold0].argmax(axis=1) == want[fold0].argmax(axis=1)).mean() > 0.8


def test_crossfit_with_a_class_of_the_run_never_seen():
    from models.lgbm import LOG_FLOOR, crossfit_proba, log_proba

    x, y = vectors(40, 3, 5)
    got = crossfit_proba(x, y, None, None, 5, 0)        # classes 3 and 4 have no row at all
    assert got.shape == (40, 5) and (got[:, 3:] == 0).all()
    np.testing.assert_array_equal(log_proba(got)[:, 3:], np.full((40, 2), LOG_FLOOR, np.float32))
    np.testing.assert_array_equal(got[:, :3], crossfit_proba(x, y, None, None, 3, 0))


def test_crossfit_survives_a_training_fold_with_a_single_class():
    from models.lgbm import crossfit_proba

    x, y = vectors(12, 1, 6)
    y = np.zeros(12, np.int64)
    y[3] = 1                                     # the inner fold holding row 3 trains on class 0 only
    got = crossfit_proba(x, y, None, None, 3, 0)
    assert got.shape == (12, 3) and np.isfinite(got).all()
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
    assert got[3, 0] == pytest.approx(1.0) and (got[:, 2] == 0).all()


def test_lgbm_expert_is_deterministic_and_survives_a_save():
    import lightgbm as lgb

    from models.lgbm import LGBMExpert

    x, y = vectors(60, 3, 8)
    a = LGBMExpert(3, seed=3).fit(x, y)
    b = LGBMExpert(3, seed=3).fit(x, y)
    assert a.to_string() == b.to_string()
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    again = LGBMExpert.from_string(a.to_string(), 3)
    np.testing.assert_array_equal(again.predict_proba(x), a.predict_proba(x))
    # a booster string as RUN_DIRs saved before the change (lgb.train's model_to_string) still loads
    old = old_booster(x, y, None, 3, 3)
    loaded = LGBMExpert.from_string(old.model_to_string(), 3)
    np.testing.assert_array_equal(loaded.predict_proba(x), old_predict(old, x, 3))
    assert isinstance(loaded.booster_, lgb.Booster) and loaded.n_classes == 3


def test_lgbm_expert_fitted_without_a_class_keeps_every_column_through_a_save():
    from models.lgbm import LGBMExpert

    x, y = vectors(60, 3, 9)
    y = np.where(y == 1, 3, y)                   # classes 0, 2, 3 of 5
    e = LGBMExpert(5, seed=0).fit(x, y)
    p = e.predict_proba(x)
    assert p.shape == (60, 5) and (p[:, [1, 4]] == 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    assert (p.argmax(axis=1) == y).mean() > 0.9
    again = LGBMExpert.from_string(e.to_string(), 5)
    np.testing.assert_array_equal(again.predict_proba(x), p)
    np.testing.assert_array_equal(again.classes_, [0, 2, 3])


# -- 2. one fold factory --------------------------------------------------------------------------

def test_make_folds_gives_the_splits_it_gave():
    from models.train import make_folds

    for seed in (0, 1, 42):
        for n, c in ((30, 3), (57, 4)):
            _, y = vectors(n, c, seed)
            assert same_splits(make_folds(y, None, 5, seed), old_make_folds(y, None, 5, seed))
            groups = np.arange(n) % 7
            assert same_splits(make_folds(y, groups, 5, seed), old_make_folds(y, groups, 5, seed))
            named = np.array([f"spk{g}" for g in (np.arange(n) * 3) % 11], dtype=object)
            assert same_splits(make_folds(y, named, 4, seed), old_make_folds(y, named, 4, seed))


def test_make_folds_refuses_fewer_groups_than_folds():
    from models.data import InputError
    from models.train import make_folds

    with pytest.raises(InputError, match="only 3 distinct groups for --folds 5"):
        make_folds(np.arange(30) % 3, np.arange(30) % 3, 5, 0)


def test_tuning_folds_give_the_splits_they_gave():
    from ensemble.pipeline import tuning_folds

    rare = np.array([0] * 20 + [1] * 3 + [2] * 10)   # a class below n_splits: plain KFold, as before
    single = np.zeros(25, np.int64)                   # one class: plain KFold
    for seed in (0, 3, 11):
        _, y = vectors(50, 4, seed)
        for labels in (y, rare, single):
            assert same_splits(list(tuning_folds(labels, 5, seed)), old_tuning_folds(labels, 5, seed))


def test_the_fold_factory_is_the_one_all_three_use():
    from models import folds

    _, y = vectors(40, 3, 0)
    g = np.arange(40) % 8
    assert type(folds.make_splitter(4, 0, y=y, groups=g)) is StratifiedGroupKFold
    assert type(folds.make_splitter(4, 0, y=y)) is StratifiedKFold
    assert type(folds.make_splitter(4, 0)) is KFold
    assert same_splits(folds.split(4, 2, y=y, groups=g),
                       list(StratifiedGroupKFold(4, shuffle=True, random_state=2).split(np.zeros(40), y, g)))
    assert same_splits(folds.split(4, 2, n_rows=40), list(KFold(4, shuffle=True, random_state=2).split(np.zeros(40))))
    with pytest.raises(ValueError, match="groups need y"):
        folds.make_splitter(4, 0, groups=g)


# -- 3. sklearn.base.clone for the ensemble's estimators -------------------------------------------

CLASSES = ["neutral", "angry", "happy", "sad", "worried"]
RULES = [{"rule": "class_priority", "when_top": ["worried"], "prefer": ["sad"], "margin": "auto"},
         {"rule": "prior_correction", "target": "labeled"},
         {"rule": "annotator_override", "margin": "auto", "confidence": "auto"}]


def tuning_split(n=160, seed=0):
    """Members of three skills over ``n`` labeled ids (one member absent on a quarter of them), and
    an annotator right 70% of the time."""
    from ensemble.members import Split
    from extract.annotator import Annotator, Answer

    rng = np.random.default_rng(seed)
    C = len(CLASSES)
    y = rng.integers(0, C, n)
    logits = np.stack([skill * np.eye(C)[y] + rng.normal(size=(n, C)) for skill in (0.5, 1.5, 2.5)])
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    present = np.ones(probs.shape[:2], bool)
    present[0, rng.random(n) < 0.25] = False
    probs[~present] = np.nan
    ids = [f"id{i:04d}" for i in range(n)]
    ann = Annotator("mem", {i: Answer(CLASSES[c] if rng.random() < 0.7 else "sad", float(rng.uniform(0.5, 1)))
                            for i, c in zip(ids, y)})
    return Split(ids, probs, present), y, ann


def fitted_params(pipe):
    return [(r.fitted_params_, dict(r.tuned_), list(r.notes_)) for r in pipe.rules_.rules]


def test_clone_gives_an_unfitted_pipeline_with_its_own_rules():
    from sklearn.base import clone

    from ensemble.pipeline import EnsemblePipeline
    from ensemble.reranking import parse_rules

    split, y, ann = tuning_split()
    pipe = EnsemblePipeline(CLASSES, "reliance", "auto", parse_rules(RULES, CLASSES), ann).fit(split, y)
    copy = clone(pipe)
    assert copy.get_params().keys() == pipe.get_params().keys() and copy.vote == "reliance"
    assert not hasattr(copy, "voter_") and not hasattr(copy, "fit_result_") and not hasattr(copy, "rules_")
    assert copy.rules is not pipe.rules
    assert all(a is not b for a, b in zip(copy.rules.rules, pipe.rules.rules))
    before = fitted_params(pipe)
    half = np.arange(0, len(y), 2)
    copy.fit(split.take(half), y[half])                       # re-tuned on other rows ...
    fresh = EnsemblePipeline(CLASSES, "reliance", "auto", parse_rules(RULES, CLASSES), ann).fit(split.take(half),
                                                                                            y[half])
    assert fitted_params(copy) == fitted_params(fresh)        # ... exactly as a pipeline built anew
    assert fitted_params(pipe) == before                      # and the original did not move
    np.testing.assert_array_equal(pipe.run(split).final.labels, pipe.fit_result_.final.labels)
    assert fitted_params(copy) != before                      # (the rows differ enough to tune differently)


def test_cross_fit_equals_pipelines_built_anew_per_fold():
    from ensemble.pipeline import EnsemblePipeline, cross_fit, tuning_folds
    from ensemble.reranking import parse_rules

    split, y, ann = tuning_split(seed=1)
    pipe = EnsemblePipeline(CLASSES, "reliance", "auto", parse_rules(RULES, CLASSES), ann)
    pipe.fit(split, y)                                        # a fitted pipeline: its clones must not carry that
    names, labels, changed = cross_fit(pipe, split, y, n_splits=5, seed=0)
    want_labels = [np.zeros(len(y), np.int64) for _ in names]
    want_changed = [np.zeros(len(y), bool) for _ in names]
    for train, held in tuning_folds(y, 5, 0):
        p = EnsemblePipeline(CLASSES, "reliance", "auto", parse_rules(RULES, CLASSES), ann)
        res = p.fit(split.take(train), y[train]).run(split.take(held))
        for k, st in enumerate(res.stages):
            want_labels[k][held], want_changed[k][held] = st.labels, st.changed
    assert names == ["vote:reliance", "1:class_priority", "2:prior_correction", "3:annotator_override"]
    for a, b in zip(labels + changed, want_labels + want_changed):
        np.testing.assert_array_equal(a, b)
    assert any(c.any() for c in changed[1:])


def test_voter_follows_sklearn_conventions():
    from sklearn.base import clone

    from ensemble.voting import Voter

    split, y, _ = tuning_split(seed=2)
    v = Voter("reliance", "2").fit(split.probs, split.present, y, len(CLASSES))
    assert v.power == "2" and v.power_ == 2.0                 # the parameter as given, the fitted value apart
    c = clone(v)
    assert c.get_params() == v.get_params() and not hasattr(c, "weights_")
    np.testing.assert_array_equal(c.fit(split.probs, split.present, y, 5).weights_, v.weights_)
    useless = np.full_like(split.probs, 0.2)
    for _ in range(2):                                        # notes belong to one fit, not to every fit so far
        v.fit(useless, split.present, y, len(CLASSES))
        assert len(v.notes) == 1 and "beats chance" in v.notes_[0]
    with pytest.raises(ValueError, match="power"):
        Voter("reliance", "strong")



# -- 4. box IoU by pycocotools (torchvision.ops.box_iou before; its import costs seconds) ----------

def random_boxes(rng, n):
    xy = rng.uniform(0, 100, size=(n, 2))
    wh = rng.choice([0.0, 1.0, 5.0, 30.0, 80.0], size=(n, 2)) * rng.uniform(0.5, 1.0, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_box_overlaps_equal_the_hand_written_iou():
    from extract import faces

    rng = np.random.default_rng(0)
    for _ in range(200):
        prev = random_boxes(rng, 1)[0]
        boxes = random_boxes(rng, int(rng.integers(1, 6)))
        boxes[0] = prev if rng.random() < 0.2 else boxes[0]          # identical boxes too
        got = faces.box_overlaps(prev, boxes)
        want = [old_iou(prev, b) for b in boxes]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    zero = np.array([5, 5, 5, 5], np.float32)                         # zero area: 0, not NaN
    assert faces.box_overlaps(zero, zero[None]).tolist() == [0.0]
    assert faces.box_overlaps(zero, np.zeros((0, 4), np.float32)).shape == (0,)  # no boxes: none


def test_tracking_decisions_equal_the_hand_written_tracker():
    from extract import faces

    rng = np.random.default_rng(1)
    for _ in range(50):
        frames = []
        for _t in range(12):
            k = int(rng.integers(0, 4))
            frames.append([faces.Detection(box=b) for b in random_boxes(rng, k)])
        for thr in (0.0, 0.3, 0.7):
            assert faces.track_largest(frames, thr) == old_track_largest(frames, thr)


def test_faces_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, extract.faces; print('torch' in sys.modules, 'torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


# -- 5. offline mode: the hub's own reading of HF_HUB_OFFLINE --------------------------------------

@pytest.mark.parametrize("hub, transformers, offline", [
    (None, None, False), ("0", None, False), ("none", None, False), ("false", None, False), ("", None, False),
    ("1", None, True), ("ON", None, True), ("yes", None, True), ("true", None, True),
    (None, "1", True), ("0", "1", False),   # HF_HUB_OFFLINE wins when set, as in huggingface_hub
])
def test_hub_offline_reads_the_environment_as_the_hub_does(monkeypatch, hub, transformers, offline):
    import huggingface_hub.constants as hub_constants

    from extract.extractors.hf_common import hub_offline

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)       # as read at import: online
    monkeypatch.setattr("transformers.utils.hub._is_offline_mode", False, raising=False)   # transformers 4 keeps a copy
    for name, value in (("HF_HUB_OFFLINE", hub), ("TRANSFORMERS_OFFLINE", transformers)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert hub_offline() is offline


def test_hub_offline_follows_the_library_when_it_started_offline(monkeypatch):
    import huggingface_hub.constants as hub_constants

    from extract.extractors.hf_common import hub_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)        # the hub refuses the network anyway
    monkeypatch.setattr("transformers.utils.hub._is_offline_mode", True, raising=False)
    assert hub_offline() is True
