"""``cli.py export`` and ``cli.py recognise``: parse options, call ensemble.bundle / ensemble.recogniser,
print."""
from __future__ import annotations

import click

from extract.cli_errors import user_errors

from .api import USER_ERRORS
from .reranking import sample_rules
from .voting import VOTES


def _errors():
    from extract.runner import UsageError

    from .bundle import BundleError

    return user_errors(*USER_ERRORS, BundleError, UsageError)


@click.command("export")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False), metavar="RUN_DIR...")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle folder to write.")
@click.option("--ensemble", "ensemble_meta", default=None, type=click.Path(dir_okay=False),
              help="predictions.meta.json of `cli.py ensemble`: take its vote, power and rules (as applied).")
@click.option("--vote", type=click.Choice(list(VOTES)), default="reliance", help="Without --ensemble: the vote.")
@click.option("--rules", "rules_spec", default=None, metavar="FILE|NAME",
              help="Without --ensemble: rules YAML or a shipped sample: " + ", ".join(sample_rules()) + ".")
@click.option("--annotator", default=None, type=click.Path(dir_okay=False),
              help="Without --ensemble: annotator answers the rules are tuned with.")
@click.option("--power", default="auto", help="Without --ensemble: reliance exponent or 'auto'.")
@click.option("--force", is_flag=True, help="Write into --out even when it is not a bundle written by export.")
def export_cmd(run_dirs, out, ensemble_meta, vote, rules_spec, annotator, power, force):
    """Export fitted RUN_DIRs and their ensemble as a bundle that `recognise` applies to new videos:
    feature specs, model files, the ensemble's tuning rows, calibration, checksums and a model card."""
    from .bundle import export_bundle, open_bundle

    with _errors():
        path = export_bundle(run_dirs, out, ensemble_meta, vote, power, rules_spec, annotator, force)
        b = open_bundle(path)
    rec = b.record
    click.echo(f"bundle {path}: {len(rec['run_names'])} runs, {len(rec['members'])} members, "
               f"{len(rec['features'])} features, classes {', '.join(rec['classes'])}; "
               f"{len(rec['files'])} files with checksums; model card {path}/README.md")


@click.command("recognise")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="CLIP|FOLDER...")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Results CSV (or JSON with --json).")
@click.option("--json", "as_json", is_flag=True, help="Write --out as JSON with every field (per-expert "
              "probabilities, router weights); without --out, print JSON.")
@click.option("--cache", default=None, type=click.Path(file_okay=False),
              help="Feature cache to extract into (default: a temporary one); a re-run is then instant.")
@click.option("--annotator", default=None, type=click.Path(dir_okay=False),
              help="Annotator answers for the new clips: enables rules that need them.")
@click.option("--abstain-below", default=None, type=click.FloatRange(0, 1),
              help="Mark predictions whose calibrated confidence is below P as abstained.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Device for the extractors and the models (auto: a GPU when present).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, None), help="Extraction workers.")
@click.option("--relocate", multiple=True, metavar="OLD=NEW",
              help="A local model the bundle names OLD is now at NEW (another machine, a moved folder); "
                   "accepted only with the same checksum. Repeatable.")
@click.option("--force", is_flag=True, help="Replace --out even when recognise did not write it.")
def recognise_cmd(bundle, paths, out, as_json, cache, annotator, abstain_below, device, jobs, relocate, force):
    """Recognise the emotion of new clips with a bundle from `cli.py export`: extract exactly its
    features (one decode per clip), predict with every model, vote, apply the rules, calibrate."""
    import json

    from .recogniser import Recogniser, write_results
    from .relocate import parse_relocations

    with _errors():
        if out:
            from extract.outputs import check_output

            check_output(out, "recognise", [f"{out}.meta.json"], force)
        # with --cache, one process extracts (a re-run finds every set there): no audio worker to start
        moved = parse_relocations(relocate)
        with Recogniser.load(bundle, annotator, device, split=cache is None, relocate=moved) as rec:
            results = rec.predict_many(paths, cache, abstain_below, progress=True, jobs=jobs)
        if out:
            write_results(out, results, rec.classes, bundle, as_json, force)
    if as_json and not out:
        click.echo(json.dumps([r.as_dict() for r in results], indent=1, ensure_ascii=False))
        return
    width = max([4] + [len(r.clip) for r in results])
    click.echo(f"{'clip':<{width}}  {'label':<10} {'conf':>5}  {'top-3':<36} {'router top-2':<28} absent")
    for r in results:
        if r.label is None:
            click.echo(f"{r.clip:<{width}}  FAILED: {r.failure}")
            continue
        top3 = " ".join(f"{c}:{p:.2f}" for c, p in r.top3)
        router = " ".join(f"{e}:{w:.2f}" for e, w in sorted(r.router.items(), key=lambda kv: -kv[1])[:2])
        label = r.label + ("?" if r.abstained else "")
        click.echo(f"{r.clip:<{width}}  {label:<10} {r.confidence:>5.2f}  {top3:<36} {router:<28} "
                   f"{', '.join(r.absent) or '-'}")
    n_fail = sum(r.label is None for r in results)
    click.echo(f"\n{len(results)} clips: {len(results) - n_fail} recognised, {n_fail} failed"
               + (f", {sum(r.abstained for r in results)} abstained (confidence < {abstain_below}; marked ?)"
                  if abstain_below is not None else ""))
    if rec.skipped_rules:
        click.echo(f"note: rule(s) {', '.join(rec.skipped_rules)} need annotator answers for the new clips and were "
                   "skipped (pass --annotator FILE)")
    if out:
        click.echo(f"results: {out} (+ {out}.meta.json)")
