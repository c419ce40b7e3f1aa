"""moe-emotion command line: extract -> fit -> ensemble (see README.md).

Run as ``python cli.py COMMAND --help`` from a checkout, or ``moe-emotion COMMAND`` once installed.
"""
from __future__ import annotations

import importlib

import click

#: command name -> "module:attribute"; a module is imported when its command is used, so
#: `cli.py extract` or `cache info` do not pay for importing torch and scikit-learn (fit, ensemble)
COMMANDS = {
    "extract": "extract.cli_extract:extract_cmd",
    "features": "extract.cli_extract:features_cmd",
    "cache": "extract.cli_extract:cache_group",
    "export-annotator": "extract.cli_knowledge:export_annotator_cmd",
    "fit": "models.cli_fit:fit",
    "predict": "models.cli_fit:predict",
    "pseudo-label": "models.cli_pseudo:pseudo_label",
    "ensemble": "ensemble.cli_ensemble:ensemble",
    "evaluate": "ensemble.cli_ensemble:evaluate",
}


def load_command(target: str) -> click.Command:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


class LazyGroup(click.Group):
    """A click group whose subcommands (``lazy``: name -> "module:attribute") are imported only
    when used; listing their names imports nothing (click's documented lazy-loading pattern)."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx, name):
        if name in self.lazy:
            return load_command(self.lazy[name])
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"],
                                                             "show_default": True})
def main():
    """Multimodal emotion recognition from video: cache frozen embeddings once, train small expert
    heads and a Mixture-of-Experts router on the cache, use unlabeled clips through consensus
    pseudo-labels, and write voted, re-ranked predictions (after "More Is Better", MER2025-SEMI).

    Chain: extract VIDEO_DIR -> fit -> (pseudo-label -> fit --pseudo) -> ensemble -> evaluate."""


@click.command("demo")
@click.option("--out", "out_dir", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the synthetic data, cache, runs, predictions and report.")
@click.option("--labeled-per-class", default=12, show_default=True, type=click.IntRange(5, None),
              help="Labeled synthetic clips per class.")
@click.option("--unlabeled-per-class", default=6, show_default=True, type=click.IntRange(1, None),
              help="Unlabeled synthetic clips per class (predicted, and used through pseudo-labels).")
@click.option("--epochs", default=25, show_default=True, type=click.IntRange(1, None), help="Training epochs per fit.")
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(1, None), help="Extraction workers.")
@click.option("--min-confidence", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Stage-1 confidence a pseudo-label needs (lower it for very small sets).")
@click.pass_context
def demo(ctx, out_dir, labeled_per_class, unlabeled_per_class, epochs, jobs, min_confidence):
    """Run the whole chain on a small SYNTHETIC data set that it makes itself (no download):
    extract (offline default extractors) -> fit -> pseudo-label -> fit stage 2 -> ensemble with the
    sample rules -> evaluate. The data is synthetic: figures only show that the chain works."""
    import time
    from pathlib import Path

    from ensemble.cli_ensemble import ensemble, evaluate
    from extract.cli_extract import extract_cmd
    from extract.defaults import DEFAULT_FEATURES, default_feature_names
    from extract.demo_data import make_demo_set
    from models.cli_fit import fit
    from models.cli_pseudo import pseudo_label

    t0 = time.time()
    out = Path(out_dir)
    step = lambda n, text: click.secho(f"\n[{n}/7] {text}", bold=True)  # noqa: E731
    step(1, "making a SYNTHETIC data set (tones, a warped public-domain photo, template sentences)")
    data = make_demo_set(out / "data", labeled_per_class, unlabeled_per_class)
    click.echo(f"  {data['videos']}: {len(list(data['videos'].glob('*.mp4')))} clips; labels {data['labels']}")
    cache = out / "cache"
    step(2, f"extract {DEFAULT_FEATURES}")
    ctx.invoke(extract_cmd, video_dir=str(data["videos"]), cache_dir=str(cache), features=(DEFAULT_FEATURES,),
               transcripts=str(data["transcripts"]), jobs=jobs)
    experts = default_feature_names()
    common = dict(cache=str(cache), labels=str(data["labels"]), features=",".join(experts),
                  groups="speaker", folds=4, epochs=epochs, normalize="pool", hidden=64, heads=4, threads=1)
    stage1, stage2 = out / "run-stage1", out / "run-stage2"
    step(3, f"fit stage 1 (MoE over {len(experts)} experts, speaker-grouped 4-fold CV)")
    ctx.invoke(fit, out=str(stage1), **common)
    pseudo = out / "pseudo.csv"
    step(4, "pseudo-label: keep unlabeled clips where stage 1 and the (simulated) annotator agree")
    ctx.invoke(pseudo_label, run_dir=str(stage1), cache=str(cache), annotator_path=str(data["annotator"]),
               out=str(pseudo), min_confidence=min_confidence)
    step(5, "fit stage 2 (labeled + pseudo-labeled clips, joint)")
    ctx.invoke(fit, out=str(stage2), pseudo=str(pseudo), stage2="joint", **common)
    preds = out / "predictions.csv"
    step(6, "ensemble both runs (reliance vote) + the paper's rules (worried yields; annotator override)")
    ctx.invoke(ensemble, run_dirs=(str(stage1), str(stage2)), out=str(preds), rules_spec="mer2025",
               annotator=str(data["annotator"]))
    step(7, "evaluate against the synthetic truth of the unlabeled clips")
    report = out / "report"
    ctx.invoke(evaluate, predictions=str(preds), labels_path=str(data["truth"]), out_dir=str(report),
               runs=(str(stage1), str(stage2)))
    click.secho(f"\ndemo finished in {time.time() - t0:.0f} s (SYNTHETIC data).", bold=True)
    click.echo(f"  predictions: {preds}\n  report: {report / 'report.md'}\n  confusion matrix: "
               f"{report / 'confusion.png'}\n  runs: {stage1}, {stage2}; cache: {cache}")


main.add_command(demo)

if __name__ == "__main__":
    main()
