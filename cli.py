"""moe-emotion command line: extract -> fit -> ensemble (see README.md).

Run as ``python cli.py COMMAND --help`` from a checkout, or ``moe-emotion COMMAND`` once installed.
"""
from __future__ import annotations

import click

from ensemble.cli_ensemble import ensemble, evaluate
from extract.cli_extract import cache_group, extract_cmd, features_cmd
from extract.cli_knowledge import export_annotator_cmd
from models.cli_fit import fit, predict
from models.cli_pseudo import pseudo_label


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main():
    """Multimodal emotion recognition from video: cache frozen embeddings once, train small expert
    heads and a Mixture-of-Experts router on the cache, use unlabeled clips through consensus
    pseudo-labels, and write voted, re-ranked predictions (after "More Is Better", MER2025-SEMI).

    Chain: extract VIDEO_DIR -> fit -> (pseudo-label -> fit --pseudo) -> ensemble -> evaluate."""


for command in (extract_cmd, features_cmd, cache_group, export_annotator_cmd, fit, predict,
                pseudo_label, ensemble, evaluate):
    main.add_command(command)

if __name__ == "__main__":
    main()
