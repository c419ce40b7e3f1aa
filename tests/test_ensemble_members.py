"""Reading RUN_DIRs written to the contract (hand-made with ensemble.synth.write_run_dir)."""
import numpy as np
import pytest

from ensemble.members import RunDirError, load_members
from ensemble.synth import write_run_dir

CL = ["a", "b", "c"]


def P(*rows):
    return np.array(rows, float)


def small_run(path, classes=CL, config=None, files=None, **over):
    labels = {"l1": "a", "l2": "b", "l3": "c"}
    oof = {"expert-x": (["l1", "l2"], P([0.7, 0.2, 0.1], [0.1, 0.8, 0.1])),
           "fused": (["l1", "l2", "l3"], P([0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6])),
           "routed": (["l1", "l2", "l3"], P([0.5, 0.3, 0.2], [0.3, 0.5, 0.2], [0.2, 0.3, 0.5]))}
    test = {"expert-x": (["t1"], P([0.1, 0.1, 0.8])),
            "fused": (["t1", "t2"], P([0.3, 0.3, 0.4], [0.5, 0.25, 0.25])),
            "routed": (["t1", "t2"], P([0.2, 0.3, 0.5], [0.6, 0.2, 0.2]))}
    args = dict(labels=labels, oof=oof, test=test)
    args.update(over)
    if classes != CL:  # same probabilities, columns written in another order
        perm = [CL.index(c) for c in classes]
        for store in (args["oof"], args["test"]):
            for m, (ids, p) in store.items():
                store[m] = (ids, p[:, perm])
    return write_run_dir(path, classes, args["labels"], args["oof"], args["test"], config=config, files=files)


def test_members_are_every_expert_fused_and_routed_of_every_run_prefixed(tmp_path):
    r1 = small_run(tmp_path / "x" / "run")
    r2 = small_run(tmp_path / "y" / "run")  # same folder name: disambiguated by the parent
    ms = load_members([r1, r2])
    assert ms.names == ["x/run/expert-x", "x/run/fused", "x/run/routed", "y/run/expert-x", "y/run/fused",
                        "y/run/routed"]
    assert [m.kind for m in ms.members[:3]] == ["expert", "fused", "routed"]
    assert ms.members[0].feature == "x"
    assert ms.tuning.ids == ["l1", "l2", "l3"] and ms.y.tolist() == [0, 1, 2]
    assert ms.target.ids == ["t1", "t2"]
    # expert has no row for l3 / t2: absent there, fused and routed present
    assert ms.tuning.present[0].tolist() == [True, True, False]
    assert ms.target.present[0].tolist() == [True, False]
    assert np.isnan(ms.target.probs[0, 1]).all()
    np.testing.assert_allclose(ms.target.probs[1, 0], [0.3, 0.3, 0.4], atol=1e-6)


def test_class_columns_are_reordered_to_the_first_runs_order(tmp_path):
    r1 = small_run(tmp_path / "r1")
    r2 = small_run(tmp_path / "r2", classes=["c", "a", "b"])
    ms = load_members([r1, r2])
    assert ms.classes == CL
    np.testing.assert_allclose(ms.target.probs[3], ms.target.probs[0], atol=1e-6, equal_nan=True)


def test_header_mismatch_names_the_file(tmp_path):
    r = small_run(tmp_path / "r", files={"test/fused.csv": "name,a,b,d\nt1,0.3,0.3,0.4\n"})
    with pytest.raises(RunDirError, match=r"fused.csv has class columns a,b,d but the run's classes are a,b,c"):
        load_members([r])


def test_a_run_changed_after_publishing_is_refused(tmp_path):
    r = small_run(tmp_path / "r")
    (r / "test" / "fused.csv").write_text("name,a,b,c\nt1,0.3,0.3,0.4\n")
    with pytest.raises(RunDirError, match=r"does not match its run.json .*test/fused.csv changed"):
        load_members([r])
    r2 = small_run(tmp_path / "r2")
    (r2 / "oof" / "routed.csv").unlink()
    with pytest.raises(RunDirError, match=r"oof/routed.csv missing"):
        load_members([r2])


def test_missing_contract_files_say_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="no valid run.json .not a RUN_DIR.*cli.py fit"):
        load_members([tmp_path / "empty"])
    with pytest.raises(RunDirError, match="does not exist"):
        load_members([tmp_path / "nope"])
    r = small_run(tmp_path / "r")
    with pytest.raises(RunDirError, match="given twice"):
        load_members([r, r])


def test_conflicting_labels_and_classes_are_errors(tmp_path):
    r1 = small_run(tmp_path / "r1")
    r2 = small_run(tmp_path / "r2", labels={"l1": "b", "l2": "b", "l3": "c"})
    with pytest.raises(RunDirError, match="'a' in .*r1/labels.csv but 'b' in .*r2/labels.csv"):
        load_members([r1, r2])
    r3 = tmp_path / "r3"
    write_run_dir(r3, ["a", "b"], {"l1": "a"}, {"fused": (["l1"], P([0.5, 0.5]))}, {})
    with pytest.raises(RunDirError, match="must share their classes"):
        load_members([r1, r3])


def test_bad_rows_are_dropped_or_renormalised_and_noted(tmp_path):
    r = small_run(tmp_path / "r", files={"test/routed.csv": "name,a,b,c\nt1,2,1,1\nt2,nan,0.5,0.5\n"})
    ms = load_members([r])
    np.testing.assert_allclose(ms.target.probs[2, 0], [0.5, 0.25, 0.25])
    assert not ms.target.present[2, 1]
    assert any("renormalised" in n for n in ms.notes) and any("dropped" in n for n in ms.notes)


def test_tuning_never_holds_a_predicted_or_pseudo_labeled_id(tmp_path):
    r = small_run(tmp_path / "r", config={"pseudo_ids": {"l3": "c"}})
    ms = load_members([r], target_ids=["l1", "t1"])
    assert ms.tuning.ids == ["l2"]
    assert ms.counts["pseudo_ids_left_out"] == 1 and ms.counts["labeled_ids_predicted"] == 1
    # l1 is predicted from its out-of-fold rows (a model that never saw it)
    assert ms.target.present[:, 0].all()
    np.testing.assert_allclose(ms.target.probs[1, 0], [0.6, 0.2, 0.2], atol=1e-6)


def test_class_check_is_the_same_from_classes_json_alone_and_stops_at_the_first_mismatch(tmp_path):
    from click.testing import CliRunner

    from ensemble.cli_ensemble import ensemble
    from ensemble.members import check_same_classes, peek_classes

    r1 = small_run(tmp_path / "r1")
    r2 = small_run(tmp_path / "r2", classes=["c", "a", "b"])
    r3 = tmp_path / "r3"
    write_run_dir(r3, ["a", "b"], {"l1": "a"}, {"fused": (["l1"], P([0.5, 0.5]))}, {})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "classes.json").write_text("not json")
    assert check_same_classes([r1, r2], map(peek_classes, [r1, r2])) == CL
    expect = (f"{r3 / 'classes.json'} has classes ['a', 'b'] but {r1 / 'classes.json'} has {CL}: "
              "runs to combine must share their classes")
    with pytest.raises(RunDirError) as exc:
        check_same_classes([r1, r3, broken], map(peek_classes, [r1, r3, broken]))  # broken is never read
    assert str(exc.value) == expect
    with pytest.raises(RunDirError) as exc:
        load_members([r1, r3])
    assert str(exc.value) == expect
    res = CliRunner().invoke(ensemble, [str(r1), str(r3), str(broken), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code != 0 and expect in res.output and not (tmp_path / "p.csv").exists()


def test_member_names_from_metadata_never_leave_the_run(tmp_path):
    outside = tmp_path / "outside" / "secret.csv"
    outside.parent.mkdir()
    outside.write_text("name,a,b,c\nt1,1,0,0\n")
    r = small_run(tmp_path / "r")
    members = '[{"member": "../../outside/secret", "kind": "routed"}]'
    from models.run_dir import RunWriter

    with RunWriter(tmp_path / "evil", command="synthetic") as w:  # a run whose members.json was forged
        for rel in ("classes.json", "config.yaml", "labels.csv"):
            w.write_file(rel, (r / rel).read_text())
        w.write_file("members.json", members)
        w.publish()
    with pytest.raises(RunDirError, match="is not a plain file name"):
        load_members([tmp_path / "evil"])
