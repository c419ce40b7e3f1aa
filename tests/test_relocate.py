"""A bundle whose local model is elsewhere now (another machine, a moved folder): the missing or
changed model is named, and ``--relocate OLD=NEW`` rebuilds exactly the recorded feature."""
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from tiny_models import save_tiny_hubert, voice
from ensemble.bundle import BundleError, feature_spec
from ensemble.recogniser import build_extractors
from ensemble.relocate import parse_relocations
from extract import media
from extract.registry import build, load_all
from extract.synth import write_media

load_all()


def test_a_moved_local_model_is_named_and_relocate_rebuilds_the_same_feature(tmp_path):
    d = save_tiny_hubert(tmp_path / "models" / "hubert")
    clip_path = tmp_path / "clip.wav"
    write_media(clip_path, audio=voice(1.5, seed=3), rate=16000)
    ex = build(f"hf-audio:model={d}").ensure_loaded()
    spec = feature_spec(ex.key, ex.provenance())  # what export records for the feature
    clip = media.decode(clip_path, "clip", ("audio",), ex.decode)
    want = ex.extract(clip).data
    ex.close()

    moved = tmp_path / "elsewhere" / "hubert"
    moved.parent.mkdir()
    shutil.move(d, moved)
    with pytest.raises(BundleError) as err:
        build_extractors([spec])
    msg = str(err.value)
    assert f"its model {d} is not here" in msg and spec["model"]["checksum"] in msg
    assert f"--relocate {d}=NEW" in msg

    (got,), _ = build_extractors([spec], relocate={str(d): str(moved)})
    assert got.key == spec["key"] and got.config.model == str(moved)
    prov = got.provenance()
    assert prov["key"] == spec["key"] and prov["model"]["path"] == str(moved)  # where it was loaded from
    assert np.array_equal(got.ensure_loaded().extract(media.decode(clip_path, "clip", ("audio",), got.decode)).data,
                          want)
    got.close()
    # a trailing slash or ~ in OLD names the same folder
    (again,), _ = build_extractors([spec], relocate={f"{d}/": str(moved)})
    assert again.key == spec["key"]

    other = tmp_path / "other"
    shutil.copytree(moved, other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")  # another model's files
    with pytest.raises(BundleError) as err:
        build_extractors([spec], relocate={str(d): str(other)})
    assert "is not the one the bundle was made with" in str(err.value) and str(other) in str(err.value)

    shutil.move(other, d)  # the changed model back where the bundle names it
    with pytest.raises(BundleError) as err:
        build_extractors([spec])
    assert f"its model {d} has changed since the bundle was made" in str(err.value)


def test_relocate_takes_old_equals_new_and_says_so_otherwise(tmp_path):
    assert parse_relocations(["/a/b=/c/d", "x=y=z"]) == {"/a/b": "/c/d", "x": "y=z"}
    for bad in ("/a/b", "=/c", "/a="):
        with pytest.raises(BundleError, match="give OLD=NEW"):
            parse_relocations([bad])
    (tmp_path / "clip.wav").write_bytes(b"")
    res = CliRunner().invoke(cli.main, ["recognise", str(tmp_path / "model"), str(tmp_path / "clip.wav"),
                                        "--relocate", "nothing-to-move"])
    assert res.exit_code != 0 and "--relocate nothing-to-move: give OLD=NEW" in res.output
    assert "Traceback" not in res.output


def test_a_bundle_recognises_with_its_model_moved_as_it_did_before(tmp_path):
    """export on one machine, recognise where the model folder is elsewhere: the same results
    (the audio worker computes the moved model's set, filed under the bundle's key)."""
    from ensemble import Recogniser, ensemble
    from extract import extract
    from extract.executors import usable_cores
    from extract.demo_data import make_demo_set
    from models import fit

    data = make_demo_set(tmp_path / "data", labeled_per_class=3, unlabeled_per_class=0, speakers=3)
    d = save_tiny_hubert(tmp_path / "models" / "hubert")
    extract(data["videos"], tmp_path / "cache", features=f"librosa,frame-stats,hf-audio:model={d}", progress=False)
    keys = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(("librosa-", "frame-stats-", "hf-audio-")))
    run = fit(tmp_path / "cache", data["labels"], keys, tmp_path / "s1", folds=3, epochs=6, patience=3, hidden=16,
              batch_size=32, threads=1, progress=False).run_dir
    ens = ensemble([run], tmp_path / "pred.csv", progress=False)
    res = CliRunner().invoke(cli.main, ["export", str(run), "--ensemble", str(ens.paths["meta"]),
                                        "--out", str(tmp_path / "model")])
    assert res.exit_code == 0, res.output
    card = (tmp_path / "model" / "README.md").read_text()
    assert "## Models outside the bundle" in card and f"`{d}`" in card and "--relocate" in card
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    write_media(fresh / "new.mp4", np.full((10, 64, 64, 3), 90, np.uint8), fps=5, audio=voice(2.0, seed=11, f0=180),
                rate=16000)
    with Recogniser.load(tmp_path / "model") as rec:
        before = rec.predict_many([fresh])
    shutil.move(d, tmp_path / "hubert-moved")
    res = CliRunner().invoke(cli.main, ["recognise", str(tmp_path / "model"), str(fresh)])
    assert res.exit_code != 0 and "is not here" in res.output and "Traceback" not in res.output
    with Recogniser.load(tmp_path / "model", relocate={str(d): str(tmp_path / "hubert-moved")}) as rec:
        if usable_cores() >= 2:
            assert rec._audio_worker is not None and len(rec._audio_worker.audio) == 2
        after = rec.predict_many([fresh])
    assert [(r.clip, r.label, r.scores, r.absent, r.failure) for r in after] == \
        [(r.clip, r.label, r.scores, r.absent, r.failure) for r in before]
    assert before[0].failure is None and not before[0].absent
