"""``cli.py ensemble`` and ``cli.py evaluate`` (registered on the main click group in cli.py)."""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from extract.registry import toolkit_version
from extract.tables import read_rows

from extract.annotator import AnnotatorError, load_annotator
from .members import RunDirError, check_same_classes, load_members, peek_classes, read_labels_csv
from .pipeline import EnsemblePipeline
from .predictions import PredictionsError, read_meta, read_predictions, sidecar_paths, write_predictions
from .report import classification_metrics, confusion, member_table, oof_stage_table, write_report
from .reranking import RulesError, load_rules, parse_rules, sample_rules
from .voting import VOTES

USER_ERRORS = (RunDirError, RulesError, AnnotatorError, PredictionsError)


def _check_classes(run_dirs) -> list[str]:
    """The runs' class order from their classes.json alone (cheap), so that rules are checked before any work."""
    return check_same_classes(run_dirs, map(peek_classes, run_dirs))


def _read_ids(path) -> list[str]:
    cols, rows = read_rows(path, (), PredictionsError, "--ids file")
    if "name" not in cols:
        raise PredictionsError(f"--ids file {path} has no 'name' column")
    return [n for n in ((r["name"] or "").strip() for r in rows) if n]


def _tuned_on(ms, pipeline) -> dict:
    runs = ", ".join(str(r.path) for r in ms.runs)
    parts = [f"Member weights and thresholds were tuned on the out-of-fold predictions of {len(ms.y)} labeled ids "
             f"(labels.csv of {runs}); none of the {len(ms.target.ids)} predicted ids was used for tuning."]
    if ms.counts.get("pseudo_ids_left_out"):
        parts.append(f"{ms.counts['pseudo_ids_left_out']} pseudo-labeled ids were left out of tuning.")
    if pipeline.vote == "reliance":
        v = pipeline.voter_
        how = "chosen from the grid on those rows" if pipeline.power == "auto" else "given"
        parts.append(f"Reliance weights w_m = max(F1_m - F1_chance, 0)^p normalised, F1_chance = "
                     f"{v.chance_f1_:.4f}, p = {v.power_} ({how}).")
    for r in pipeline.rules.rules:
        if r.tuned_:
            parts.append(f"Rule {r.label}: {', '.join(f'{k} = {v}' for k, v in r.tuned_.items())} tuned on those rows.")
        if r.name == "prior_correction":
            parts.append(f"Rule {r.label} fits its class factors on the predicted probabilities of the rows it is "
                         "applied to (no labels)" + (", target = labeled class shares." if r.params["target"] ==
                                                     "labeled" else ", target given in the rules file."))
    return {"rows": int(len(ms.y)), "runs": [str(r.path) for r in ms.runs], "text": " ".join(parts)}


@click.command("ensemble")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False), metavar="RUN_DIR...")
@click.option("--out", default="predictions.csv", type=click.Path(dir_okay=False),
              help="Predictions CSV (name,discrete); sidecars <out>.details.csv and <out>.meta.json go next to it.")
@click.option("--vote", type=click.Choice(list(VOTES)), default="reliance",
              help="hard: majority of member labels; soft: mean probability; reliance: soft vote weighted by "
                   "each member's out-of-fold weighted F1 above chance.")
@click.option("--rules", "rules_spec", default=None, metavar="FILE|NAME",
              help="Re-ranking rules (YAML), applied in order after the vote; or the name of a shipped sample: "
                   + ", ".join(sample_rules()) + ".")
@click.option("--annotator", type=click.Path(dir_okay=False), default=None,
              help="Annotator answers for annotator_override: JSONL (name,label,scores) or CSV "
                   "(name,label[,confidence]).")
@click.option("--power", default="auto",
              help="Reliance exponent p, or 'auto' to choose it on out-of-fold rows.")
@click.option("--ids", "ids_file", type=click.Path(dir_okay=False), default=None,
              help="CSV with a 'name' column: predict exactly these ids (default: every id of the runs' test/ files).")
@click.option("--cross-fit/--no-cross-fit", default=True,
              help="Also score the recipe on out-of-fold rows by 5-fold cross-fitting (honest figure for the meta).")
def ensemble(run_dirs, out, vote, rules_spec, annotator, power, ids_file, cross_fit):
    """Vote the members of RUN_DIRs (every expert, fused and routed output), apply re-ranking rules,
    and write predictions.csv (name,discrete) with a details sidecar and provenance.

    Weights and 'auto' thresholds are tuned on out-of-fold rows of labeled ids only."""
    t0 = time.time()
    try:
        classes = _check_classes(run_dirs)
        rules = (load_rules(rules_spec, classes, have_annotator=annotator is not None) if rules_spec
                 else parse_rules([], classes))
        ann = load_annotator(annotator) if annotator else None
        target_ids = _read_ids(ids_file) if ids_file else None
        if vote != "reliance" and power != "auto":
            click.echo(f"note: --power is only used by --vote reliance (ignored for {vote})", err=True)
        ms = load_members(run_dirs, target_ids=target_ids, progress=True)
        pipeline = EnsemblePipeline(classes, vote, power, rules, ann).fit(ms.tuning, ms.y)
        result = pipeline.run(ms.target)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:  # bad --power, reliance without labeled rows
        raise click.ClickException(str(exc)) from None

    stages = oof_stage_table(ms, pipeline, cross_fitted=cross_fit) if len(ms.y) else []
    labels = result.final.labels
    n_nomember = int(result.vote.no_member.sum())
    changes = {st.name: int(st.changed.sum()) for st in result.stages[1:]}
    notes = list(ms.notes) + list(pipeline.voter_.notes) + [n for r in rules.rules for n in r.notes_]
    if not ms.target.ids:
        notes.append("no id to predict: the runs' test/ files are empty (and no --ids given); "
                     "predictions.csv holds only its header")
    if ann is not None:
        notes += ann.problems[:20]
    if ann is not None and not rules.needs_annotator:
        notes.append(f"--annotator {annotator} was given but no rule uses it (add an annotator_override rule)")
    if n_nomember:
        notes.append(f"{n_nomember} predicted ids have no member at all: they got the labeled majority class")
    described = pipeline.describe(ms.names)
    meta = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "toolkit_version": toolkit_version(),
        "arguments": {"run_dirs": [str(r) for r in run_dirs], "out": str(out), "vote": vote, "rules": rules_spec,
                      "annotator": annotator, "power": power, "ids": ids_file, "cross_fit": cross_fit},
        "classes": classes, "vote": vote, "power": pipeline.voter_.power_, "power_requested": power,
        "runs": [r.provenance() for r in ms.runs],
        "members": described["members"],
        "power_grid_oof_weighted_f1": described["power_grid_oof_weighted_f1"],
        "rules_file": str(rules.path) if rules.path else None,
        "rules": [r.entry for r in rules.rules],
        "rules_applied": described["rules"],
        "annotator": ann.summary(classes) if ann else None,
        "ids_file": str(ids_file) if ids_file else None,
        "tuned_on": _tuned_on(ms, pipeline),
        "counts": {**ms.counts, "predicted": len(ms.target.ids), "without_member": n_nomember},
        "changes_per_rule": changes,
        "rule_info": {st.name: st.info for st in result.stages[1:] if st.info},
        "oof_stages": stages, "notes": notes,
    }
    paths = write_predictions(out, ms.target.ids, labels, classes, result, meta)

    # -- summary
    vote_txt = f"vote {vote}" + (f" (p = {pipeline.voter_.power_})" if vote == "reliance" else "")
    click.echo(f"ensemble: {len(ms.runs)} runs, {len(ms.members)} members, {vote_txt}, tuned on "
               f"{len(ms.y)} out-of-fold rows")
    dist = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), int)
    click.echo(f"  predicted {len(labels)} ids ({n_nomember} without any member): "
               + ", ".join(f"{c} {n}" for c, n in zip(classes, dist)))
    for st in result.stages[1:]:
        extra = ""
        if "outside_classes_ignored" in st.info:
            extra = (f" ({st.info['outside_classes_ignored']} annotator labels outside the classes ignored, "
                     f"{st.info['no_answer']} ids without an answer)")
        click.echo(f"  rule {st.name}: changed {int(st.changed.sum())} labels{extra}")
    if stages:
        first, last = stages[0], stages[-1]
        line = f"  out-of-fold weighted F1: {first['weighted_f1_in_sample']:.4f} after the vote"
        if len(stages) > 1:
            line += f" -> {last['weighted_f1_in_sample']:.4f} after the rules"
        if "weighted_f1_cross_fitted" in first:
            line += (f" (cross-fitted {first['weighted_f1_cross_fitted']:.4f}"
                     + (f" -> {last['weighted_f1_cross_fitted']:.4f}" if len(stages) > 1 else "") + ")")
        click.echo(line)
    if notes:
        click.echo(f"  {len(notes)} notes (see {paths['meta'].name}); first: {notes[0]}")
    click.echo(f"  wrote {paths['predictions']} (name,discrete), {paths['details'].name}, {paths['meta'].name} "
               f"in {time.time() - t0:.1f} s")


@click.command("evaluate")
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.argument("more_runs", nargs=-1, type=click.Path(file_okay=False), metavar="")
@click.option("--labels", "labels_path", required=True, type=click.Path(dir_okay=False),
              help="Ground truth CSV with name,discrete.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Report folder (default: <predictions>.report next to the predictions).")
@click.option("--runs", multiple=True, type=click.Path(file_okay=False), metavar="RUN_DIR [RUN_DIR...]",
              help="RUN_DIRs the predictions came from: adds the per-member table and the out-of-fold metric "
                   "before and after each rule. Several may follow one --runs.")
def evaluate(predictions, more_runs, labels_path, out_dir, runs):
    """Score PREDICTIONS (name,discrete) against --labels: weighted F1, macro F1, accuracy, per-class
    precision and recall, confusion matrix PNG; with --runs also per-member and per-rule OOF tables."""
    runs = list(runs) + list(more_runs)
    notes: list[str] = []
    try:
        preds = read_predictions(predictions)
        meta = read_meta(predictions)
        classes = list(meta["classes"]) if meta and meta.get("classes") else []
        truth = read_labels_csv(labels_path)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    if meta is None:
        notes.append(f"no {sidecar_paths(predictions)['meta'].name} next to {predictions}: tuning provenance unknown")
    extra = sorted({*truth.values(), *preds.values()} - set(classes))
    if classes and extra:
        notes.append(f"labels or predictions outside the ensemble's classes: {', '.join(extra)} (added to the table)")
    classes = classes + extra
    cidx = {c: i for i, c in enumerate(classes)}
    matched = sorted(set(preds) & set(truth))
    y = np.array([cidx[truth[n]] for n in matched], np.int64)
    p = np.array([cidx[preds[n]] for n in matched], np.int64)
    counts = {"predictions": len(preds), "labels": len(truth), "matched": len(matched),
              "predictions_without_label": len(set(preds) - set(truth)),
              "labels_without_prediction": len(set(truth) - set(preds))}
    if not matched:
        raise click.ClickException(f"no id of {predictions} has a label in {labels_path}: nothing to score "
                                   "(are they the same data set?)")
    metrics = classification_metrics(y, p, classes)
    cm = confusion(y, p, len(classes))

    members = stage_rows = None
    if runs:
        try:
            members, stage_rows, more = _oof_tables(runs, list(preds), meta)
            notes += more
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None
    out = Path(out_dir) if out_dir else Path(f"{Path(predictions).with_suffix('')}.report")
    sources = {"predictions": predictions, "labels": labels_path, "runs": ", ".join(runs) or "none",
               "ensemble created": (meta or {}).get("created", "unknown"), "evaluated": time.strftime("%Y-%m-%d %H:%M")}
    paths = write_report(out, metrics, cm, classes, counts, meta, members, stage_rows, notes, sources)

    click.echo(f"evaluate: {counts['matched']} ids scored ({counts['predictions']} predictions, {counts['labels']} "
               f"labels, {counts['predictions_without_label']} predictions unlabeled, "
               f"{counts['labels_without_prediction']} labels without prediction)")
    click.echo(f"  weighted F1 {metrics['weighted_f1']:.4f}  macro F1 {metrics['macro_f1']:.4f}  "
               f"accuracy {metrics['accuracy']:.4f}")
    if stage_rows:
        click.echo("  out-of-fold weighted F1 by stage (in-sample / cross-fitted): " + "; ".join(
            f"{r['stage']} {r['weighted_f1_in_sample']:.4f}"
            + (f"/{r['weighted_f1_cross_fitted']:.4f}" if "weighted_f1_cross_fitted" in r else "")
            for r in stage_rows))
    click.echo(f"  wrote {paths['report']} (+ {', '.join(p.name for k, p in paths.items() if k != 'report')})")


def _oof_tables(runs, predicted_ids, meta):
    """Rebuild the pipeline the predictions were made with (from the meta) and score it out-of-fold."""
    notes = []
    classes = _check_classes(runs)
    vote = (meta or {}).get("vote", "reliance")
    power = (meta or {}).get("power_requested", "auto")
    if meta is None:
        notes.append("per-rule table: no meta file, so the default recipe (reliance vote, no rules) was scored")
    ann = None
    ann_path = ((meta or {}).get("annotator") or {}).get("path")
    if ann_path:
        try:
            ann = load_annotator(ann_path)
        except AnnotatorError as exc:
            notes.append(f"annotator rules left out of the out-of-fold table: {exc}")
    entries = list((meta or {}).get("rules") or [])
    if ann is None:
        kept = [e for e in entries if e.get("rule") != "annotator_override"]
        if len(kept) != len(entries):
            notes.append("annotator_override left out of the out-of-fold table (no annotator file)")
        entries = kept
    src = f"{(meta or {}).get('rules_file')} (as recorded in the meta)"
    rules = parse_rules(entries, classes, src, have_annotator=ann is not None)
    ms = load_members(runs, target_ids=predicted_ids, progress=True)
    notes += ms.notes
    if not len(ms.y):
        notes.append("the runs have no out-of-fold rows of labeled ids outside the predictions: no OOF tables")
        return None, None, notes
    pipeline = EnsemblePipeline(ms.classes, vote, power, rules, ann).fit(ms.tuning, ms.y)
    return member_table(ms, pipeline), oof_stage_table(ms, pipeline), notes
