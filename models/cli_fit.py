"""``cli.py fit`` and ``cli.py predict``: parse options, call models.fitting.fit / models.predicting.predict,
print. Every default comes from ``FitConfig``."""
from __future__ import annotations

import click

from extract.cli_errors import user_errors
from models.fitting import FitConfig, fit as run_fit, format_comparison
from models.heads import HEADS
from models.normalize import NORMALIZERS
from models.run_dir import format_table
from models.train import CLASS_WEIGHTS, MODELS

D = FitConfig()


@click.command("fit")
@click.option("--cache", "cache", required=True, type=click.Path(file_okay=False), help="feature cache directory")
@click.option("--labels", required=True, type=click.Path(dir_okay=False), help="labels CSV: name,discrete[,group...]")
@click.option("--features", required=True, help="feature keys (or short forms, e.g. the extractor name), comma-separated")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="RUN_DIR to publish (a new or empty folder, or an earlier RUN_DIR, replaced once the new run "
                   "is complete)")
@click.option("--classes", default=None, help="class order, comma-separated (default: the labels' classes, sorted)")
@click.option("--groups", default=D.groups, help="labels column whose groups never straddle train/validation (speaker)")
@click.option("--folds", default=D.folds, show_default=True, type=click.IntRange(2, None),
              help="cross-validation folds (stratified; grouped by --groups)")
@click.option("--seeds", default=",".join(map(str, D.seeds)), show_default=True,
              help="comma-separated seeds; results averaged over seeds")
@click.option("--head", default=D.head, show_default=True, type=click.Choice(sorted(HEADS)),
              help="expert head: transformer + MLP classifier (mlp); LightGBM (lgbm) or a standardised logistic "
                   "regression with C tuned by inner cross-validation (logreg: small data) on vector features, "
                   "mlp on the others; or a linear map of the pooled tokens trained with the router (linear)")
@click.option("--model", default=D.model, show_default=True, type=click.Choice(sorted(MODELS)),
              help="moe: experts + fused + router; attention: the MERTools attention baseline")
@click.option("--epochs", default=D.epochs, show_default=True, type=click.IntRange(1, None),
              help="maximum training epochs per fold (early stopping on validation weighted F1)")
@click.option("--batch-size", default=D.batch_size, show_default=True, type=click.IntRange(2, None),
              help="training batch size")
@click.option("--device", default=D.device, show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto: a GPU when present")
@click.option("--normalize", default=D.normalize, show_default=True, type=click.Choice(sorted(NORMALIZERS)),
              help="standardisation statistics: training fold only; every cached clip, labeled or not (pool); "
                   "per group (speaker) with --group-table; per speaker cluster of a speaker embedding for the "
                   "audio experts (cluster: no speaker labels). pool beat fold on held-out speakers in "
                   "bench/bench_fit.py; group beats both when every clip's speaker is known")
@click.option("--group-table", default=None, type=click.Path(dir_okay=False),
              help="CSV name,group for --normalize group (must cover the clips to predict)")
@click.option("--cluster-feature", default=D.cluster_feature, show_default=True,
              help="--normalize cluster: the speaker-embedding feature whose clusters stand in for speakers")
@click.option("--clusters", default=D.clusters, type=click.IntRange(1, None),
              help="--normalize cluster: a fixed number of speaker clusters (default: chosen by silhouette)")
@click.option("--class-weight", default=D.class_weight, show_default=True, type=click.Choice(CLASS_WEIGHTS),
              help="balanced: weight the loss by inverse class frequency")
@click.option("--strict", is_flag=True, help="make skipped ids (absent from the cache, unknown class) fatal")
@click.option("--patience", default=D.patience, show_default=True, type=click.IntRange(1, None),
              help="epochs without a better validation weighted F1 before stopping")
@click.option("--lr", default=D.lr, show_default=True, type=float, help="AdamW learning rate")
@click.option("--hidden", default=D.hidden, show_default=True, type=click.IntRange(4, None),
              help="hidden size of every expert (the paper: 256)")
@click.option("--layers", default=D.layers, show_default=True, type=click.IntRange(1, None), help="transformer layers")
@click.option("--heads", default=D.heads, show_default=True, type=click.IntRange(1, None), help="attention heads")
@click.option("--dropout", default=D.dropout, show_default=True, type=click.FloatRange(0, 0.9), help="dropout rate")
@click.option("--max-frames", default=D.max_frames, show_default=True, type=click.IntRange(1, None),
              help="series features: at most this many frames per clip (evenly subsampled)")
@click.option("--threads", default=D.threads, show_default=True, type=click.IntRange(0, None),
              help="CPU threads for torch and LightGBM (0: torch's default); 1 is often faster on a busy machine")
@click.option("--pseudo", default=None, type=click.Path(dir_okay=False),
              help="stage 2: pseudo-label CSV from `cli.py pseudo-label`; its clips join every training fold and "
                   "never a validation fold")
@click.option("--stage2", default=D.stage2, show_default=True, type=click.Choice(["joint", "pretrain-finetune"]),
              help="joint: train on labeled + pseudo-labeled clips; pretrain-finetune: pre-train on the "
                   "pseudo-labeled clips, then fine-tune on the labeled ones (per fold)")
@click.option("--pseudo-weight", default=D.pseudo_weight, show_default=True,
              type=click.FloatRange(0, None, min_open=True),
              help="loss weight of a pseudo-labeled clip (a labeled clip weighs 1); joint mode only: in "
                   "pretrain-finetune the pseudo rows train alone, so a uniform weight cancels out")
@click.option("--rounds", default=D.rounds, show_default=True, type=click.IntRange(1, None),
              help="repeat pseudo-label -> train this many times (re-labels with the newest run, the same "
                   "annotator and thresholds as --pseudo); earlier rounds go to RUN_DIR-round<k>")
@click.option("--stage1", "stage1", default=None, type=click.Path(file_okay=False),
              help="stage-1 RUN_DIR to compare with (default: the one --pseudo was made from)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def fit(cache, labels, features, out, quiet, **options):
    """Train the experts, fused expert and router (or the attention baseline) with cross-validation on the
    cached features; publish a RUN_DIR with out-of-fold and unlabeled-id probabilities, curves, models and
    metrics."""
    with user_errors():
        res = run_fit(cache, labels, features, out, progress=not quiet, **options)
    for r in res.rounds:
        click.echo(f"earlier round: {r}")
    click.echo(format_table(res.metrics))
    if res.comparison:
        click.echo("\nstage 1 vs stage 2 (out-of-fold weighted F1 on the labeled clips):")
        click.echo(format_comparison(res.comparison, res.config.stage1 or "the run --pseudo came from"))
    click.echo(f"\n{res.n_labeled} labeled clips (out-of-fold), {res.n_test} unlabeled clips predicted, "
               f"{len(res.notes)} warnings, {res.seconds:.1f} s")
    click.echo(f"run directory: {res.run_dir}  (metrics.csv, oof/, test/, models/, curves/, config.yaml, run.json)")


@click.command("predict")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--cache", "cache", required=True, type=click.Path(file_okay=False), help="feature cache directory")
@click.option("--ids", "ids_csv", default=None, type=click.Path(dir_okay=False),
              help="CSV with a name column (default: every cached id of the run's features)")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="probabilities CSV: name,<classes> (+ <out>.meta.json)")
@click.option("--member", default=None, help="which member's probabilities (default: the routed output)")
@click.option("--group-table", default=None, type=click.Path(dir_okay=False),
              help="CSV name,group, for runs fitted with --normalize group")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto: a GPU when present")
@click.option("--strict", is_flag=True, help="make ids without features fatal")
@click.option("--force", is_flag=True, help="replace --out even when this command did not write it")
def predict(run_dir, cache, ids_csv, out, member, group_table, device, strict, force):
    """Class probabilities of clips with a fitted RUN_DIR (mean over its fold and seed models)."""
    from extract.outputs import check_output
    from models.predicting import predict as run_predict, sidecar

    with user_errors():
        check_output(out, "predict", [sidecar(out)], force)
        pred = run_predict(run_dir, cache, ids_csv, group_table, device, strict)
        member = member or pred.routed
        n = pred.write(out, member, force)
    click.echo(f"{n} clips predicted by {member} ({len(pred.run.model_files)} models of {run_dir}); "
               f"{len(pred.ids) - n} without a prediction; written to {out} (+ {sidecar(out).name})")
