"""The training loop's API for later stages: train-only rows, per-sample weights, folds."""
import numpy as np

import models.train as train
from extract.cache import FeatureCache
from models.data import load_features
from models.synth import make_synthetic_cache


def test_train_only_rows_join_every_training_fold_and_never_validation(tmp_path, monkeypatch):
    syn = make_synthetic_cache(tmp_path / "cache", n_labeled=30, n_unlabeled=12)
    fc = FeatureCache(syn.cache)
    ids = sorted(syn.truth)
    feats = load_features(fc, [syn.keys["vec"], syn.keys["lay"]], ids)
    classes = sorted(set(syn.truth.values()))
    pos = {c: i for i, c in enumerate(ids)}
    lab = sorted(syn.labels)
    lab_rows = np.array([pos[i] for i in lab])
    y = np.array([classes.index(syn.labels[i]) for i in lab])
    extra = np.array([pos[i] for i in sorted(syn.unlabeled)[:8]])
    extra_y = np.array([classes.index(syn.truth[ids[r]]) for r in extra])
    test_rows = np.array([pos[i] for i in sorted(syn.unlabeled)])
    problem = train.Problem(ids, feats, classes, lab_rows, y, test_rows,
                            train_only=train.TrainOnly(extra, extra_y, np.full(len(extra), 0.25)))
    seen = []
    real = train.train_model

    def spy(model, tensors, train_rows, y_train, w_train, val_rows, y_val, cfg, seed, progress=None):
        seen.append((set(train_rows.tolist()), set(val_rows.tolist()), dict(zip(train_rows.tolist(), w_train))))
        return real(model, tensors, train_rows, y_train, w_train, val_rows, y_val, cfg, seed, progress)

    monkeypatch.setattr(train, "train_model", spy)
    cfg = train.TrainConfig(folds=3, epochs=2, hidden=8, n_heads=2, batch_size=8, device="cpu")
    res = train.cross_validate(problem, cfg, progress=False)
    assert len(seen) == 3
    vals = set()
    for tr, va, w in seen:
        assert set(extra.tolist()) <= tr and not (set(extra.tolist()) & va)
        assert all(w[r] == 0.25 for r in extra)              # per-sample weights reach the loop
        vals |= va
    assert vals == set(lab_rows.tolist())                     # each labeled id validated once
    assert res.oof["routed"].shape == (len(lab), len(classes))
    assert np.isfinite(res.oof["routed"]).all() and np.isfinite(res.test["routed"]).all()


def test_fold_independent_normalisation_runs_once_and_its_arrays_stay_untouched(tmp_path, monkeypatch):
    syn = make_synthetic_cache(tmp_path / "cache", n_labeled=30, n_unlabeled=6)
    ids = sorted(syn.truth)
    feats = load_features(FeatureCache(syn.cache), [syn.keys["vec"], syn.keys["ser"]], ids)
    classes = sorted(set(syn.truth.values()))
    pos = {c: i for i, c in enumerate(ids)}
    lab = sorted(syn.labels)
    problem = train.Problem(ids, feats, classes, np.array([pos[i] for i in lab]),
                            np.array([classes.index(syn.labels[i]) for i in lab]),
                            np.array([pos[i] for i in sorted(syn.unlabeled)]))
    calls = []
    real = train.normalize_features

    def spy(features, normalizers, row_groups=None):
        xs = real(features, normalizers, row_groups)
        calls.append((xs, [x.copy() for x in xs]))
        return xs

    monkeypatch.setattr(train, "normalize_features", spy)
    for mode, expected in (("pool", 1), ("fold", 3 * 2)):
        calls.clear()
        cfg = train.TrainConfig(folds=3, seeds=(0, 1), epochs=2, hidden=8, n_heads=2, batch_size=8, device="cpu",
                                normalize=mode)
        train.cross_validate(problem, cfg, progress=False)
        assert len(calls) == expected, mode
        for xs, before in calls:   # training reads the normalised inputs, never writes into them
            assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(xs, before))


def test_predict_normalises_once_per_run_when_every_model_file_holds_the_same_statistics(tmp_path, monkeypatch):
    syn = make_synthetic_cache(tmp_path / "cache", n_labeled=30, n_unlabeled=6)
    ids = sorted(syn.truth)
    feats = load_features(FeatureCache(syn.cache), [syn.keys["vec"], syn.keys["lay"]], ids)
    classes = sorted(set(syn.truth.values()))
    pos = {c: i for i, c in enumerate(ids)}
    lab = sorted(syn.labels)
    row_groups = np.array([syn.speaker[i] for i in ids], dtype=object)
    problem = train.Problem(ids, feats, classes, np.array([pos[i] for i in lab]),
                            np.array([classes.index(syn.labels[i]) for i in lab]), np.array([], dtype=np.int64),
                            row_groups=row_groups)
    calls = []
    real = train.saved_inputs
    monkeypatch.setattr(train, "saved_inputs", lambda *a: calls.append(1) or real(*a))
    for mode, expected in (("group", 1), ("fold", 3)):
        saved = []
        cfg = train.TrainConfig(folds=3, epochs=2, hidden=8, n_heads=2, batch_size=8, device="cpu", normalize=mode)
        train.cross_validate(problem, cfg, on_fold=lambda f, s, m, c: saved.append(m), progress=False)
        calls.clear()
        shared = train.SharedInputs(feats, row_groups)
        got = [train.predict_saved(m, feats, row_groups, xs_np=shared(m)) for m in saved]
        assert len(calls) == expected, mode
        for m, (probs, present) in zip(saved, got):        # same probabilities as normalising per file
            want, want_present = train.predict_saved(m, feats, row_groups)
            assert all(np.array_equal(probs[k], want[k]) and np.array_equal(present[k], want_present[k]) for k in want)
    # a file whose figures differ is normalised with its own statistics
    other = {k: {"base": {s: v + 1 for s, v in n["base"].items()}, "groups": n["groups"]}
             for k, n in saved[0]["normalizers"].items()}
    assert train.same_statistics(saved[0]["normalizers"], saved[0]["normalizers"])
    assert not train.same_statistics(saved[0]["normalizers"], other)
    shared = train.SharedInputs(feats, row_groups)
    pool = dict(saved[0], normalize="pool")
    a = shared(pool)
    b = shared(dict(pool, normalizers=other))
    assert not np.array_equal(a[0], b[0])


def test_lgbm_inputs_cross_fit_the_training_rows_and_apply_the_booster_elsewhere(tmp_path):
    from models.lgbm import crossfit_proba, log_proba
    from models.normalize import fit_pool

    syn = make_synthetic_cache(tmp_path / "cache", n_labeled=40, n_unlabeled=10)
    ids = sorted(syn.truth)
    feats = load_features(FeatureCache(syn.cache), [syn.keys["vec"], syn.keys["lay"]], ids)
    classes = sorted(set(syn.truth.values()))
    y_all = np.array([classes.index(syn.truth[i]) for i in ids])
    specs = train.expert_specs(feats, "lgbm", len(classes))
    assert [s.head for s in specs] == ["lgbm", "mlp"]
    xs = train.normalize_features(feats, {fd.key: fit_pool(fd) for fd in feats})
    train_rows = np.arange(30)
    boosters, replaced = train.prob_inputs(specs, feats, xs, train_rows, y_all[train_rows], np.ones(30), None,
                                           len(classes), 7, 1)
    assert set(replaced) == {0} and set(boosters) == {syn.keys["vec"]}
    applied = train.prob_apply(specs, feats, xs, boosters, len(classes))[0]
    fd = feats[0]
    tr = train_rows[fd.present[train_rows]]
    rest = np.setdiff1d(np.arange(len(ids)), tr)
    assert np.array_equal(replaced[0][rest], applied[rest])            # held-out, unlabeled, absent (zeros)
    assert not fd.present.all() and not replaced[0][~fd.present].any()
    want = log_proba(crossfit_proba(xs[0][tr, 0], y_all[tr], np.ones(len(tr)), None, len(classes), 7))
    assert np.array_equal(replaced[0][tr, 0], want)                     # training rows: cross-fitted
    assert not np.array_equal(replaced[0][tr], applied[tr])
