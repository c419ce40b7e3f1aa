"""The model bundle: a trained system (RUN_DIRs + the fitted ensemble) as one folder that recognises
new videos (``cli.py export``; read by ensemble.recogniser). This module is the format's only writer
and reader.

    bundle.json        format, toolkit version, classes, members, the ensemble recipe (vote, power,
                       rules), calibration, the feature specs of every expert (extractor, config,
                       decode options, model provenance, cache key), the runs, every file + sha256
    runs/<k>/          each run as a model-only RUN_DIR (config, classes, members, metrics, models/*.pt)
    tuning.npz         the out-of-fold member probabilities the ensemble was tuned on (+ labels), so the
                       vote weights and rule thresholds are re-derived exactly, never pickled
    annotator.jsonl    the annotator answers of those rows, when a rule needs an annotator
    README.md          the model card

A bundle is published whole (built beside the target, renamed into place); a changed or missing
file, or a bundle of another format, is refused with a message naming it.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extract.checksum import sha256_file
from extract.errors import UserError
from extract.outputs import WRITTEN_BY, OutputError, enclosing_tool_folder, read_record, swap_into_place
from extract.registry import toolkit_version

LOG = logging.getLogger("moe.ensemble")
FORMAT = "moe-emotion bundle/1"
RECORD = "bundle.json"


class BundleError(UserError, ValueError):
    """A bundle that cannot be written or used (message names the file and what to do)."""



def feature_spec(key: str, meta: dict) -> dict:
    """What rebuilds the extractor of one feature key (from the cache's meta.json)."""
    return {"key": key, "extractor": meta.get("extractor"), "extractor_version": meta.get("extractor_version"),
            "config": meta.get("config"), "decode": meta.get("decode") or {}, "model": meta.get("model"),
            "kind": meta.get("kind"), "modality": meta.get("modality")}


def _recipe_from(meta_path, vote, power, rules, annotator) -> dict:
    if meta_path is None:
        return {"vote": vote, "power": power, "rules": rules, "annotator": annotator, "from": None}
    meta = read_record(Path(meta_path))
    if meta is None or meta.get(WRITTEN_BY) != "ensemble":
        raise BundleError(f"--ensemble {meta_path}: not a predictions.meta.json written by `cli.py ensemble`")
    ann = (meta.get("annotator") or {}).get("path")
    return {"vote": meta.get("vote", "reliance"), "power": meta.get("power_requested", "auto"),
            "rules_entries": meta.get("rules") or [], "rules_file": meta.get("rules_file"), "annotator": ann,
            "from": str(meta_path), "run_dirs": meta.get("arguments", {}).get("run_dirs")}


def export_bundle(run_dirs, out, ensemble_meta=None, vote: str = "reliance", power="auto", rules=None,
                  annotator=None, force: bool = False) -> Path:
    """Write the bundle ``out`` for ``run_dirs`` and the ensemble recipe (from ``ensemble_meta``, a
    predictions.meta.json of `ensemble`, or the options given)."""
    from extract.annotator import load_annotator, write_annotator
    from models.run_dir import RunWriter, open_run

    from .api import _power, check_classes
    from .members import load_members
    from .pipeline import EnsemblePipeline
    from .reranking import load_rules, parse_rules

    out = Path(out)
    inside = enclosing_tool_folder(out / "x")
    if inside:
        raise OutputError(f"--out {out} is inside {inside}: choose a folder outside it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force
                                              and (read_record(out / RECORD) or {}).get(WRITTEN_BY) != "export")):
        raise OutputError(f"--out {out} exists and is not a bundle written by `cli.py export`: refusing to write "
                          "into it; choose a new or empty folder, or pass --force")
    run_dirs = [str(r) for r in ([run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs)]
    recipe = _recipe_from(ensemble_meta, vote, power, rules, annotator)
    if recipe.get("run_dirs") and sorted(map(str, recipe["run_dirs"])) != sorted(run_dirs):
        LOG.warning(f"{ensemble_meta} was made from {recipe['run_dirs']}; exporting {run_dirs}")
    classes = check_classes(run_dirs)
    ann = load_annotator(recipe["annotator"]) if recipe.get("annotator") else None
    if "rules_entries" in recipe:
        rule_set = parse_rules(recipe["rules_entries"], classes, f"{ensemble_meta} (rules as applied)",
                               have_annotator=ann is not None)
    else:
        rule_set = load_rules(recipe["rules"], classes, have_annotator=ann is not None) if recipe["rules"] \
            else parse_rules([], classes)
    ms = load_members(run_dirs)
    pipeline = EnsemblePipeline(classes, recipe["vote"], _power(recipe["power"]), rule_set, ann).fit(ms.tuning, ms.y)
    from .calibration import TemperatureScaler

    scaler = TemperatureScaler().fit(pipeline.fit_result_.final.scores, ms.y)
    runs = [open_run(r) for r in run_dirs]
    features: dict[str, dict] = {}
    for run in runs:
        for key in run.config.get("features", []):
            features[key] = feature_spec(key, (run.config.get("feature_meta") or {}).get(key, {}))

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        run_names = []
        for k, run in enumerate(runs):
            dest = stage / "runs" / f"run{k}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with RunWriter(dest, command="export") as w:
                w.config(run.config)
                w.classes(run.classes)
                w.members(run.members)
                w.write_file("metrics.csv", (run.root / "metrics.csv").read_text(encoding="utf-8"))
                for f in run.model_files:
                    shutil.copyfile(f, w.root / "models" / f.name)
                w.publish()
            run_names.append(ms.runs[k].name)
        np.savez_compressed(stage / "tuning.npz", probs=ms.tuning.probs, present=ms.tuning.present, y=ms.y,
                            ids=np.array(ms.tuning.ids, dtype=str))
        if ann is not None:
            tuning = set(ms.tuning.ids)
            write_annotator(stage / "annotator.jsonl",
                            ({"name": n, "label": a.label, "confidence": a.confidence, "scores": a.scores}
                             for n, a in sorted(ann.answers.items()) if n in tuning))
        described = pipeline.describe(ms.names)
        record = {"format": FORMAT, WRITTEN_BY: "export", "toolkit_version": toolkit_version(),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "classes": classes,
                  "members": [{"name": m.name, "run": k, "member": m.member, "kind": m.kind}
                              for m, k in zip(ms.members, [i for i, r in enumerate(ms.runs) for _ in r.members])],
                  "run_names": run_names,
                  "recipe": {"vote": recipe["vote"], "power": recipe["power"],
                             "rules": [r.entry for r in rule_set.rules],
                             "rules_source": recipe.get("rules_file") or recipe.get("rules"),
                             "annotator_rules": bool(rule_set.needs_annotator)},
                  "calibration": {"method": "temperature", "temperature": scaler.temperature_},
                  "features": list(features.values()),
                  "ensemble": {"members": described["members"], "power": described["power"],
                               "rules": described["rules"], "tuning_rows": int(len(ms.y))},
                  "trained_on": [{"run": str(r.root), "labels": r.config.get("labels"),
                                  "n_labeled": r.config.get("n_labeled"), "cache": r.config.get("cache")}
                                 for r in runs]}
        (stage / "README.md").write_text(model_card(record, ms, pipeline), encoding="utf-8")
        files = {p.relative_to(stage).as_posix(): sha256_file(p) for p in sorted(stage.rglob("*")) if p.is_file()}
        record["files"] = files
        (stage / RECORD).write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
        old = read_record(out / RECORD) or {}
        swap_into_place(stage, out, list(old.get("files", {})) + [RECORD], LOG)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def model_card(record: dict, ms, pipeline) -> str:
    from .explain import short

    lines = ["# Model card", "",
             f"An emotion recogniser exported by moe-emotion {record['toolkit_version']} on {record['created']}.", "",
             "## Classes", "", ", ".join(record["classes"]), "",
             "## Trained on", ""]
    for t in record["trained_on"]:
        lines.append(f"- run `{t['run']}`: {t['n_labeled']} labeled clips of `{t['labels']}` (cache `{t['cache']}`)")
    lines += ["", "## Experts (feature extractors)", "", "| feature key | extractor | model |", "|---|---|---|"]
    for f in record["features"]:
        model = f.get("model") or {}
        name = (model.get("id") or model.get("path") or model.get("name") or "-") if isinstance(model, dict) else model
        lines.append(f"| {f['key']} | {f.get('extractor') or 'unknown'} | {name} |")
    local = [f for f in record["features"] if isinstance(f.get("model"), dict) and f["model"].get("source") == "local"]
    if local:
        lines += ["", "## Models outside the bundle", "",
                  "Local models are named by path and checksum, not copied. Where one is elsewhere (another machine, "
                  "a moved folder): `recognise --relocate OLD=NEW` (accepted with the same checksum only).", ""]
        lines += [f"- `{f['model'].get('path')}` ({f['model'].get('checksum')}): {f['key']}" for f in local]
    lines += ["", "## Out-of-fold metrics per member (the rows the ensemble was tuned on)", "",
              "| member | weighted F1 | vote weight |", "|---|---|---|"]
    for m in record["ensemble"]["members"]:
        f1 = m["oof_weighted_f1"]
        lines.append(f"| {m['member']} | {'-' if f1 is None else f'{f1:.4f}'} | {m['weight']:.4f} |")
    final = pipeline.fit_result_.final.labels
    from models.metrics import scores

    s = scores(ms.y, final) if len(ms.y) else {"weighted_f1": float("nan"), "accuracy": float("nan")}
    lines += ["", f"Ensemble ({record['recipe']['vote']} vote, rules: "
                  f"{', '.join(r.get('rule', '?') for r in record['recipe']['rules']) or 'none'}) on the same "
                  f"{len(ms.y)} out-of-fold rows (in-sample, optimistic): weighted F1 {s['weighted_f1']:.4f}, "
                  f"accuracy {s['accuracy']:.4f}. Calibration: temperature {record['calibration']['temperature']:.3f}.",
              "", "## Intended use", "",
              "Recognising the emotion category of short clips (a few seconds, one speaker, a visible face) like "
              "the ones it was trained on, for research. Check the figures above on your own labeled clips first.",
              "", "## Known limits", "",
              "- Speaker and recording shift: clips from new speakers, languages or microphones score lower than "
              "these out-of-fold figures.",
              "- A clip without a face or without audio is predicted from the experts present; the output lists "
              "the absent ones, and such predictions are less reliable.",
              "- Rules that need an annotator (VLM answers) run only when answers are given to `recognise`.",
              f"- Experts: {', '.join(sorted({short(m['member']) for m in record['members'] if m['kind'] == 'expert'}))}.",
              ""]
    return "\n".join(lines)


@dataclass
class Bundle:
    root: Path
    record: dict

    @property
    def classes(self) -> list[str]:
        return list(self.record["classes"])

    def run_dirs(self) -> list[Path]:
        return [self.root / "runs" / f"run{k}" for k in range(len(self.record["run_names"]))]

    def tuning(self):
        from .members import Split

        with np.load(self.root / "tuning.npz", allow_pickle=False) as z:
            return Split([str(i) for i in z["ids"]], z["probs"], z["present"]), z["y"]

    def annotator_path(self) -> Path | None:
        p = self.root / "annotator.jsonl"
        return p if p.is_file() else None


def open_bundle(root) -> Bundle:
    """A bundle whose every file matches its record; refused with a message otherwise."""
    root = Path(root)
    rec = read_record(root / RECORD)
    if rec is None:
        raise BundleError(f"{root} is not a model bundle (no readable {RECORD}); make one with `cli.py export`")
    if rec.get("format") != FORMAT:
        raise BundleError(f"{root}: bundle format {rec.get('format')!r} is not {FORMAT!r} (made by toolkit "
                          f"{rec.get('toolkit_version')}; this is {toolkit_version()}): re-export it with this version")
    if rec.get("toolkit_version") != toolkit_version():
        LOG.warning(f"{root} was exported by toolkit {rec.get('toolkit_version')}; this is {toolkit_version()}")
    bad = []
    for rel, digest in (rec.get("files") or {}).items():
        p = root / rel
        if ".." in Path(rel).parts or not p.is_file():
            bad.append(f"{rel} is missing")
        elif sha256_file(p) != digest:
            bad.append(f"{rel} was changed")
    if bad or not rec.get("files"):
        raise BundleError(f"{root}: {', '.join(bad[:3]) or 'no file list'}"
                          + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
                          + ": the bundle is not as exported; export it again")
    return Bundle(root, rec)
