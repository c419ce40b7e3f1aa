"""Users' files are sacred: what a round of deliberate misuse did before (issue 11), as tests."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from ensemble.synth import synthetic_runs, write_run_dir
from models.run_dir import RunDirError, RunWriter, open_run
from models.synth import make_synthetic_cache

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--folds", "3", "--epochs", "6", "--patience", "3", "--hidden", "16", "--batch-size", "32", "--quiet",
        "--threads", "1"]


def run_cli(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("ud") / "cache", n_labeled=45, n_unlabeled=15, seed=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("udruns")
    paths, labels, truth = synthetic_runs(root, n_runs=1, n_labeled=60, n_test=20)
    return root, paths[0]


def test_fit_refuses_a_folder_that_is_not_a_run_dir_and_touches_nothing(syn, tmp_path):
    repo_copy = tmp_path / "repo"
    for rel, data in (("models/heads.py", b"print('mine')\n"), ("test/clip.mp4", b"\x00video"), ("notes.txt", b"n")):
        (repo_copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo_copy / rel).write_bytes(data)
    before = snapshot(repo_copy)
    res = run_cli("fit", "--cache", syn.cache, "--labels", syn.labels_csv, "--features", "vec", "--out", repo_copy, *TINY)
    assert res.exit_code == 1 and "is a non-empty folder that is not a RUN_DIR" in res.output
    assert "Traceback" not in res.output
    assert snapshot(repo_copy) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo.")]  # no staging folder left


def test_refit_replaces_a_run_only_when_complete_and_keeps_files_it_did_not_write(syn, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ("fit", "--cache", syn.cache, "--labels", syn.labels_csv, "--features", "vec", "--out", out, *TINY)
    assert run_cli(*args).exit_code == 0
    (out / "my-notes.txt").write_text("keep me")
    first = snapshot(out)

    import models.fitting as fitting

    def boom(*a, **k):
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(fitting, "cross_validate", boom)
    with pytest.raises(RuntimeError):
        fitting.fit(syn.cache, syn.labels_csv, "vec", out, folds=3, epochs=2, hidden=16, progress=False)
    assert snapshot(out) == first  # the old run, untouched and readable
    open_run(out)
    assert not list(tmp_path.glob(".run.*"))  # the unfinished run was removed
    monkeypatch.undo()

    res = run_cli(*args[:-len(TINY)], "--seeds", "1", *TINY)
    assert res.exit_code == 0, res.output
    assert not (out / "my-notes.txt").exists()
    kept = list(tmp_path.glob("run.previous-*"))
    assert len(kept) == 1 and (kept[0] / "my-notes.txt").read_text() == "keep me"
    assert "were kept in" in res.output
    assert open_run(out).config["seeds"] == [1]


def test_a_killed_fit_leaves_the_previous_run_readable(syn, tmp_path):
    out = tmp_path / "run"
    args = ["fit", "--cache", str(syn.cache), "--labels", str(syn.labels_csv), "--features", "vec,lay,ser",
            "--out", str(out), *TINY]
    assert run_cli(*args).exit_code == 0
    before = snapshot(out)
    slow = [a if a != "6" else "400" for a in args] + ["--seeds", "0,1,2"]
    proc = subprocess.Popen([sys.executable, "cli.py", *slow], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob(".run.*.partial/models/*.pt")):
            time.sleep(0.2)
        assert list(tmp_path.glob(".run.*.partial/models/*.pt")), "the fit never wrote a model file"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert snapshot(out) == before
    assert open_run(out).model_files
    assert list(tmp_path.glob(".run.*.partial"))  # what the killed fit left: never read as a run
    assert run_cli(*args).exit_code == 0  # the next fit clears it
    assert not list(tmp_path.glob(".run.*.partial"))


def test_outputs_that_the_command_did_not_write_are_refused_unless_forced(runs, syn, tmp_path):
    root, run = runs
    labels = tmp_path / "labels.csv"
    labels.write_text("name,discrete\na,happy\n")
    res = run_cli("ensemble", run, "--out", labels)
    assert res.exit_code == 1 and "was not written by `ensemble`" in res.output
    assert labels.read_text() == "name,discrete\na,happy\n"
    res = run_cli("ensemble", run, "--out", run / "labels.csv")
    assert res.exit_code == 1 and "inside RUN_DIR" in res.output
    open_run(run)  # still a valid run
    res = run_cli("ensemble", run, "--out", syn.cache / "p.csv")
    assert res.exit_code == 1 and "inside feature cache" in res.output
    ok = tmp_path / "pred.csv"
    assert run_cli("ensemble", run, "--out", ok).exit_code == 0
    assert run_cli("ensemble", run, "--out", ok).exit_code == 0  # its own earlier output: replaced
    assert run_cli("ensemble", run, "--out", labels, "--force").exit_code == 0
    assert labels.read_text().startswith("name,discrete\n") and "a,happy" not in labels.read_text()
    # evaluate: a folder of the user's is refused; its own report is replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.md").write_text("x")
    truth = root / "truth.csv"
    truth.write_text("name,discrete\n" + "".join(f"T{i:05d},neutral\n" for i in range(20)))
    res = run_cli("evaluate", ok, "--labels", truth, "--out", mine)
    assert res.exit_code == 1 and "did not write" in res.output and (mine / "thesis.md").read_text() == "x"
    assert run_cli("evaluate", ok, "--labels", truth, "--out", tmp_path / "rep").exit_code == 0
    assert run_cli("evaluate", ok, "--labels", truth, "--out", tmp_path / "rep").exit_code == 0
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["written_by"] == "evaluate"


def test_predict_and_pseudo_label_outputs_carry_their_writer(syn, tmp_path):
    out = tmp_path / "run"
    assert run_cli("fit", "--cache", syn.cache, "--labels", syn.labels_csv, "--features", "vec", "--out", out,
                   *TINY).exit_code == 0
    probs = tmp_path / "probs.csv"
    probs.write_text("user data\n")
    res = run_cli("predict", out, "--cache", syn.cache, "--out", probs)
    assert res.exit_code == 1 and probs.read_text() == "user data\n"
    probs.unlink()
    assert run_cli("predict", out, "--cache", syn.cache, "--out", probs).exit_code == 0
    assert json.loads(Path(f"{probs}.meta.json").read_text())["written_by"] == "predict"
    assert run_cli("predict", out, "--cache", syn.cache, "--out", probs).exit_code == 0
    ann = tmp_path / "ann.csv"
    ann.write_text("name,label\n" + "".join(f"{c},{syn.truth[c]}\n" for c in syn.unlabeled))
    res = run_cli("pseudo-label", out, "--cache", syn.cache, "--annotator", ann, "--out", probs)
    assert res.exit_code == 1 and "`predict` wrote it" in res.output


def test_a_run_config_with_yaml_aliases_is_refused_quickly(runs, tmp_path):
    _, run = runs
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{k}: &{k} [{', '.join(['*' + p] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi"))
    with RunWriter(tmp_path / "evil", command="synthetic") as w:
        for rel in ("classes.json", "members.json", "labels.csv"):
            w.write_file(rel, (run / rel).read_text())
        w.write_file("config.yaml", bomb)
        w.publish()
    t0 = time.time()
    with pytest.raises(RunDirError, match="anchor|alias"):
        open_run(tmp_path / "evil")
    res = run_cli("ensemble", tmp_path / "evil", "--out", tmp_path / "p.csv")
    assert res.exit_code == 1 and len(res.output) < 2000 and "Traceback" not in res.output
    assert time.time() - t0 < 30 and not (tmp_path / "p.csv").exists()


def test_labels_that_differ_only_by_case_and_duplicate_classes_are_errors(syn, tmp_path):
    labels = tmp_path / "labels.csv"
    rows = [f"{c},{'HAPPY' if i % 3 == 0 else 'happy' if i % 3 == 1 else 'sad'}" for i, c in enumerate(syn.labels)]
    labels.write_text("name,discrete\n" + "\n".join(rows) + "\n")
    res = run_cli("fit", "--cache", syn.cache, "--labels", labels, "--features", "vec", "--out", tmp_path / "r", *TINY)
    assert res.exit_code == 1 and "HAPPY / happy" in res.output
    res = run_cli("fit", "--cache", syn.cache, "--labels", syn.labels_csv, "--features", "vec", "--out",
                  tmp_path / "r", "--classes", "happy,sad,Happy,neutral", *TINY)
    assert res.exit_code == 1 and "class 'Happy' is given twice (as 'happy')" in res.output
    assert not (tmp_path / "r").exists()


def test_a_model_file_that_torch_refuses_is_one_clear_message(tmp_path):
    from models.data import InputError
    from models.train import load_model_file

    bad = tmp_path / "fold0_seed0.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"format": "x", "payload": np.random.default_rng(0)}, fh)  # needs a real unpickler
    with pytest.raises(InputError, match="fold0_seed0.pt: not a loadable model file .*weights_only=True"):
        load_model_file(bad)
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a loadable model file"):
        load_model_file(bad)


def test_every_default_has_one_source():
    from ensemble.api import EnsembleConfig
    from ensemble.cli_ensemble import ensemble
    from models.cli_fit import fit
    from models.fitting import FitConfig

    defaults = FitConfig()
    seen = 0
    for p in fit.params:
        name = p.name
        if hasattr(defaults, name) and p.default is not None and not p.is_flag:
            want = getattr(defaults, name)
            got = p.default if name != "seeds" else tuple(int(s) for s in p.default.split(","))
            assert got == want, f"fit --{name}: click default {got!r} != FitConfig {want!r}"
            seen += 1
    assert seen >= 15 and defaults.pseudo_weight == 0.5
    ed = EnsembleConfig()
    for p in ensemble.params:
        if p.name in ("vote", "power", "cross_fit"):
            assert p.default == getattr(ed, p.name)
