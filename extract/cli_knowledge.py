"""`cli.py export-annotator`: cached VLM answers -> the annotator file (JSONL) that pseudo-labeling
and re-ranking read (``name``, ``label``, ``scores``; ``reasoning`` on request)."""
from __future__ import annotations

import json

import click

from .cache import CacheError, FeatureCache, atomic_open


def export_answers(cache_dir, feature: str, out, with_reasoning: bool = False) -> tuple[int, int, str]:
    """Write one JSON line per clip with a cached answer. Returns (written, failed, feature key)."""
    cache = FeatureCache(cache_dir)
    key = cache.resolve(feature)
    fs = cache.feature_set(key)
    if fs.kind != "record" or fs.meta.get("modality") not in (None, "knowledge"):
        raise CacheError(f"feature {key} in {cache_dir} is not VLM answers (kind {fs.kind}, modality "
                         f"{fs.meta.get('modality')}); pass --feature vlm or a vlm-... key")
    ids = sorted(fs.done_ids())
    batch = fs.read(ids)
    written = 0
    with atomic_open(out) as fh:
        for cid, rec in zip(ids, batch.data):
            if not rec or rec.get("label") is None:
                continue
            line = {"name": cid, "label": rec["label"],
                    "scores": rec.get("scores")}
            if with_reasoning:
                line["reasoning"] = rec.get("reasoning")
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            written += 1
    return written, len(fs.failures()), key


@click.command("export-annotator")
@click.option("--cache", "cache_dir", default="cache", show_default=True, type=click.Path(file_okay=False),
              help="Feature cache folder.")
@click.option("--feature", default="vlm", show_default=True,
              help="The VLM feature set: extractor name (when unambiguous) or full key (see `cache info`).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Annotator file to write (JSONL: name, label, scores).")
@click.option("--with-reasoning", is_flag=True, help="Also write each answer's reasoning text.")
def export_annotator_cmd(cache_dir, feature, out, with_reasoning):
    """Export cached VLM answers (`vlm` extractor) as an annotator JSONL file for fit/ensemble.

    Names are clip ids (the file stem for a flat video folder, as in labels CSVs). Failed clips (no answer,
    invalid JSON, unknown class) are not written; `cache info` lists their reasons.
    """
    try:
        written, failed, key = export_answers(cache_dir, feature, out, with_reasoning)
    except CacheError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"exported {written} answers from {key} to {out} ({failed} clips without a valid answer)")
