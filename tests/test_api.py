"""The chain from Python: the README's example runs as written, and clip ids / class names that
break naive CSV code (comma, quote, newline, leading dash, spaces, non-ASCII) survive
fit -> pseudo-label -> fit stage 2 -> ensemble -> evaluate exactly."""
import csv
import re
from pathlib import Path

import numpy as np
import pytest

from ensemble import ensemble, evaluate
from extract.annotator import write_annotator
from models import fit, open_run, pseudo_label
from models.synth import make_synthetic_cache

ODD = ["com,ma", 'quo"te', "new\nline", "-dash", "with  space", "ünï cödé 感情", "semi;colon"]
CLASSES = ("neutral", "happy, glad", "sad")  # a class name with a comma
QUICK = dict(folds=3, epochs=10, patience=4, hidden=32, batch_size=32, threads=1, progress=False)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_odd_ids_and_class_names_round_trip_through_the_whole_chain(tmp_path):
    syn = make_synthetic_cache(tmp_path / "cache", n_labeled=60, n_unlabeled=30, classes=CLASSES, seed=1,
                               name=lambda i: f"{ODD[i % len(ODD)]} {i:03d}")
    rng = np.random.default_rng(0)
    answers = []
    for cid in syn.unlabeled:  # a judge right 80% of the time
        label = syn.truth[cid] if rng.random() < 0.8 else str(rng.choice([c for c in CLASSES if c != syn.truth[cid]]))
        answers.append({"name": cid, "label": label, "confidence": 0.9})
    ann = tmp_path / "annotator.jsonl"
    write_annotator(ann, answers)

    s1 = fit(syn.cache, syn.labels_csv, ["vec", "lay"], tmp_path / "s1", groups="speaker", classes=list(CLASSES),
             **QUICK)
    run = open_run(s1.run_dir)
    assert run.classes == list(CLASSES)
    assert set(run.labels()) == set(syn.labels) and run.labels() == syn.labels
    ids, p = run.probs("test", run.routed_member())
    assert sorted(ids) == sorted(syn.unlabeled) and p.shape == (30, 3)

    pl = pseudo_label(s1.run_dir, syn.cache, ann, tmp_path / "pseudo.csv")
    kept = [r["name"] for r in read_csv(pl.path)]
    assert kept and set(kept) <= set(syn.unlabeled)
    assert pl.counts["candidates"] == 30  # no labeled clip became a candidate

    s2 = fit(syn.cache, syn.labels_csv, ["vec", "lay"], tmp_path / "s2", groups="speaker", pseudo=pl.path,
             classes=list(CLASSES), **QUICK)
    assert open_run(s2.run_dir).pseudo_ids() == set(kept)
    assert s2.comparison and {r["member"] for r in s2.comparison} == {r["member"] for r in s2.metrics}

    ens = ensemble([s1.run_dir, s2.run_dir], tmp_path / "pred.csv", progress=False)
    rows = read_csv(ens.predictions)
    assert list(rows[0]) == ["name", "discrete"]
    assert sorted(r["name"] for r in rows) == sorted(syn.unlabeled)
    assert {r["discrete"] for r in rows} <= set(CLASSES)
    assert ens.meta["counts"]["tuning_rows"] == 60 - len(set(kept) & set(syn.labels))
    assert ens.meta["counts"]["pseudo_ids_left_out"] == 0

    truth = tmp_path / "truth.csv"
    with open(truth, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "discrete"])
        w.writerows((cid, syn.truth[cid]) for cid in syn.unlabeled)
    rep = evaluate(ens.predictions, truth, runs=[s1.run_dir, s2.run_dir])
    assert rep.counts["matched"] == 30 and rep.counts["predictions_without_label"] == 0
    assert rep.metrics["weighted_f1"] > 0.5
    assert rep.members and all(m["member"].split("/")[-1] for m in rep.members)


def _readme_example() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- python-api-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its Python API example"
    return m.group(1)


def test_the_readmes_python_example_runs_as_written(tmp_path, monkeypatch):
    from extract.demo_data import make_demo_set

    make_demo_set(tmp_path, labeled_per_class=5, unlabeled_per_class=2, speakers=3)
    monkeypatch.chdir(tmp_path)
    code = _readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 14  # "about ten lines"
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    rep = scope["rep"]
    assert rep.counts["matched"] == 12 and 0.0 <= rep.metrics["weighted_f1"] <= 1.0
    assert (tmp_path / "predictions.csv").is_file() and (tmp_path / "runs" / "stage2" / "run.json").is_file()
    assert scope["s2"].config.pseudo == scope["pl"].path


def test_python_api_options_are_checked_like_the_cli(tmp_path):
    from models.data import InputError

    syn = make_synthetic_cache(tmp_path / "cache", n_labeled=30, n_unlabeled=5)
    with pytest.raises(TypeError, match="unknown fit option"):
        fit(syn.cache, syn.labels_csv, "vec", tmp_path / "r", epoch=3)
    with pytest.raises(InputError, match="--hidden 30 must be a multiple of --heads 4"):
        fit(syn.cache, syn.labels_csv, "vec", tmp_path / "r", hidden=30)
    with pytest.raises(InputError, match="class 'sad' is given twice"):
        fit(syn.cache, syn.labels_csv, "vec", tmp_path / "r", classes="neutral,happy,sad,sad")
    assert not (tmp_path / "r").exists()
