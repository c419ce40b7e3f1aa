"""The whole chain on a small SYNTHETIC data set, through the Python API (what ``cli.py demo`` runs).

It doubles as the example of driving the toolkit from Python: extract -> fit -> pseudo-label ->
fit stage 2 -> ensemble -> evaluate, each call returning an object with its results and paths.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from extract.api import extract
from extract.defaults import DEFAULT_FEATURES, feature_names
from extract.demo_data import make_demo_set
from models.fitting import FitResult, fit
from models.pseudo import PseudoResult, pseudo_label

from .api import EnsembleResult, EvaluationResult, ensemble, evaluate
from .bundle import export_bundle
from .recogniser import Recogniser


@dataclass
class DemoResult:
    data: dict
    cache: Path
    stage1: FitResult
    pseudo: PseudoResult
    stage2: FitResult
    ensemble: EnsembleResult
    report: EvaluationResult
    bundle: Path
    recognised: list
    seconds: float


def run_demo(out_dir="demo-out", labeled_per_class: int = 12, unlabeled_per_class: int = 6, epochs: int = 25,
             jobs: int = 2, min_confidence: float = 0.5, step=lambda n, text: None,
             features: str = DEFAULT_FEATURES) -> DemoResult:
    """``features``: the extractor specs (default: the offline default set); one expert per set."""
    t0 = time.time()
    out = Path(out_dir)
    step(1, "making a SYNTHETIC data set (tones, a warped public-domain photo, template sentences)")
    data = make_demo_set(out / "data", labeled_per_class, unlabeled_per_class)
    cache = out / "cache"
    step(2, f"extract {features}")
    extract(data["videos"], cache, features=features, transcripts=data["transcripts"], jobs=jobs)
    experts = feature_names(features)
    common = dict(groups="speaker", folds=4, epochs=epochs, normalize="pool", hidden=64, heads=4, threads=1)
    step(3, f"fit stage 1 (MoE over {len(experts)} experts, speaker-grouped 4-fold CV)")
    s1 = fit(cache, data["labels"], experts, out / "run-stage1", **common)
    step(4, "pseudo-label: keep unlabeled clips where stage 1 and the (simulated) annotator agree")
    pl = pseudo_label(s1.run_dir, cache, data["annotator"], out / "pseudo.csv", min_confidence=min_confidence)
    step(5, "fit stage 2 (labeled + pseudo-labeled clips, joint)")
    s2 = fit(cache, data["labels"], experts, out / "run-stage2", pseudo=pl.path, stage2="joint", **common)
    step(6, "ensemble both runs (reliance vote) + the paper's rules (worried yields; annotator override)")
    ens = ensemble([s1.run_dir, s2.run_dir], out / "predictions.csv", rules="mer2025", annotator=data["annotator"])
    step(7, "evaluate against the synthetic truth of the unlabeled clips")
    rep = evaluate(ens.predictions, data["truth"], out / "report", runs=[s1.run_dir, s2.run_dir])
    step(8, "export the system as a bundle and recognise two fresh synthetic clips it never saw")
    bundle = export_bundle([s1.run_dir, s2.run_dir], out / "model", ensemble_meta=ens.paths["meta"])
    fresh = make_fresh_clips(out / "fresh", ("happy", "sad"))
    with Recogniser.load(bundle) as rec:
        recognised = rec.predict_many(sorted(fresh.glob("*.mp4")))
    return DemoResult(data, cache, s1, pl, s2, ens, rep, bundle, recognised, time.time() - t0)


def make_fresh_clips(folder: Path, classes, seed: int = 99) -> Path:
    """New synthetic clips (one per class, a new speaker) written as ``<class>-new.mp4``."""
    import numpy as np

    from extract.demo_data import _base_face, face_for, voice_for, write_media

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = _base_face()
    for cls in classes:
        frames = np.stack([face_for(cls, rng, base) for _ in range(20)])
        write_media(folder / f"{cls}-new.mp4", frames, fps=10, audio=voice_for(cls, rng, 1.1, 2.0, 16000), rate=16000)
    return folder
