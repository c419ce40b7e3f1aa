"""``cli.py ensemble`` and ``cli.py evaluate``: parse options, call ensemble.api, print."""
from __future__ import annotations

import click

from extract.cli_errors import user_errors

from .api import USER_ERRORS, EnsembleConfig
from .reranking import sample_rules
from .voting import VOTES

D = EnsembleConfig()


@click.command("ensemble")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False), metavar="RUN_DIR...")
@click.option("--out", default="predictions.csv", type=click.Path(dir_okay=False),
              help="Predictions CSV (name,discrete); sidecars <out>.details.csv and <out>.meta.json go next to it.")
@click.option("--vote", type=click.Choice(list(VOTES)), default=D.vote,
              help="hard: majority of member labels; soft: mean probability; reliance: soft vote weighted by "
                   "each member's out-of-fold weighted F1 above chance.")
@click.option("--rules", "rules_spec", default=None, metavar="FILE|NAME",
              help="Re-ranking rules (YAML), applied in order after the vote; or the name of a shipped sample: "
                   + ", ".join(sample_rules()) + ".")
@click.option("--annotator", type=click.Path(dir_okay=False), default=None,
              help="Annotator answers for annotator_override: JSONL (name,label,scores) or CSV "
                   "(name,label[,confidence]).")
@click.option("--power", default=D.power,
              help="Reliance exponent p, or 'auto' to choose it on out-of-fold rows.")
@click.option("--ids", "ids_file", type=click.Path(dir_okay=False), default=None,
              help="CSV with a 'name' column: predict exactly these ids (default: every id of the runs' test/ files).")
@click.option("--cross-fit/--no-cross-fit", default=D.cross_fit,
              help="Also score the recipe on out-of-fold rows by 5-fold cross-fitting (honest figure for the meta).")
@click.option("--force", is_flag=True, help="Replace --out and its sidecars even when `ensemble` did not write them.")
def ensemble(run_dirs, out, vote, rules_spec, annotator, power, ids_file, cross_fit, force):
    """Vote the members of RUN_DIRs (every expert, fused and routed output), apply re-ranking rules,
    and write predictions.csv (name,discrete) with a details sidecar and provenance.

    Weights and 'auto' thresholds are tuned on out-of-fold rows of labeled ids only."""
    from .api import ensemble as run_ensemble

    with user_errors(*USER_ERRORS):
        res = run_ensemble(run_dirs, out, vote=vote, rules=rules_spec, annotator=annotator, power=power,
                           ids=ids_file, cross_fit=cross_fit, force=force)
    vote = res.meta['vote']
    vote_txt = f"vote {vote}" + (f" (p = {res.meta['power']})" if vote == "reliance" else "")
    click.echo(f"ensemble: {len(res.run_dirs)} runs, {res.meta['counts']['members']} members, {vote_txt}, tuned on "
               f"{res.meta['tuned_on']['rows']} out-of-fold rows")
    classes = res.classes
    dist = [res.labels.count(c) for c in classes]
    click.echo(f"  predicted {len(res.labels)} ids ({res.meta['counts']['without_member']} without any member): "
               + ", ".join(f"{c} {n}" for c, n in zip(classes, dist)))
    for name, changed in res.changes.items():
        info = res.meta['rule_info'].get(name, {})
        extra = ""
        if "outside_classes_ignored" in info:
            extra = (f" ({info['outside_classes_ignored']} annotator labels outside the classes ignored, "
                     f"{info['no_answer']} ids without an answer)")
        click.echo(f"  rule {name}: changed {changed} labels{extra}")
    stages = res.stages
    if stages:
        first, last = stages[0], stages[-1]
        line = f"  out-of-fold weighted F1: {first['weighted_f1_in_sample']:.4f} after the vote"
        if len(stages) > 1:
            line += f" -> {last['weighted_f1_in_sample']:.4f} after the rules"
        if "weighted_f1_cross_fitted" in first:
            line += (f" (cross-fitted {first['weighted_f1_cross_fitted']:.4f}"
                     + (f" -> {last['weighted_f1_cross_fitted']:.4f}" if len(stages) > 1 else "") + ")")
        click.echo(line)
    notes, paths = res.notes, res.paths
    if notes:
        click.echo(f"  {len(notes)} notes (see {paths['meta'].name}); first: {notes[0]}")
    click.echo(f"  wrote {paths['predictions']} (name,discrete), {paths['details'].name}, {paths['meta'].name} "
               f"in {res.seconds:.1f} s")


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
@click.option("--force", is_flag=True, help="Write into --out even when `evaluate` did not write it.")
def evaluate(predictions, more_runs, labels_path, out_dir, runs, force):
    """Score PREDICTIONS (name,discrete) against --labels: weighted F1, macro F1, accuracy, per-class
    precision and recall, confusion matrix PNG; with --runs also per-member and per-rule OOF tables."""
    from .api import evaluate as run_evaluate

    with user_errors(*USER_ERRORS):
        rep = run_evaluate(predictions, labels_path, out_dir, list(runs) + list(more_runs), force)
    click.echo(f"evaluate: {rep.counts['matched']} ids scored ({rep.counts['predictions']} predictions, {rep.counts['labels']} "
               f"labels, {rep.counts['predictions_without_label']} predictions unlabeled, "
               f"{rep.counts['labels_without_prediction']} labels without prediction)")
    click.echo(f"  weighted F1 {rep.metrics['weighted_f1']:.4f}  macro F1 {rep.metrics['macro_f1']:.4f}  "
               f"accuracy {rep.metrics['accuracy']:.4f}")
    if rep.stages:
        click.echo("  out-of-fold weighted F1 by stage (in-sample / cross-fitted): " + "; ".join(
            f"{r['stage']} {r['weighted_f1_in_sample']:.4f}"
            + (f"/{r['weighted_f1_cross_fitted']:.4f}" if "weighted_f1_cross_fitted" in r else "")
            for r in rep.stages))
    click.echo(f"  wrote {rep.paths['report']} (+ {', '.join(p.name for k, p in rep.paths.items() if k != 'report')})")


