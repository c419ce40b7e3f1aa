"""``ensemble`` and ``evaluate`` as Python functions (the library behind the two commands).

    from ensemble import ensemble, evaluate
    res = ensemble(["runs/stage1", "runs/stage2"], "predictions.csv", rules="mer2025", annotator="gemini.jsonl")
    rep = evaluate(res.predictions, "test_labels.csv", runs=res.run_dirs)
    rep.metrics["weighted_f1"]

Options and defaults live in ``EnsembleConfig``; warnings go to the ``moe.ensemble`` logger and are
kept in the results' ``notes``.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from extract.annotator import AnnotatorError, load_annotator
from extract.outputs import WRITTEN_BY, OutputError, check_output, check_output_dir, read_record, swap_into_place
from extract.registry import toolkit_version
from extract.tables import read_rows

from .calibration import TemperatureScaler, ece
from .members import RunDirError, check_same_classes, load_members, peek_classes, read_labels_csv
from .pipeline import EnsemblePipeline
from .predictions import (PredictionsError, read_details, read_meta, read_predictions, sidecar_paths, verify_meta,
                          write_predictions)
from .report import REPORT_RECORD, classification_metrics, confusion, member_table, oof_stage_table, write_report
from .reranking import RulesError, load_rules, parse_rules
from .voting import VOTES

LOG = logging.getLogger("moe.ensemble")
USER_ERRORS = (RunDirError, RulesError, AnnotatorError, PredictionsError, OutputError)


class EnsembleError(PredictionsError):
    """A bad ensemble option (the message says which and why)."""


@dataclass
class EnsembleConfig:
    """Every option of ``ensemble`` with its default (one source for the CLI and the Python API)."""

    vote: str = "reliance"          # hard | soft | reliance
    rules: str | None = None        # a rules YAML file or the name of a shipped sample (mer2025 ...)
    annotator: str | None = None    # annotator answers for annotator_override
    power: str | float = "auto"     # reliance exponent, or 'auto' (chosen on out-of-fold rows)
    ids: str | None = None          # CSV with a name column: predict exactly these ids
    cross_fit: bool = True          # also score the recipe by cross-fitting on out-of-fold rows
    force: bool = False             # replace outputs this command did not write
    progress: bool = True


@dataclass
class EnsembleResult:
    predictions: Path
    paths: dict[str, Path]
    run_dirs: list[str]
    ids: list[str]
    labels: list[str]               # predicted class per id
    classes: list[str]
    stages: list[dict]              # out-of-fold weighted F1 after the vote and after each rule
    changes: dict[str, int]         # rows each rule changed
    meta: dict
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _read_ids(path) -> list[str]:
    cols, rows = read_rows(path, (), PredictionsError, "--ids file")
    if "name" not in cols:
        raise PredictionsError(f"--ids file {path} has no 'name' column")
    return [n for n in ((r["name"] or "").strip() for r in rows) if n]


def check_classes(run_dirs) -> list[str]:
    """The runs' class order from their classes.json alone (cheap), so that rules are checked before any work."""
    return check_same_classes(run_dirs, map(peek_classes, run_dirs))


def _tuned_on(ms, pipeline) -> dict:
    runs = ", ".join(str(r.path) for r in ms.runs)
    parts = [f"Member weights and thresholds were tuned on the out-of-fold predictions of {len(ms.y)} labeled ids "
             f"(labels.csv of {runs}); none of the {len(ms.target.ids)} predicted ids was used for tuning."]
    if ms.counts.get("pseudo_ids_left_out"):
        parts.append(f"{ms.counts['pseudo_ids_left_out']} pseudo-labeled ids were left out of tuning.")
    if pipeline.vote == "reliance":
        v = pipeline.voter_
        how = "chosen from the grid on those rows" if pipeline.power == "auto" else "given"
        parts.append(f"Reliance weights w_m = max(F1_m - F1_chance, 0)^p normalised, F1_chance = "
                     f"{v.chance_f1_:.4f}, p = {v.power_} ({how}).")
    for r in pipeline.rules.rules:
        if r.tuned_:
            parts.append(f"Rule {r.label}: {', '.join(f'{k} = {v}' for k, v in r.tuned_.items())} tuned on those rows.")
        if r.name == "prior_correction":
            parts.append(f"Rule {r.label} fits its class factors on the predicted probabilities of the rows it is "
                         "applied to (no labels)" + (", target = labeled class shares." if r.params["target"] ==
                                                     "labeled" else ", target given in the rules file."))
    return {"rows": int(len(ms.y)), "runs": [str(r.path) for r in ms.runs], "text": " ".join(parts)}


def _power(value):
    if value == "auto":
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise EnsembleError(f"--power {value!r}: give a number or 'auto'") from None


def ensemble(run_dirs, out="predictions.csv", config: EnsembleConfig | None = None, **options) -> EnsembleResult:
    """Vote the members of RUN_DIRs (every expert, fused and routed output), apply re-ranking rules, and
    write ``out`` (name,discrete) with a details sidecar and provenance. Weights and 'auto' thresholds
    are tuned on out-of-fold rows of labeled ids only."""
    t0 = time.time()
    cfg = replace(config or EnsembleConfig(), **options)
    run_dirs = [str(r) for r in ([run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs)]
    if cfg.vote not in VOTES:
        raise EnsembleError(f"--vote {cfg.vote!r}: choose one of {', '.join(VOTES)}")
    power = _power(cfg.power)
    notes: list[str] = []
    side = sidecar_paths(out)
    check_output(out, "ensemble", [side["meta"], side["details"]], cfg.force)
    classes = check_classes(run_dirs)
    rules = (load_rules(cfg.rules, classes, have_annotator=cfg.annotator is not None) if cfg.rules
             else parse_rules([], classes))
    ann = load_annotator(cfg.annotator) if cfg.annotator else None
    target_ids = _read_ids(cfg.ids) if cfg.ids else None
    if cfg.vote != "reliance" and power != "auto":
        notes.append(f"--power is only used by --vote reliance (ignored for {cfg.vote})")
    ms = load_members(run_dirs, target_ids=target_ids, progress=cfg.progress)
    try:
        pipeline = EnsemblePipeline(classes, cfg.vote, power, rules, ann).fit(ms.tuning, ms.y)
    except ValueError as exc:  # reliance without labeled rows, a bad power
        raise EnsembleError(str(exc)) from None
    result = pipeline.run(ms.target)
    stages = oof_stage_table(ms, pipeline, cross_fitted=cfg.cross_fit) if len(ms.y) else []
    labels = result.final.labels
    n_nomember = int(result.vote.no_member.sum())
    changes = {st.name: int(st.changed.sum()) for st in result.stages[1:]}
    notes += list(ms.notes) + list(pipeline.voter_.notes) + [n for r in rules.rules for n in r.notes_]
    if not ms.target.ids:
        notes.append("no id to predict: the runs' test/ files are empty (and no --ids given); "
                     "predictions.csv holds only its header")
    if ann is not None:
        notes += ann.problems[:20]
    if ann is not None and not rules.needs_annotator:
        notes.append(f"--annotator {cfg.annotator} was given but no rule uses it (add an annotator_override rule)")
    if n_nomember:
        notes.append(f"{n_nomember} predicted ids have no member at all: they got the labeled majority class")
    described = pipeline.describe(ms.names)
    meta = {
        WRITTEN_BY: "ensemble", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "toolkit_version": toolkit_version(),
        "arguments": {"run_dirs": run_dirs, "out": str(out), "vote": cfg.vote, "rules": cfg.rules,
                      "annotator": cfg.annotator, "power": cfg.power, "ids": cfg.ids, "cross_fit": cfg.cross_fit},
        "classes": classes, "vote": cfg.vote, "power": pipeline.voter_.power_, "power_requested": cfg.power,
        "runs": [r.provenance() for r in ms.runs],
        "members": described["members"],
        "power_grid_oof_weighted_f1": described["power_grid_oof_weighted_f1"],
        "rules_file": str(rules.path) if rules.path else None,
        "rules": [r.entry for r in rules.rules],
        "rules_applied": described["rules"],
        "annotator": ann.summary(classes) if ann else None,
        "ids_file": str(cfg.ids) if cfg.ids else None,
        "tuned_on": _tuned_on(ms, pipeline),
        "counts": {**ms.counts, "predicted": len(ms.target.ids), "without_member": n_nomember},
        "changes_per_rule": changes,
        "rule_info": {st.name: st.info for st in result.stages[1:] if st.info},
        "oof_stages": stages, "notes": notes,
    }
    scaler = TemperatureScaler().fit(pipeline.fit_result_.final.scores, ms.y) if len(ms.y) else None
    calibrated = scaler.transform(result.final.scores) if scaler is not None and len(ms.target.ids) else None
    if scaler is not None:
        oof_raw = pipeline.fit_result_.final.scores
        meta["calibration"] = {"method": "temperature", "temperature": scaler.temperature_, "fitted_on_rows": len(ms.y),
                               "oof_ece_before": ece(oof_raw, ms.y), "oof_ece_after": ece(scaler.transform(oof_raw), ms.y)}
    paths = write_predictions(out, ms.target.ids, labels, classes, result, meta, calibrated)
    for n in notes:
        LOG.info(n)
    return EnsembleResult(Path(out), paths, run_dirs, list(ms.target.ids), [classes[k] for k in labels], classes,
                          stages, changes, meta, notes, time.time() - t0)


# -- evaluate -----------------------------------------------------------------------------------------

@dataclass
class EvaluationResult:
    report_dir: Path
    paths: dict[str, Path]
    metrics: dict                   # weighted_f1, macro_f1, accuracy, n, per_class
    counts: dict
    members: list[dict] | None
    stages: list[dict] | None
    notes: list[str] = field(default_factory=list)
    calibration: dict | None = None   # temperature, ece_before, ece_after on the scored ids
    routers: list[dict] = field(default_factory=list)  # mean router weight per expert per true class, per run


def evaluate(predictions, labels, out=None, runs=(), force: bool = False) -> EvaluationResult:
    """Score ``predictions`` (name,discrete) against ``labels``: weighted F1, macro F1, accuracy, per-class
    precision and recall, confusion matrix; with ``runs`` also per-member and per-rule OOF tables. The
    report folder (default ``<predictions>.report``) is published whole."""
    runs = [str(r) for r in runs]
    notes: list[str] = []
    preds = read_predictions(predictions)
    meta = read_meta(predictions)
    if meta is not None and not verify_meta(predictions, meta):
        notes.append(f"{sidecar_paths(predictions)['meta'].name} does not belong to {predictions} (its checksum "
                     "differs: written by another run): its provenance is ignored")
        meta = None
    classes = list(meta["classes"]) if meta and meta.get("classes") else []
    truth = read_labels_csv(labels)
    out = Path(out) if out else Path(f"{Path(predictions).with_suffix('')}.report")
    check_output_dir(out, "evaluate", REPORT_RECORD, force)
    if meta is None and not notes:
        notes.append(f"no {sidecar_paths(predictions)['meta'].name} next to {predictions}: tuning provenance unknown")
    extra = sorted({*truth.values(), *preds.values()} - set(classes))
    if classes and extra:
        notes.append(f"labels or predictions outside the ensemble's classes: {', '.join(extra)} (added to the table)")
    classes = classes + extra
    cidx = {c: i for i, c in enumerate(classes)}
    matched = sorted(set(preds) & set(truth))
    y = np.array([cidx[truth[n]] for n in matched], np.int64)
    p = np.array([cidx[preds[n]] for n in matched], np.int64)
    counts = {"predictions": len(preds), "labels": len(truth), "matched": len(matched),
              "predictions_without_label": len(set(preds) - set(truth)),
              "labels_without_prediction": len(set(truth) - set(preds))}
    if not matched:
        raise PredictionsError(f"no id of {predictions} has a label in {labels}: nothing to score "
                               "(are they the same data set?)")
    metrics = classification_metrics(y, p, classes)
    cm = confusion(y, p, len(classes))
    members = stage_rows = None
    routers = []
    if runs:
        members, stage_rows, more = _oof_tables(runs, list(preds), meta)
        notes += more
        from models.run_dir import open_run

        from .explain import router_by_class

        routers = [r for r in (router_by_class(open_run(d)) for d in runs) if r is not None]
    calibration = None
    temperature = ((meta or {}).get("calibration") or {}).get("temperature")
    if temperature is not None and meta and meta.get("classes"):
        scores = read_details(predictions, meta["classes"])
        have = [n for n in matched if n in scores and truth[n] in meta["classes"]]
        if have:
            raw = np.stack([scores[n] for n in have])
            known = [cidx[truth[n]] for n in have]
            calibration = {"raw": raw, "calibrated": TemperatureScaler(temperature).fit(raw, []).transform(raw),
                           "y": np.array(known), "temperature": float(temperature)}
    sources = {"predictions": str(predictions), "labels": str(labels), "runs": ", ".join(runs) or "none",
               "ensemble created": (meta or {}).get("created", "unknown"), "evaluated": time.strftime("%Y-%m-%d %H:%M")}
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        paths = write_report(stage, metrics, cm, classes, counts, meta, members, stage_rows, notes, sources,
                             calibration, routers)
        old = read_record(out / REPORT_RECORD) or {}
        swap_into_place(stage, out, list(old.get("files", [])) + [REPORT_RECORD], LOG)
    except BaseException:
        import shutil

        shutil.rmtree(stage, ignore_errors=True)
        raise
    paths = {k: out / v.name for k, v in paths.items()}
    for n in notes:
        LOG.info(n)
    cal = None
    if calibration is not None:
        cal = {"temperature": calibration["temperature"], "ece_before": ece(calibration["raw"], calibration["y"]),
               "ece_after": ece(calibration["calibrated"], calibration["y"])}
    return EvaluationResult(out, paths, metrics, counts, members, stage_rows, notes, cal, routers)


def _oof_tables(runs, predicted_ids, meta):
    """Rebuild the pipeline the predictions were made with (from the meta) and score it out-of-fold."""
    notes = []
    classes = check_classes(runs)
    vote = (meta or {}).get("vote", "reliance")
    power = (meta or {}).get("power_requested", "auto")
    if meta is None:
        notes.append("per-rule table: no meta file, so the default recipe (reliance vote, no rules) was scored")
    ann = None
    ann_path = ((meta or {}).get("annotator") or {}).get("path")
    if ann_path:
        try:
            ann = load_annotator(ann_path)
        except AnnotatorError as exc:
            notes.append(f"annotator rules left out of the out-of-fold table: {exc}")
    entries = list((meta or {}).get("rules") or [])
    if ann is None:
        kept = [e for e in entries if e.get("rule") != "annotator_override"]
        if len(kept) != len(entries):
            notes.append("annotator_override left out of the out-of-fold table (no annotator file)")
        entries = kept
    src = f"{(meta or {}).get('rules_file')} (as recorded in the meta)"
    rules = parse_rules(entries, classes, src, have_annotator=ann is not None)
    ms = load_members(runs, target_ids=predicted_ids, progress=True)
    notes += ms.notes
    if not len(ms.y):
        notes.append("the runs have no out-of-fold rows of labeled ids outside the predictions: no OOF tables")
        return None, None, notes
    pipeline = EnsemblePipeline(ms.classes, vote, _power(power), rules, ann).fit(ms.tuning, ms.y)
    return member_table(ms, pipeline), oof_stage_table(ms, pipeline), notes

