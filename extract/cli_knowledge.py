"""`cli.py export-annotator`: cached VLM answers -> the annotator file that pseudo-labeling and
re-ranking read (JSONL ``name``, ``label``, ``scores``, ``reasoning`` on request; or CSV
``name,label,confidence``), written by ``extract.annotator.write_annotator``, the format's owner."""
from __future__ import annotations

import click

from .annotator import export_answers
from .cli_errors import user_errors


@click.command("export-annotator")
@click.option("--cache", "cache_dir", default="cache", show_default=True, type=click.Path(file_okay=False),
              help="Feature cache folder.")
@click.option("--feature", default="vlm", show_default=True,
              help="The VLM feature set: extractor name (when unambiguous) or full key (see `cache info`).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Annotator file to write: .jsonl (name, label, scores) or .csv (name, label, confidence).")
@click.option("--with-reasoning", is_flag=True, help="Also write each answer's reasoning text.")
@click.option("--force", is_flag=True, help="Replace --out even when export-annotator did not write it.")
def export_annotator_cmd(cache_dir, feature, out, with_reasoning, force):
    """Export cached VLM answers (`vlm` extractor) as an annotator JSONL file for fit/ensemble.

    Names are clip ids (the file stem for a flat video folder, as in labels CSVs). Failed clips (no answer,
    invalid JSON, unknown class) are not written; `cache info` lists their reasons.
    """
    with user_errors():
        res = export_answers(cache_dir, out, feature, with_reasoning, force)
    click.echo(f"exported {res['written']} answers from {res['key']} to {out} (+ {res['meta'].name}; "
               f"{res['failed']} clips without a valid answer)")
