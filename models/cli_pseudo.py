"""``cli.py pseudo-label``: consensus pseudo-labels from a stage-1 RUN_DIR and an annotator."""
from __future__ import annotations

from pathlib import Path

import click

from extract.cache import CacheError
from extract.tables import read_rows
from models.data import InputError, first_few
from models.pseudo import PseudoError, parse_class_thresholds, select, write_pseudo
from models.train import resolve_device


def labeled_ids(run_dir) -> set[str]:
    _, rows = read_rows(Path(run_dir) / "labels.csv", ("name",), PseudoError, "labels file of the run",
                        "give the --out folder of a finished `cli.py fit`")
    return {row["name"] for row in rows}


def run_pseudo_label(run_dir, cache, annotator_path, out, ids_csv=None, min_confidence=0.0, class_thresholds=None,
                     min_annotator_confidence=0.0, group_table=None, device="cpu", member=None, warn=None):
    """Predict the candidates with the stage-1 run, keep the clips where it agrees with the annotator.
    Returns the Selection (counts in ``.counts``)."""
    from extract.annotator import AnnotatorError, load_annotator
    from models.cli_fit import run_predict

    warn = warn or (lambda msg: click.echo(f"warning: {msg}", err=True))
    try:
        annotator = load_annotator(annotator_path)
    except AnnotatorError as exc:
        raise PseudoError(str(exc)) from None
    for problem in annotator.problems[:5]:
        warn(problem)
    train = labeled_ids(run_dir)
    # default candidates: every cached id of the run's features that it did not train on
    ids, probs, run = run_predict(run_dir, cache, ids_csv, group_table, device, False, warn)
    overlap = [cid for cid in ids if cid in train]
    if ids_csv is not None and overlap:
        warn(f"{ids_csv}: {len(overlap)} ids are labeled training clips of {run_dir} "
             f"(first: {first_few(overlap)}); they are not candidates")
    keep = [i for i, cid in enumerate(ids) if cid not in train]
    member = member or next(m["member"] for m in run.members if m["kind"] == "routed")
    if member not in probs:
        raise PseudoError(f"--member {member!r} is not a member of {run_dir}")
    cand = [ids[i] for i in keep]
    if not cand:
        raise PseudoError(f"no candidate clip: every cached id of {run_dir}'s features is a labeled training clip")
    have = set(ids)
    missing = [cid for cid in annotator.answers if cid not in have and cid not in train]
    if missing:
        warn(f"{annotator_path}: {len(missing)} annotator ids have no features in cache {cache} "
             f"(first: {first_few(missing)}); they are ignored")
    classes = list(run.classes)
    thresholds = parse_class_thresholds(class_thresholds, classes)
    sel = select(cand, probs[member][keep], classes, annotator, min_confidence, thresholds, min_annotator_confidence)
    if sel.counts["annotator_answers"] == 0:
        raise PseudoError(f"{annotator_path}: no answer for any of the {len(cand)} candidate clips "
                          f"(first candidates: {first_few(cand)}); do the names match the clip ids?")
    if sel.counts["kept"] == 0:
        raise PseudoError(f"empty agreement: the model and {annotator_path} agree on {sel.counts['agree']} of "
                          f"{len(cand)} clips and none passes the thresholds (--min-confidence {min_confidence}, "
                          f"--class-thresholds {class_thresholds or '-'}, --min-annotator-confidence "
                          f"{min_annotator_confidence}); lower them or check the annotator's classes")
    meta = {"stage1_run": str(Path(run_dir).resolve()), "cache": str(cache), "member": member,
            "annotator": str(Path(annotator_path).resolve()), "min_confidence": min_confidence,
            "class_thresholds": thresholds, "min_annotator_confidence": min_annotator_confidence,
            "ids": None if ids_csv is None else str(ids_csv), "group_table": group_table}
    write_pseudo(out, sel, meta)
    return sel


@click.command("pseudo-label")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--cache", required=True, type=click.Path(file_okay=False), help="Feature cache the run was fitted on.")
@click.option("--annotator", "annotator_path", required=True, type=click.Path(dir_okay=False),
              help="Annotator answers: JSONL (name,label,scores) as from `export-annotator`, or CSV "
                   "name,label[,confidence].")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Pseudo-label CSV to write.")
@click.option("--ids", "ids_csv", default=None, type=click.Path(dir_okay=False),
              help="CSV with a name column: candidates (default: every cached id absent from the run's labels).")
@click.option("--min-confidence", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Minimum routed probability of the predicted class.")
@click.option("--class-thresholds", default=None,
              help="Per-class minimum model confidence, e.g. happy=0.9,worried=0.8 (others: --min-confidence).")
@click.option("--min-annotator-confidence", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Minimum annotator confidence (its 'confidence', or the label's share of its scores).")
@click.option("--group-table", default=None, type=click.Path(dir_okay=False),
              help="CSV name,group for runs fitted with --normalize group.")
@click.option("--member", default=None, help="Member whose prediction is judge 1 (default: the routed output).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Device for prediction.")
def pseudo_label(run_dir, cache, annotator_path, out, ids_csv, min_confidence, class_thresholds,
                 min_annotator_confidence, group_table, member, device):
    """Keep an unlabeled clip only when the stage-1 model and an annotator agree (and both are
    confident enough); write name,discrete,confidence,annotator_label,annotator_confidence."""
    try:
        sel = run_pseudo_label(run_dir, cache, annotator_path, out, ids_csv, min_confidence, class_thresholds,
                               min_annotator_confidence, group_table, resolve_device(device), member)
    except (PseudoError, InputError, CacheError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    c = sel.counts
    click.echo(f"{c['candidates']} candidates; annotator answered {c['annotator_answers']} "
               f"({c['annotator_label_outside_classes']} outside the classes); agreement {c['agree']} "
               f"({c['agreement_rate']:.1%} of answered); kept {c['kept']}")
    click.echo("per class (agree -> kept): " + ", ".join(
        f"{k} {c['agree_per_class'][k]}->{v}" for k, v in c["kept_per_class"].items()))
    click.echo(f"pseudo-labels: {out} (+ {out}.meta.json)")
