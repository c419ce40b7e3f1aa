"""Cache -> tokens, labels reading, and the three normalisation modes."""
import numpy as np
import pytest

from extract.cache import Feature, FeatureCache, put
from models.data import InputError, load_features, read_labels, resolve_features
from models.normalize import MIN_GROUP, fit_fold, fit_group, fit_pool


@pytest.fixture
def cache(tmp_path):
    root = tmp_path / "cache"
    put(root, "vec", "vector", {"a": Feature(data=np.array([1.0, 2.0])), "b": Feature(data=np.array([3.0, 4.0])),
                                "c": Feature(data=np.array([5.0, np.nan]))}, failures={"d": "decode error"})
    put(root, "lay", "layers", {i: Feature(data=np.full((3, 2), k, np.float32)) for k, i in enumerate("abcd")})
    put(root, "ser", "series", {
        "a": Feature(data=np.ones((4, 2)), timestamps=np.arange(4.0), mask=np.array([1, 1, 0, 1], bool)),
        "b": Feature(data=np.ones((2, 2)), timestamps=np.arange(2.0), mask=np.array([0, 0], bool)),
        "d": Feature(data=np.ones((3, 2)), timestamps=np.arange(3.0))})
    put(root, "txt", "record", {"a": Feature(record={"text": "hi"})})
    return FeatureCache(root)


def test_tokens_per_kind_and_presence(cache):
    keys = resolve_features(cache, ["vec", "lay", "ser"])
    vec, lay, ser = load_features(cache, keys, ["a", "b", "c", "d", "zzz"])
    assert vec.x.shape == (5, 1, 2) and lay.x.shape == (5, 3, 2) and ser.x.shape == (5, 4, 2)
    # c holds a NaN inside its vector: treated as missing; d failed; zzz never extracted
    assert vec.present.tolist() == [True, True, False, False, False]
    assert vec.meta["n_nonfinite_dropped"] == 1
    assert lay.present.tolist() == [True, True, True, True, False]
    # b's series has no valid frame -> missing modality; masked frames are excluded
    assert ser.present.tolist() == [True, False, False, True, False]
    assert ser.tok_mask[0].tolist() == [True, True, False, True]
    for fd in (vec, lay, ser):
        assert np.isfinite(fd.x).all()            # NaN rows replaced, after the mask was taken
        assert (fd.x[~fd.present] == 0).all()


def test_unknown_and_record_features_are_refused(cache):
    with pytest.raises(InputError, match="unknown feature 'hubert'"):
        resolve_features(cache, ["hubert"])
    with pytest.raises(InputError, match="record"):
        resolve_features(cache, ["txt"])


def test_labels_classes_and_skips(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("name,discrete,speaker\na,happy,s1\nb,sad,s2\nc,fear,s1\nd,happy,s2\nd,sad,s2\n")
    lab, classes = read_labels(p, None, "speaker")
    assert classes == ["fear", "happy", "sad"]          # the labels' own set, sorted
    assert lab.ids == ["a", "b", "c"] and "conflicting" in lab.messages[0]
    lab, classes = read_labels(p, ["happy", "sad"], None)
    assert lab.ids == ["a", "b"] and classes == ["happy", "sad"]
    assert any("1 rows have a label outside --classes happy,sad (fear x1; first ids: c)" in m for m in lab.messages)
    with pytest.raises(InputError, match="conflicting labels"):
        read_labels(p, None, None, strict=True)
    p.write_text("name,discrete\na,happy\nb,sad\nc,fear\n")
    with pytest.raises(InputError, match="outside --classes"):
        read_labels(p, ["happy", "sad"], None, strict=True)
    with pytest.raises(InputError, match="--groups 'spk' is not a column"):
        read_labels(p, None, "spk")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\na,happy\n")
    with pytest.raises(InputError, match="no 'name' column"):
        read_labels(bad)


def _vector_fd(values, present=None):
    from models.data import FeatureData

    x = np.asarray(values, np.float32)[:, None, :]
    present = np.ones(len(x), bool) if present is None else np.asarray(present)
    return FeatureData("k", "vector", x, np.ones(x.shape[:2], bool), present)


def test_fold_statistics_come_from_training_rows_only():
    fd = _vector_fd([[0.0], [2.0], [1000.0], [-1000.0]])
    norm = fit_fold(fd, np.array([0, 1]))
    assert norm.base.mean.ravel().tolist() == [1.0] and norm.base.std.ravel().tolist() == [1.0]
    out = norm.transform(fd)
    assert out[:2, 0, 0].tolist() == [-1.0, 1.0] and out[2, 0, 0] == 999.0


def test_pool_uses_every_clip_and_absent_rows_stay_zero():
    fd = _vector_fd([[0.0], [4.0], [0.0]], present=[True, True, False])
    norm = fit_pool(fd)
    assert norm.base.mean.ravel().tolist() == [2.0]
    assert norm.transform(fd)[2, 0, 0] == 0.0


def test_group_statistics_per_speaker_with_pool_fallback():
    n = MIN_GROUP
    vals = [[10.0 + i] for i in range(n)] + [[-10.0 - i] for i in range(n)] + [[0.0]]
    groups = np.array(["s1"] * n + ["s2"] * n + ["lonely"], dtype=object)
    fd = _vector_fd(vals)
    norm = fit_group(fd, row_groups=groups)
    assert sorted(norm.groups) == ["s1", "s2"]          # 'lonely' has too few clips: pool statistics
    out = norm.transform(fd, groups)[:, 0, 0]
    assert abs(out[:n].mean()) < 1e-5 and abs(out[n:2 * n].mean()) < 1e-5   # speaker offset removed
    pool = fit_pool(fd)
    assert out[-1] == pytest.approx(float((0.0 - pool.base.mean.ravel()[0]) / pool.base.std.ravel()[0]))


def test_layer_statistics_are_per_layer():
    from models.data import FeatureData

    x = np.stack([np.array([[1.0], [100.0]]) * (i + 1) for i in range(4)]).astype(np.float32)   # (4, 2, 1)
    fd = FeatureData("k", "layers", x, np.ones((4, 2), bool), np.ones(4, bool))
    st = fit_pool(fd).base
    assert st.mean.shape == (2, 1) and st.mean[1, 0] == pytest.approx(100 * st.mean[0, 0])


def test_extend_groups_adds_unseen_groups_and_keeps_fitted_ones():
    from models.normalize import extend_groups

    n = MIN_GROUP
    fit_vals = [[10.0 + i] for i in range(n)] + [[0.0]]
    fit_groups = np.array(["s1"] * n + [""], dtype=object)
    norm = fit_group(_vector_fd(fit_vals), row_groups=fit_groups)
    assert sorted(norm.groups) == ["s1"]
    # at predict time: s1 again (other figures: its fitted statistics stay), a new s3, a too-small s4
    vals = [[-5.0 - i] for i in range(n)] + [[50.0 + i] for i in range(n)] + [[1.0]]
    groups = np.array(["s1"] * n + ["s3"] * n + ["s4"], dtype=object)
    fd = _vector_fd(vals)
    ext = extend_groups(norm, fd, groups)
    assert list(ext.groups) == ["s1", "s3"] and ext.base is norm.base
    assert ext.groups["s1"] is norm.groups["s1"]
    assert ext.groups["s3"].mean.ravel().tolist() == [pytest.approx(52.0)]
    assert extend_groups(norm, fd, None) is norm
    absent = _vector_fd(vals, present=[True] * n + [False] * n + [True])
    assert list(extend_groups(norm, absent, groups).groups) == ["s1"]   # s3 has no present clip
