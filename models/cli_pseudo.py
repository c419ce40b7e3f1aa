"""``cli.py pseudo-label``: parse options, call models.pseudo.pseudo_label, print."""
from __future__ import annotations

import click

from extract.cli_errors import user_errors
from models.pseudo import pseudo_label as run_pseudo_label


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
@click.option("--force", is_flag=True, help="Replace --out even when this command did not write it.")
def pseudo_label(run_dir, cache, annotator_path, out, ids_csv, min_confidence, class_thresholds,
                 min_annotator_confidence, group_table, member, device, force):
    """Keep an unlabeled clip only when the stage-1 model and an annotator agree (and both are
    confident enough); write name,discrete,confidence,annotator_label,annotator_confidence."""
    with user_errors():
        sel = run_pseudo_label(run_dir, cache, annotator_path, out, ids_csv, min_confidence, class_thresholds,
                               min_annotator_confidence, group_table, device, member, force).selection
    c = sel.counts
    click.echo(f"{c['candidates']} candidates; annotator answered {c['annotator_answers']} "
               f"({c['annotator_label_outside_classes']} outside the classes); agreement {c['agree']} "
               f"({c['agreement_rate']:.1%} of answered); kept {c['kept']}")
    click.echo("per class (agree -> kept): " + ", ".join(
        f"{k} {c['agree_per_class'][k]}->{v}" for k, v in c["kept_per_class"].items()))
    click.echo(f"pseudo-labels: {out} (+ {out}.meta.json)")
