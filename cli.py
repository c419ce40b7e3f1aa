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
    "export": "ensemble.cli_bundle:export_cmd",
    "recognise": "ensemble.cli_bundle:recognise_cmd",
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
@click.option("--verbose", "-v", is_flag=True, help="Also print notes and other libraries' log messages.")
def main(verbose):
    """Multimodal emotion recognition from video: cache frozen embeddings once, train small expert
    heads and a Mixture-of-Experts router on the cache, use unlabeled clips through consensus
    pseudo-labels, and write voted, re-ranked predictions (after "More Is Better", MER2025-SEMI).

    Chain: extract VIDEO_DIR -> fit -> (pseudo-label -> fit --pseudo) -> ensemble -> evaluate."""
    from extract.logs import setup_cli_logging

    setup_cli_logging(verbose)


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
    from extract.cli_errors import user_errors
    from ensemble.demo import run_demo

    step = lambda n, text: click.secho(f"\n[{n}/8] {text}", bold=True)  # noqa: E731
    with user_errors():
        res = run_demo(out_dir, labeled_per_class, unlabeled_per_class, epochs, jobs, min_confidence, step=step)
    click.echo(f"  experts (stage 1, out-of-fold weighted F1): " + ", ".join(
        f"{r['member']} {r['weighted_f1']:.3f}" for r in res.stage1.metrics))
    click.echo(f"  pseudo-labels kept: {res.pseudo.counts['kept']} of {res.pseudo.counts['candidates']}")
    click.echo(f"  final predictions on the unlabeled clips: weighted F1 {res.report.metrics['weighted_f1']:.4f}, "
               f"accuracy {res.report.metrics['accuracy']:.4f} (n={res.report.metrics['n']})")
    for r in res.recognised:
        click.echo(f"  recognised {r.source}: {r.label} (calibrated confidence {r.confidence:.2f}; top experts "
                   + ", ".join(f"{e} {w:.2f}" for e, w in sorted(r.router.items(), key=lambda kv: -kv[1])[:2]) + ")")
    click.secho(f"\ndemo finished in {res.seconds:.0f} s (SYNTHETIC data).", bold=True)
    click.echo(f"  predictions: {res.ensemble.predictions}\n  report: {res.report.paths['report']}\n  confusion matrix: "
               f"{res.report.paths['confusion']}\n  runs: {res.stage1.run_dir}, {res.stage2.run_dir}; cache: {res.cache}"
               f"\n  bundle: {res.bundle} (python cli.py recognise {res.bundle} CLIP...)")


main.add_command(demo)


def run() -> None:
    """The command line's entry point: :func:`main`, then out without the interpreter's teardown of
    the libraries a command loaded (2.1-2.2 s after torch, CTranslate2 and MediaPipe here: a fifth of a
    cold `recognise` of one clip). Everything a command writes is published (renamed into place)
    before it returns; here the exit handlers still run (log files, landmarkers, temporary folders)
    and the output is flushed, then the process ends with the command's exit code."""
    import atexit
    import os
    import sys

    try:
        main()
        code = 0
    except SystemExit as exc:  # click ends every command this way, errors included
        code = exc.code
    if not isinstance(code, int):  # SystemExit("message") or None
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    atexit._run_exitfuncs()  # what a normal exit runs first (logging.shutdown among them)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
