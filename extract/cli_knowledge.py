"""`cli.py export-annotator`: cached VLM answers -> the annotator file that pseudo-labeling and
re-ranking read (JSONL ``name``, ``label``, ``scores``, ``reasoning`` on request; or CSV
``name,label,confidence``), written by ``extract.annotator.write_annotator``, the format's owner."""
from __future__ import annotations

import click

from .annotator import AnnotatorError, write_annotator
from .cache import CacheError, FeatureCache


def export_answers(cache_dir, feature: str, out, with_reasoning: bool = False) -> tuple[int, int, str]:
    """Write one answer per clip with a cached answer (format by ``out``'s extension, see
    ``write_annotator``). Returns (written, failed, feature key)."""
    cache = FeatureCache(cache_dir)
    key = cache.resolve(feature)
    fs = cache.feature_set(key)
    if fs.kind != "record" or fs.meta.get("modality") not in (None, "knowledge"):
        raise CacheError(f"feature {key} in {cache_dir} is not VLM answers (kind {fs.kind}, modality "
                         f"{fs.meta.get('modality')}); pass --feature vlm or a vlm-... key")
    ids = sorted(fs.done_ids())
    batch = fs.read(ids)
    rows = ({"name": cid, "label": rec["label"], "scores": rec.get("scores"),
             "reasoning": rec.get("reasoning") if with_reasoning else None}
            for cid, rec in zip(ids, batch.data) if rec and rec.get("label") is not None)
    written = write_annotator(out, rows)
    return written, len(fs.failures()), key


@click.command("export-annotator")
@click.option("--cache", "cache_dir", default="cache", show_default=True, type=click.Path(file_okay=False),
              help="Feature cache folder.")
@click.option("--feature", default="vlm", show_default=True,
              help="The VLM feature set: extractor name (when unambiguous) or full key (see `cache info`).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Annotator file to write: .jsonl (name, label, scores) or .csv (name, label, confidence).")
@click.option("--with-reasoning", is_flag=True, help="Also write each answer's reasoning text.")
def export_annotator_cmd(cache_dir, feature, out, with_reasoning):
    """Export cached VLM answers (`vlm` extractor) as an annotator JSONL file for fit/ensemble.

    Names are clip ids (the file stem for a flat video folder, as in labels CSVs). Failed clips (no answer,
    invalid JSON, unknown class) are not written; `cache info` lists their reasons.
    """
    try:
        written, failed, key = export_answers(cache_dir, feature, out, with_reasoning)
    except (CacheError, AnnotatorError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"exported {written} answers from {key} to {out} ({failed} clips without a valid answer)")
