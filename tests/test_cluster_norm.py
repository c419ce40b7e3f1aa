"""--normalize cluster: speakers found without speaker labels, audio experts z-scored per cluster."""
import json

import numpy as np
import pytest

from extract.cache import Feature, put
from models import fit, open_run, predict
from models.clusters import find_clusters
from models.synth import make_synthetic_cache

QUICK = dict(folds=3, epochs=10, patience=4, hidden=32, batch_size=32, threads=1, progress=False)


def _ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


def test_find_clusters_recovers_speakers_and_flags_outliers():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 32))
    spk = np.repeat(np.arange(5), 20)
    emb = centres[spk] + 0.15 * rng.normal(size=(100, 32))
    c = find_clusters(emb, "spk")
    assert len(c.sizes) == 5 and sorted(c.sizes) == [20] * 5 and "silhouette" in c.chosen_by
    groups = c.assign(emb)
    assert _ari(spk, groups) == pytest.approx(1.0) and (groups != "").all()
    far = c.assign(np.vstack([rng.normal(size=(1, 32)) * 10, np.full((1, 32), np.nan)]))
    assert list(far) == ["", ""]  # far from every centre, and no embedding: pool statistics
    again = find_clusters(emb, "spk")
    assert np.array_equal(again.centres, c.centres)  # deterministic
    assert find_clusters(emb, "spk", k=3).sizes and len(find_clusters(emb, "spk", k=3).sizes) == 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    syn = make_synthetic_cache(root / "cache", n_labeled=90, n_unlabeled=30, n_speakers=5, speaker_shift=2.5, seed=3)
    rng = np.random.default_rng(1)
    centres = {s: rng.normal(size=48) for s in sorted(set(syn.speaker.values()))}
    emb = {cid: Feature(data=(centres[s] + 0.2 * rng.normal(size=48)).astype(np.float32))
           for cid, s in syn.speaker.items()}
    put(root / "cache", "speaker", "vector", emb, meta={"model": "synthetic speaker embedding"})
    # the vector expert is an audio feature (per-speaker offset: the speaker shift)
    meta = root / "cache" / syn.keys["vec"] / "meta.json"
    m = json.loads(meta.read_text())
    m["modality"] = "audio"
    meta.write_text(json.dumps(m))
    return syn, root


def test_cluster_normalisation_finds_the_speakers_and_predict_reuses_the_clusters(world):
    syn, root = world
    res = fit(syn.cache, syn.labels_csv, ["vec", "ser"], root / "run", normalize="cluster", **QUICK)
    run = open_run(res.run_dir)
    cl = run.clusters()
    assert cl is not None and len(cl.sizes) == 5 and sum(cl.sizes) == res.n_labeled + res.n_test
    info = json.loads((res.run_dir / "clusters.json").read_text())
    assert info["k"] == 5 and "silhouette" in info["chosen_by"] and set(info["silhouette_by_k"]) >= {"2", "5"}
    assert run.config["clusters"]["k"] == 5 and run.config["normalize"] == "cluster"
    ids = sorted(syn.speaker)
    from extract.cache import FeatureCache

    emb = FeatureCache(syn.cache).read("speaker", ids)
    groups = cl.assign(np.asarray(emb.data), emb.present)
    assert _ari([syn.speaker[i] for i in ids], groups) > 0.95
    test_ids, want = run.probs("test", "routed")
    pred = predict(res.run_dir, syn.cache, ids=test_ids, progress=False)
    order = [pred.ids.index(i) for i in test_ids]
    np.testing.assert_allclose(pred.probs["routed"][order], want, atol=1e-6)


def test_cluster_mode_without_an_embedding_is_a_clear_error(world, tmp_path):
    from models.data import InputError

    syn, _ = world
    with pytest.raises(InputError, match="needs a speaker-embedding feature"):
        fit(syn.cache, syn.labels_csv, ["vec"], tmp_path / "r", normalize="cluster", cluster_feature="nope", **QUICK)
    with pytest.raises(InputError, match="a series feature; give a vector"):
        fit(syn.cache, syn.labels_csv, ["vec"], tmp_path / "r", normalize="cluster", cluster_feature="ser", **QUICK)
