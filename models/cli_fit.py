"""``cli.py fit`` and ``cli.py predict``: train on the feature cache, write / use a RUN_DIR.

Registered in cli.py with ``main.add_command(fit)`` and ``main.add_command(predict)``.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from extract.cache import CacheError, FeatureCache, atomic_write_text
from extract.tables import read_rows
from models.data import (InputError, first_few, cached_ids, load_features, read_group_table, read_id_list, read_labels,
                         resolve_features)
from models.heads import HEADS
from models.normalize import NORMALIZERS
from models.pseudo import meta_path, read_pseudo
from models.run_dir import RunWriter, format_table, member_metrics, provenance, read_run, write_probs
from models.train import (CLASS_WEIGHTS, MODELS, Problem, SharedInputs, TrainConfig, TrainOnly, cross_validate,
                          load_model_file, predict_saved, resolve_device)


def _warn(msg: str) -> None:
    click.echo(f"warning: {msg}", err=True)


def _csv_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def _seeds(text: str) -> tuple:
    try:
        seeds = tuple(int(s) for s in _csv_list(text) or [])
    except ValueError:
        raise InputError(f"--seeds {text!r}: give integers separated by commas, e.g. 0,1,2") from None
    if not seeds:
        raise InputError("--seeds: give at least one seed")
    return seeds


@dataclass
class FitReport:
    run_dir: Path
    metrics: list[dict]
    n_labeled: int
    n_test: int
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _row_groups(ids, labels, group_table, groups_col, strict, note) -> np.ndarray:
    """The normalisation group of every row: the --group-table, else the labels' --groups column."""
    table: dict[str, str] = {}
    if groups_col and labels.groups is not None:
        table.update({i: g for i, g in zip(labels.ids, labels.groups)})
    if group_table:
        table.update(read_group_table(group_table, groups_col))
    if not table:
        raise InputError("--normalize group needs a group per clip: pass --group-table CSV (name,group) covering "
                         "the clips to predict too, and/or --groups COLUMN of the labels")
    return _groups_of(ids, table, strict, note, lambda uncovered: (
        f"--normalize group: {len(uncovered)} of {len(ids)} ids have no group (first: {first_few(uncovered)}); "
        "they get pool statistics"
        + ("" if group_table else "; pass --group-table CSV (name,group) that covers the clips to predict")))


def _groups_of(ids, table: dict, strict: bool, warn, message) -> np.ndarray:
    """The group of every id ('' = none: pool statistics). Ids without one are reported with
    ``message(uncovered ids)``: a warning, or an InputError with --strict."""
    uncovered = [i for i in ids if i not in table]
    if uncovered:
        msg = message(uncovered)
        if strict:
            raise InputError(msg)
        warn(msg)
    return np.array([table.get(i, "") for i in ids], dtype=object)


def _drop_featureless(ids: list[str], feats: list) -> tuple[list[str], list, list[str]]:
    """Leave out the ids with no usable value in any feature -> (ids, features, the ids left out)."""
    any_present = np.any([fd.present for fd in feats], axis=0)
    if any_present.all():
        return ids, feats, []
    rows = np.flatnonzero(any_present)
    dead = [ids[i] for i in np.flatnonzero(~any_present)]
    return [ids[i] for i in rows], [fd.take(rows) for fd in feats], dead


def run_fit(cache: str, labels: str, features: str, out: str, classes: str | None = None, groups: str | None = None,
            folds: int = 5, seeds: str = "0", head: str = "mlp", model: str = "moe", epochs: int = 40,
            batch_size: int = 64, device: str = "auto", normalize: str = "pool", group_table: str | None = None,
            class_weight: str = "none", strict: bool = False, patience: int = 8, lr: float = 1e-3,
            hidden: int = 256, layers: int = 1, heads: int = 4, dropout: float = 0.2, max_frames: int = 64,
            progress: bool = True, warn=_warn, pseudo: str | None = None, stage2: str = "joint",
            pseudo_weight: float = 1.0) -> FitReport:
    """Everything ``cli.py fit`` does, callable from Python (benchmarks, later stages)."""
    t0 = time.time()
    messages: list[str] = []

    def note(msg):
        messages.append(msg)
        warn(msg)

    if not Path(cache).is_dir():
        raise InputError(f"--cache {cache}: no such directory; run `cli.py extract` first or fix the path")
    if model == "attention" and head == "lgbm":
        raise InputError("--head lgbm applies to --model moe (the attention baseline has its own MLP encoders)")
    fc = FeatureCache(cache)
    keys = resolve_features(fc, _csv_list(features) or [])
    if not keys:
        raise InputError("--features: give at least one feature key (see `cli.py cache info`)")
    seed_list = _seeds(seeds)
    lab, class_list = read_labels(labels, _csv_list(classes), groups, strict)
    for m in lab.messages:
        note(m)
    if not lab.ids:
        raise InputError(f"{labels}: no usable labeled row (see the warnings above)")
    known, usable = cached_ids(fc, keys)
    absent = [i for i in lab.ids if i not in known]
    if len(absent) == len(lab.ids) or not (set(lab.ids) & usable):
        sample_cache = sorted(usable)[:3]
        raise InputError(f"no labeled id of {labels} has a feature in cache {cache} for {', '.join(keys)} "
                         f"(labels: {first_few(lab.ids, 3)}; cache: {', '.join(sample_cache) or 'empty'}): "
                         "check --cache, --features and the labels' name column")
    if absent:
        msg = (f"{labels}: {len(absent)} of {len(lab.ids)} labeled ids are not in cache {cache} for the selected "
               f"features (first: {first_few(absent)}); they are skipped")
        if strict:
            raise InputError(msg + " (--strict)")
        note(msg + " (--strict makes this fatal)")
    failed_only = [i for i in lab.ids if i in known and i not in usable]
    if failed_only:
        note(f"{len(failed_only)} labeled ids failed extraction in every selected feature (first: "
             f"{first_few(failed_only)}); they are skipped")
    keep_lab = [i for i in lab.ids if i in usable]
    pl = None
    if pseudo is not None:  # stage 2: pseudo-labeled clips join training, never validation
        pl = read_pseudo(pseudo, class_list)
        overlap = [i for i in pl.ids if i in lab.all_names]
        if overlap:
            raise InputError(f"pseudo-label file {pseudo}: {len(overlap)} ids are in the labeled set {labels} "
                             f"(first: {first_few(overlap)}); refused: pseudo-labels must come from unlabeled clips")
        no_feat = [i for i in pl.ids if i not in usable]
        if no_feat:
            note(f"{pseudo}: {len(no_feat)} pseudo-labeled ids have no feature in cache {cache} "
                 f"(first: {first_few(no_feat)}); they are skipped")
    test_ids = sorted(usable - lab.all_names)
    ids = sorted(set(keep_lab) | set(test_ids))
    ids, feats, dead = _drop_featureless(ids, load_features(fc, keys, ids, max_frames=max_frames))
    if dead:
        note(f"{len(dead)} ids have no usable value in any selected feature (first: {first_few(dead)}); skipped")
    for fd in feats:
        if fd.meta.get("n_nonfinite_dropped"):
            note(f"feature {fd.key}: {fd.meta['n_nonfinite_dropped']} clips hold NaN/inf values; treated as missing")
    pos = {cid: r for r, cid in enumerate(ids)}
    lab_index = {cid: k for k, cid in enumerate(lab.ids)}
    lab_ids = [i for i in keep_lab if i in pos]
    lab_rows = np.array([pos[i] for i in lab_ids], dtype=np.int64)
    y = np.array([lab.y[lab_index[i]] for i in lab_ids], dtype=np.int64)
    cv_groups = None if lab.groups is None else np.array([lab.groups[lab_index[i]] for i in lab_ids], dtype=object)
    test_rows = np.array([pos[i] for i in test_ids if i in pos], dtype=np.int64)
    counts = np.bincount(y, minlength=len(class_list))
    short = [(class_list[k], int(counts[k])) for k in range(len(class_list)) if 0 < counts[k] < folds]
    if short:
        raise InputError(f"{labels}: " + ", ".join(f"class {c!r} has {n} labeled clips" for c, n in short)
                         + f", fewer than --folds {folds}: lower --folds, or drop the class from --classes")
    empty = [class_list[k] for k in range(len(class_list)) if counts[k] == 0]
    if empty:
        note(f"classes with no labeled clip (never learned): {', '.join(empty)}")
    row_groups = None
    if normalize == "group":
        row_groups = _row_groups(ids, lab, group_table, groups, strict, note)
    dev = resolve_device(device)
    cfg = TrainConfig(model=model, head=head, folds=folds, seeds=seed_list, epochs=epochs, patience=patience,
                      batch_size=batch_size, lr=lr, hidden=hidden, n_layers=layers, n_heads=heads, dropout=dropout,
                      normalize=normalize, class_weight=class_weight, device=dev, stage2=stage2)
    train_only = None
    if pl is not None:
        prow = [(pos[i], class_list.index(c)) for i, c in zip(pl.ids, pl.labels) if i in pos]
        if not prow:
            raise InputError(f"pseudo-label file {pseudo}: none of its ids has features in cache {cache}")
        train_only = TrainOnly(rows=np.array([r for r, _ in prow], dtype=np.int64),
                               y=np.array([k for _, k in prow], dtype=np.int64),
                               weights=np.full(len(prow), float(pseudo_weight)))
    problem = Problem(ids, feats, class_list, lab_rows, y, test_rows, groups=cv_groups, row_groups=row_groups,
                      train_only=train_only)
    writer = RunWriter(out)
    writer.prepare()
    config = {"cache": str(cache), "labels": str(labels), "features": keys, "classes": class_list,
              "folds": folds, "seeds": list(seed_list), "model": model, "head": head, "normalize": normalize,
              "group_table": None if group_table is None else str(group_table), "groups": groups,
              "epochs": epochs, "batch_size": batch_size, "patience": patience, "lr": lr,
              "weight_decay": cfg.weight_decay, "hidden": hidden, "layers": layers, "heads": heads,
              "dropout": dropout, "max_frames": max_frames, "class_weight": class_weight, "device": dev,
              "strict": strict, "pseudo": None if pl is None else str(Path(pseudo).resolve()),
              "stage2": None if pl is None else stage2, "stage2_weight": None if pl is None else pseudo_weight,
              "stage2_clips": 0 if train_only is None else len(train_only.rows),
              "pseudo_meta": None if pl is None else pl.meta, "n_labeled": len(lab_rows), "n_test": len(test_rows),
              "feature_meta": {fd.key: fd.meta for fd in feats}, "provenance": provenance()}
    writer.config(config)
    writer.classes(class_list)
    writer.labels(lab_ids, y, class_list)

    def on_fold(fold, seed, saved, curve):
        writer.model(fold, seed, saved)
        writer.curve(fold, seed, curve)

    result = cross_validate(problem, cfg, on_fold=on_fold, progress=progress)
    writer.members(result.members)
    test_names = [ids[r] for r in test_rows]
    for m in result.members:
        name = m["member"]
        writer.probs("oof", name, lab_ids, result.oof[name], class_list)
        writer.probs("test", name, test_names, result.test[name], class_list)
    rows = member_metrics(result.members, result.oof, y)
    writer.metrics(rows)
    return FitReport(Path(out), rows, len(lab_rows), len(test_rows), messages, time.time() - t0)


class _Errors:
    """Turn bad-input exceptions into a one-line click error (exit code 1)."""

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is not None and isinstance(exc, (InputError, CacheError, FileNotFoundError)):
            raise click.ClickException(str(exc)) from None
        return False


@click.command("fit")
@click.option("--cache", "cache", required=True, type=click.Path(file_okay=False), help="feature cache directory")
@click.option("--labels", required=True, type=click.Path(dir_okay=False), help="labels CSV: name,discrete[,group...]")
@click.option("--features", required=True, help="feature keys (or short forms, e.g. the extractor name), comma-separated")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory to write")
@click.option("--classes", default=None, help="class order, comma-separated (default: the labels' classes, sorted)")
@click.option("--groups", default=None, help="labels column whose groups never straddle train/validation (speaker)")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2, None),
              help="cross-validation folds (stratified; grouped by --groups)")
@click.option("--seeds", default="0", show_default=True, help="comma-separated seeds; results averaged over seeds")
@click.option("--head", default="mlp", show_default=True, type=click.Choice(sorted(HEADS)),
              help="expert head of vector features: transformer+MLP classifier, or LightGBM")
@click.option("--model", default="moe", show_default=True, type=click.Choice(sorted(MODELS)),
              help="moe: experts + fused + router; attention: the MERTools attention baseline")
@click.option("--epochs", default=40, show_default=True, type=click.IntRange(1, None),
              help="maximum training epochs per fold (early stopping on validation weighted F1)")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(2, None), help="training batch size")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto: a GPU when present")
@click.option("--normalize", default="pool", show_default=True, type=click.Choice(sorted(NORMALIZERS)),
              help="standardisation statistics: training fold only; every cached clip, labeled or not (pool); "
                   "per group (speaker) with --group-table. pool beat fold on held-out speakers in "
                   "bench/bench_fit.py; group beats both when every clip's speaker is known")
@click.option("--group-table", default=None, type=click.Path(dir_okay=False),
              help="CSV name,group for --normalize group (must cover the clips to predict)")
@click.option("--class-weight", default="none", show_default=True, type=click.Choice(CLASS_WEIGHTS),
              help="balanced: weight the loss by inverse class frequency")
@click.option("--strict", is_flag=True, help="make skipped ids (absent from the cache, unknown class) fatal")
@click.option("--patience", default=8, show_default=True, type=click.IntRange(1, None),
              help="epochs without a better validation weighted F1 before stopping")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="AdamW learning rate")
@click.option("--hidden", default=256, show_default=True, type=click.IntRange(4, None),
              help="hidden size of every expert (the paper: 256)")
@click.option("--layers", default=1, show_default=True, type=click.IntRange(1, None), help="transformer layers")
@click.option("--heads", default=4, show_default=True, type=click.IntRange(1, None), help="attention heads")
@click.option("--dropout", default=0.2, show_default=True, type=click.FloatRange(0, 0.9), help="dropout rate")
@click.option("--max-frames", default=64, show_default=True, type=click.IntRange(1, None),
              help="series features: at most this many frames per clip (evenly subsampled)")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0, None),
              help="CPU threads for torch and LightGBM (0: torch's default); 1 is often faster on a busy machine")
@click.option("--pseudo", default=None, type=click.Path(dir_okay=False),
              help="stage 2: pseudo-label CSV from `cli.py pseudo-label`; its clips join every training fold and "
                   "never a validation fold")
@click.option("--stage2", default="joint", show_default=True, type=click.Choice(["joint", "pretrain-finetune"]),
              help="joint: train on labeled + pseudo-labeled clips; pretrain-finetune: pre-train on the "
                   "pseudo-labeled clips, then fine-tune on the labeled ones (per fold)")
@click.option("--pseudo-weight", default=0.5, show_default=True, type=click.FloatRange(0, None, min_open=True),
              help="loss weight of a pseudo-labeled clip (a labeled clip weighs 1); joint mode only: in "
                   "pretrain-finetune the pseudo rows train alone, so a uniform weight cancels out")
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(1, None),
              help="repeat pseudo-label -> train this many times (re-labels with the newest run, the same "
                   "annotator and thresholds as --pseudo); earlier rounds go to RUN_DIR-round<k>")
@click.option("--stage1", "stage1_dir", default=None, type=click.Path(file_okay=False),
              help="stage-1 RUN_DIR to compare with (default: the one --pseudo was made from)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def fit(cache, labels, features, out, classes, groups, folds, seeds, head, model, epochs, batch_size, device,
        normalize, group_table, class_weight, strict, patience, lr, hidden, layers, heads, dropout, max_frames,
        threads, pseudo, stage2, pseudo_weight, rounds, stage1_dir, quiet):
    """Train the experts, fused expert and router (or the attention baseline) with cross-validation on the
    cached features; write out-of-fold and unlabeled-id probabilities, curves, models and metrics."""
    if hidden % heads:
        raise click.BadParameter(f"--hidden {hidden} must be a multiple of --heads {heads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    if rounds > 1 and pseudo is None:
        raise click.BadParameter("--rounds needs --pseudo (the first round's pseudo-labels)")
    with _Errors():
        args = (cache, labels, features)
        kw = dict(classes=classes, groups=groups, folds=folds, seeds=seeds, head=head, model=model, epochs=epochs,
                  batch_size=batch_size, device=device, normalize=normalize, group_table=group_table,
                  class_weight=class_weight, strict=strict, patience=patience, lr=lr, hidden=hidden, layers=layers,
                  heads=heads, dropout=dropout, max_frames=max_frames, progress=not quiet, stage2=stage2,
                  pseudo_weight=pseudo_weight)
        current = pseudo
        for r in range(1, rounds + 1):
            run_out = out if r == rounds else f"{out}-round{r}"
            if r > 1:
                current = relabel(prev, cache, current, Path(prev) / f"pseudo_round{r}.csv", group_table, device)
            if rounds > 1:
                click.echo(f"round {r}/{rounds}: pseudo-labels {current} -> {run_out}")
            rep = run_fit(*args, run_out, pseudo=current, **kw)
            prev = run_out
    click.echo(format_table(rep.metrics))
    stage1_dir = stage1_dir or _stage1_of(pseudo)
    if pseudo is not None and stage1_dir:
        click.echo("\nstage 1 vs stage 2 (out-of-fold weighted F1 on the labeled clips):")
        click.echo(compare_stages(stage1_dir, out))
    click.echo(f"\n{rep.n_labeled} labeled clips (out-of-fold), {rep.n_test} unlabeled clips predicted, "
               f"{len(rep.messages)} warnings, {rep.seconds:.1f} s")
    click.echo(f"run directory: {rep.run_dir}  (metrics.csv, oof/, test/, models/, curves/, config.yaml)")


def _stage1_of(pseudo) -> str | None:
    if pseudo is None:
        return None
    sidecar = meta_path(pseudo)
    if not sidecar.is_file():
        return None
    import json

    run = json.loads(sidecar.read_text(encoding="utf-8")).get("stage1_run")
    return run if run and (Path(run) / "metrics.csv").is_file() else None


def relabel(run_dir, cache, pseudo, out, group_table, device) -> str:
    """Next round's pseudo-labels: the newest run + the annotator and thresholds of ``pseudo``."""
    from models.cli_pseudo import run_pseudo_label
    from models.pseudo import PseudoError

    meta = read_pseudo(pseudo, read_run(run_dir).classes).meta
    if not meta.get("annotator"):
        raise InputError(f"--rounds: {pseudo} has no meta sidecar naming its annotator; make it with "
                         "`cli.py pseudo-label`")
    thresholds = ",".join(f"{k}={v}" for k, v in (meta.get("class_thresholds") or {}).items()) or None
    try:
        sel = run_pseudo_label(run_dir, cache, meta["annotator"], out, None, meta.get("min_confidence", 0.0),
                               thresholds, meta.get("min_annotator_confidence", 0.0), group_table,
                               resolve_device(device))
    except PseudoError as exc:
        raise InputError(str(exc)) from None
    click.echo(f"re-labeled with {run_dir}: kept {sel.counts['kept']} of {sel.counts['candidates']} -> {out}")
    return str(out)


def compare_stages(stage1_dir, stage2_dir) -> str:
    """Side-by-side table of two runs' metrics.csv; also written to <stage2>/metrics_vs_stage1.csv."""
    def read(d):
        _, rows = read_rows(Path(d) / "metrics.csv", ("member", "weighted_f1"), InputError, "metrics file",
                            "give the --out folder of a finished `cli.py fit`")
        return {r["member"]: r for r in rows}

    a, b = read(stage1_dir), read(stage2_dir)
    names = [m for m in b if m in a]
    width = max([len("member")] + [len(m) for m in names])
    lines = [f"{'member':<{width}}  {'stage 1':>8}  {'stage 2':>8}  {'change':>7}"]
    rows = ["member,stage1_weighted_f1,stage2_weighted_f1,change"]
    for m in names:
        f1, f2 = float(a[m]["weighted_f1"]), float(b[m]["weighted_f1"])
        lines.append(f"{m:<{width}}  {f1:>8.4f}  {f2:>8.4f}  {f2 - f1:>+7.4f}")
        rows.append(f"{m},{f1:.6f},{f2:.6f},{f2 - f1:.6f}")
    atomic_write_text(Path(stage2_dir) / "metrics_vs_stage1.csv", "\n".join(rows) + "\n")
    return "\n".join(lines) + f"\n(stage 1: {stage1_dir})"


def run_predict(run_dir, cache, ids_csv=None, group_table=None, device="cpu", strict=False, warn=_warn):
    """Average the run's fold/seed models over ``ids`` (default: every cached id of the run's features).
    Returns (ids, {member: probs (n, C) with NaN where the member has no prediction}, classes)."""
    run = read_run(run_dir)
    if not Path(cache).is_dir():
        raise InputError(f"--cache {cache}: no such directory")
    fc = FeatureCache(cache)
    keys = list(run.config["features"])
    missing_keys = [k for k in keys if k not in fc.keys()]
    if missing_keys:
        raise InputError(f"cache {cache} lacks the feature sets this run was trained on: {', '.join(missing_keys)}; "
                         "extract them with the same configuration (the key holds its hash)")
    known, usable = cached_ids(fc, keys)
    if ids_csv:
        want = list(dict.fromkeys(read_id_list(ids_csv)))
        absent = [i for i in want if i not in usable]
        if absent:
            msg = (f"{ids_csv}: {len(absent)} of {len(want)} ids have no feature in cache {cache} "
                   f"(first: {first_few(absent)}); they get no prediction")
            if strict:
                raise InputError(msg)
            warn(msg)
        ids = [i for i in want if i in usable]
    else:
        ids = sorted(usable)
    if not ids:
        raise InputError(f"no id to predict: none of the requested ids has a feature in cache {cache}")
    feats = load_features(fc, keys, ids, max_frames=run.config.get("max_frames", 64))
    ids, feats, dead = _drop_featureless(ids, feats)
    if dead:
        warn(f"{len(dead)} ids have no usable value in any feature of the run (first: {first_few(dead)}); no prediction")
    row_groups = None
    if run.config.get("normalize") == "group":
        table = read_group_table(group_table) if group_table else {}
        row_groups = _groups_of(ids, table, strict, warn, lambda uncovered: (
            f"this run normalises per group: {len(uncovered)} ids have no group (first: {first_few(uncovered)}); "
            "they get pool statistics; pass --group-table CSV (name,group)"))
    c = len(run.classes)
    sums, counts = {}, {}
    from tqdm.auto import tqdm

    inputs = SharedInputs(feats, row_groups)
    for path in tqdm(run.model_files, desc="predict", unit="model"):
        saved = load_model_file(path)
        probs, present = predict_saved(saved, feats, row_groups, device, xs_np=inputs(saved))
        for m, p in probs.items():
            sums.setdefault(m, np.zeros((len(ids), c)))
            counts.setdefault(m, np.zeros(len(ids)))
            ok = present[m]
            sums[m][ok] += p[ok]
            counts[m][ok] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {m: sums[m] / counts[m][:, None] for m in sums}
    return ids, out, run


@click.command("predict")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--cache", "cache", required=True, type=click.Path(file_okay=False), help="feature cache directory")
@click.option("--ids", "ids_csv", default=None, type=click.Path(dir_okay=False),
              help="CSV with a name column (default: every cached id of the run's features)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="probabilities CSV: name,<classes>")
@click.option("--member", default=None, help="which member's probabilities (default: the routed output)")
@click.option("--group-table", default=None, type=click.Path(dir_okay=False),
              help="CSV name,group, for runs fitted with --normalize group")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto: a GPU when present")
@click.option("--strict", is_flag=True, help="make ids without features fatal")
def predict(run_dir, cache, ids_csv, out, member, group_table, device, strict):
    """Class probabilities of clips with a fitted RUN_DIR (mean over its fold and seed models)."""
    with _Errors():
        ids, probs, run = run_predict(run_dir, cache, ids_csv, group_table, resolve_device(device), strict)
        names = [m["member"] for m in run.members]
        if member is None:
            member = next(m["member"] for m in run.members if m["kind"] == "routed")
        if member not in probs:
            raise InputError(f"--member {member!r} is not a member of {run_dir} (members: {', '.join(names)})")
        n = write_probs(Path(out), ids, probs[member], run.classes)
    click.echo(f"{n} clips predicted by {member} ({len(run.model_files)} models of {run_dir}); "
               f"{len(ids) - n} without a prediction; written to {out}", file=sys.stdout)
