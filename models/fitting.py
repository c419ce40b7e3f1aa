"""``fit``: train on the feature cache and publish a RUN_DIR (the library behind ``cli.py fit``).

    from models import fit
    result = fit("cache", "labels.csv", ["librosa", "egemaps"], "runs/stage1", seeds=(0, 1, 2))
    result.run_dir, result.metrics

Every option and its default lives in ``FitConfig`` (the CLI takes its defaults from it; training
defaults come from ``models.train.TrainConfig``). Warnings go to the ``moe.models`` logger and are
kept in ``FitResult.notes``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from extract.cache import FeatureCache
from extract.outputs import check_output
from extract.threads import torch_threads
from models.data import (InputError, cached_ids, check_classes, first_few, load_features, read_group_table,
                         read_labels, resolve_features)
from models.heads import HEADS
from models.normalize import NORMALIZERS
from models.pseudo import read_pseudo
from models.run_dir import CLUSTERS_FILE, PSEUDO_TABLE, RunWriter, member_metrics, open_run, provenance
from models.train import CLASS_WEIGHTS, MODELS, Problem, TrainConfig, TrainOnly, cross_validate, resolve_device

LOG = logging.getLogger("moe.models")
STAGE2_MODES = ("joint", "pretrain-finetune")
_T = TrainConfig()


class Notes(list):
    """Warnings of one call: logged on ``logger`` and kept (the result objects carry them)."""

    def __init__(self, logger: logging.Logger = LOG):
        super().__init__()
        self.logger = logger

    def __call__(self, msg: str) -> None:
        self.append(msg)
        self.logger.warning(msg)


def as_list(value) -> list[str] | None:
    """A list option given as a list or as comma-separated text."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(t).strip() for t in items if str(t).strip()]
    return items or None


def as_seeds(value) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in as_list(value) or [])
    except ValueError:
        raise InputError(f"--seeds {value!r}: give integers separated by commas, e.g. 0,1,2") from None
    if not seeds:
        raise InputError("--seeds: give at least one seed")
    return seeds


@dataclass
class FitConfig:
    """Every option of ``fit`` with its default (one source for the CLI and the Python API)."""

    classes: list[str] | None = None      # class order (default: the labels' classes, MER order or sorted)
    groups: str | None = None             # labels column whose groups never straddle train/validation
    folds: int = _T.folds
    seeds: tuple[int, ...] = _T.seeds
    head: str = _T.head
    model: str = _T.model
    epochs: int = _T.epochs
    batch_size: int = _T.batch_size
    device: str = "auto"
    normalize: str = _T.normalize
    group_table: str | None = None
    class_weight: str = _T.class_weight
    strict: bool = False
    patience: int = _T.patience
    lr: float = _T.lr
    hidden: int = _T.hidden
    layers: int = _T.n_layers
    heads: int = _T.n_heads
    dropout: float = _T.dropout
    max_frames: int = 64
    cluster_feature: str = "speaker"      # --normalize cluster: the speaker-embedding feature clustered
    clusters: int | None = None           # --normalize cluster: a fixed number of clusters (default: silhouette)
    threads: int = 0                      # torch / LightGBM CPU threads (0: torch's default)
    pseudo: str | None = None             # stage 2: a pseudo-label CSV from `pseudo-label`
    stage2: str = _T.stage2
    pseudo_weight: float = 0.5            # loss weight of a pseudo-labeled clip (joint mode)
    rounds: int = 1                       # pseudo-label -> train rounds (needs pseudo)
    stage1: str | None = None             # stage-1 RUN_DIR to compare with (default: the one pseudo came from)
    progress: bool = True

    def checked(self) -> "FitConfig":
        """A copy with list options parsed; bad values are an InputError naming the option."""
        cfg = replace(self, classes=as_list(self.classes), seeds=as_seeds(self.seeds))
        check_classes(cfg.classes, "--classes")
        choices = {"head": HEADS, "model": MODELS, "normalize": NORMALIZERS, "class_weight": CLASS_WEIGHTS,
                   "stage2": STAGE2_MODES, "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(cfg, name) not in allowed:
                raise InputError(f"--{name.replace('_', '-')} {getattr(cfg, name)!r}: choose one of "
                                 f"{', '.join(sorted(allowed))}")
        for name, low in (("folds", 2), ("epochs", 1), ("batch_size", 2), ("patience", 1), ("hidden", 4),
                          ("layers", 1), ("heads", 1), ("max_frames", 1), ("threads", 0), ("rounds", 1)):
            if int(getattr(cfg, name)) < low:
                raise InputError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= {low}")
        if cfg.hidden % cfg.heads:
            raise InputError(f"--hidden {cfg.hidden} must be a multiple of --heads {cfg.heads}")
        if not 0 <= cfg.dropout <= 0.9:
            raise InputError(f"--dropout {cfg.dropout}: must be in [0, 0.9]")
        if cfg.pseudo_weight <= 0:
            raise InputError(f"--pseudo-weight {cfg.pseudo_weight}: must be > 0")
        if cfg.rounds > 1 and cfg.pseudo is None:
            raise InputError("--rounds needs --pseudo (the first round's pseudo-labels)")
        if cfg.model == "attention" and cfg.head != "mlp":
            raise InputError(f"--head {cfg.head} applies to --model moe (the attention baseline has its own MLP "
                             "encoders)")
        return cfg

    @classmethod
    def from_options(cls, **options) -> "FitConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown fit option(s): {', '.join(unknown)}")
        return cls(**options)


@dataclass
class FitResult:
    run_dir: Path
    metrics: list[dict]           # per member: weighted_f1, macro_f1, accuracy, n (out-of-fold)
    n_labeled: int
    n_test: int
    config: FitConfig
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rounds: list[Path] = field(default_factory=list)   # earlier rounds' RUN_DIRs (--rounds)
    comparison: list[dict] = field(default_factory=list)  # stage 1 vs this run, per member

    @property
    def routed_f1(self) -> float:
        return next(r["weighted_f1"] for r in self.metrics if r["kind"] == "routed")


# -- one fit ------------------------------------------------------------------------------------------

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
    return groups_of(ids, table, strict, note, lambda uncovered: (
        f"--normalize group: {len(uncovered)} of {len(ids)} ids have no group (first: {first_few(uncovered)}); "
        "they get pool statistics"
        + ("" if group_table else "; pass --group-table CSV (name,group) that covers the clips to predict")))


def groups_of(ids, table: dict, strict: bool, warn, message) -> np.ndarray:
    """The group of every id ('' = none: pool statistics). Ids without one are reported with
    ``message(uncovered ids)``: a warning, or an InputError with --strict."""
    uncovered = [i for i in ids if i not in table]
    if uncovered:
        msg = message(uncovered)
        if strict:
            raise InputError(msg)
        warn(msg)
    return np.array([table.get(i, "") for i in ids], dtype=object)


def drop_featureless(ids: list[str], feats: list) -> tuple[list[str], list, list[str]]:
    """Leave out the ids with no usable value in any feature -> (ids, features, the ids left out)."""
    any_present = np.any([fd.present for fd in feats], axis=0)
    if any_present.all():
        return ids, feats, []
    rows = np.flatnonzero(any_present)
    dead = [ids[i] for i in np.flatnonzero(~any_present)]
    return [ids[i] for i in rows], [fd.take(rows) for fd in feats], dead


def _fit_once(cache, labels, features, out, cfg: FitConfig, pseudo, note, compare_with=None) -> FitResult:
    t0 = time.time()
    if not Path(cache).is_dir():
        raise InputError(f"--cache {cache}: no such directory; run `cli.py extract` first or fix the path")
    fc = FeatureCache(cache)
    keys = resolve_features(fc, as_list(features) or [])
    if not keys:
        raise InputError("--features: give at least one feature key (see `cli.py cache info`)")
    lab, class_list = read_labels(labels, cfg.classes, cfg.groups, cfg.strict)
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
        if cfg.strict:
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
    ids, feats, dead = drop_featureless(ids, load_features(fc, keys, ids, max_frames=cfg.max_frames))
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
    short = [(class_list[k], int(counts[k])) for k in range(len(class_list)) if 0 < counts[k] < cfg.folds]
    if short:
        raise InputError(f"{labels}: " + ", ".join(f"class {c!r} has {n} labeled clips" for c, n in short)
                         + f", fewer than --folds {cfg.folds}: lower --folds, or drop the class from --classes")
    empty = [class_list[k] for k in range(len(class_list)) if counts[k] == 0]
    if empty:
        note(f"classes with no labeled clip (never learned): {', '.join(empty)}")
    row_groups = clusters = None
    if cfg.normalize == "group":
        row_groups = _row_groups(ids, lab, cfg.group_table, cfg.groups, cfg.strict, note)
    elif cfg.normalize == "cluster":
        clusters, row_groups = cluster_rows(fc, ids, cfg, note)
    dev = resolve_device(cfg.device)
    tcfg = TrainConfig(model=cfg.model, head=cfg.head, folds=cfg.folds, seeds=cfg.seeds, epochs=cfg.epochs,
                       patience=cfg.patience, batch_size=cfg.batch_size, lr=cfg.lr, hidden=cfg.hidden,
                       n_layers=cfg.layers, n_heads=cfg.heads, dropout=cfg.dropout, normalize=cfg.normalize,
                       class_weight=cfg.class_weight, device=dev, stage2=cfg.stage2)
    train_only = None
    if pl is not None:
        prow = [(pos[i], class_list.index(c)) for i, c in zip(pl.ids, pl.labels) if i in pos]
        if not prow:
            raise InputError(f"pseudo-label file {pseudo}: none of its ids has features in cache {cache}")
        train_only = TrainOnly(rows=np.array([r for r, _ in prow], dtype=np.int64),
                               y=np.array([k for _, k in prow], dtype=np.int64),
                               weights=np.full(len(prow), float(cfg.pseudo_weight)))
    problem = Problem(ids, feats, class_list, lab_rows, y, test_rows, groups=cv_groups, row_groups=row_groups,
                      train_only=train_only)
    config = {"cache": str(cache), "labels": str(labels), "features": keys, "classes": class_list,
              "folds": cfg.folds, "seeds": list(cfg.seeds), "model": cfg.model, "head": cfg.head,
              "normalize": cfg.normalize, "group_table": None if cfg.group_table is None else str(cfg.group_table),
              "groups": cfg.groups, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "patience": cfg.patience,
              "lr": cfg.lr, "weight_decay": tcfg.weight_decay, "hidden": cfg.hidden, "layers": cfg.layers,
              "heads": cfg.heads, "dropout": cfg.dropout, "max_frames": cfg.max_frames,
              "class_weight": cfg.class_weight, "device": dev, "strict": cfg.strict,
              "pseudo": None if pl is None else str(Path(pseudo).resolve()),
              "stage2": None if pl is None else cfg.stage2, "stage2_weight": None if pl is None else cfg.pseudo_weight,
              "stage2_clips": 0 if train_only is None else len(train_only.rows),
              "pseudo_meta": None if pl is None else pl.meta, "n_labeled": len(lab_rows), "n_test": len(test_rows),
              "feature_meta": {fd.key: fd.meta for fd in feats}, "provenance": provenance(),
              "clusters": None if clusters is None else {
                  "feature": clusters.feature, "k": len(clusters.sizes), "sizes": clusters.sizes,
                  "chosen_by": clusters.chosen_by, "pool_statistics_clips": int((row_groups == "").sum())}}
    with RunWriter(out) as writer:
        writer.config(config)
        writer.classes(class_list)
        writer.labels(lab_ids, y, class_list)

        def on_fold(fold, seed, saved, curve):
            writer.model(fold, seed, saved)
            writer.curve(fold, seed, curve)

        result = cross_validate(problem, tcfg, on_fold=on_fold, progress=cfg.progress)
        writer.members(result.members)
        test_names = [ids[r] for r in test_rows]
        for m in result.members:
            name = m["member"]
            writer.probs("oof", name, lab_ids, result.oof[name], class_list)
            writer.probs("test", name, test_names, result.test[name], class_list)
        if result.weight_names:
            writer.router("oof", lab_ids, result.oof_weights, result.weight_names)
            writer.router("test", test_names, result.test_weights, result.weight_names)
        rows = member_metrics(result.members, result.oof, y)
        writer.metrics(rows)
        if clusters is not None:
            import json

            writer.write_file(CLUSTERS_FILE, json.dumps(clusters.to_dict(), indent=1) + "\n")
        if pl is not None:  # the run keeps its own copy: ensemble leaves these ids out of tuning
            writer.table(PSEUDO_TABLE, ["name", "discrete"], sorted(zip(pl.ids, pl.labels)))
        comparison = []
        if compare_with is not None:
            comparison = compare_stages(compare_with, rows)
            writer.table("metrics_vs_stage1.csv", ["member", "stage1_weighted_f1", "stage2_weighted_f1", "change"],
                         [(r["member"], f"{r['stage1']:.6f}", f"{r['stage2']:.6f}", f"{r['change']:.6f}")
                          for r in comparison])
        writer.publish()
    return FitResult(Path(out), rows, len(lab_rows), len(test_rows), cfg, list(note), time.time() - t0,
                     comparison=comparison)


def cluster_rows(fc, ids, cfg: FitConfig, note):
    """--normalize cluster: speaker clusters of every clip of the run -> (Clusters, group per row)."""
    from extract.cache import CacheError
    from models.clusters import find_clusters

    try:
        key = fc.resolve(cfg.cluster_feature)
    except CacheError as exc:
        raise InputError(f"--normalize cluster needs a speaker-embedding feature in the cache ({exc}); extract it "
                         "with `cli.py extract --features speaker` or pass --cluster-feature KEY") from None
    emb = load_features(fc, [key], ids)[0]
    if emb.kind != "vector":
        raise InputError(f"--cluster-feature {key}: a {emb.kind} feature; give a vector (a speaker embedding)")
    x = emb.x[:, 0, :]
    found = find_clusters(x, key, emb.present, k=cfg.clusters)
    groups = found.assign(x, emb.present)
    n_pool = int((groups == "").sum())
    msg = (f"--normalize cluster: {len(found.sizes)} speaker clusters of {key} ({found.chosen_by}); sizes "
           f"{', '.join(map(str, found.sizes))}")
    if n_pool:
        note(f"{msg}; {n_pool} clips get pool statistics (no embedding, or far from every cluster)")
    else:
        LOG.info(msg)
    return found, groups


def compare_stages(stage1_dir, rows: list[dict]) -> list[dict]:
    """Per member of this run that stage 1 also has: both out-of-fold weighted F1 and the change."""
    before = open_run(stage1_dir).metrics()
    out = []
    for r in rows:
        if r["member"] in before:
            f1 = float(before[r["member"]]["weighted_f1"])
            out.append({"member": r["member"], "stage1": f1, "stage2": float(r["weighted_f1"]),
                        "change": float(r["weighted_f1"]) - f1})
    return out


def format_comparison(rows: list[dict], stage1_dir) -> str:
    width = max([len("member")] + [len(r["member"]) for r in rows])
    lines = [f"{'member':<{width}}  {'stage 1':>8}  {'stage 2':>8}  {'change':>7}"]
    lines += [f"{r['member']:<{width}}  {r['stage1']:>8.4f}  {r['stage2']:>8.4f}  {r['change']:>+7.4f}" for r in rows]
    return "\n".join(lines) + f"\n(stage 1: {stage1_dir})"


def stage1_of(pseudo) -> str | None:
    """The stage-1 RUN_DIR a pseudo-label file was made from (its sidecar), if it is still a run."""
    if pseudo is None:
        return None
    run = read_pseudo(pseudo, None).meta.get("stage1_run")
    if not run:
        return None
    try:
        open_run(run)
    except InputError:
        return None
    return run


# -- the command --------------------------------------------------------------------------------------

def fit(cache, labels, features, out, config: FitConfig | None = None, **options) -> FitResult:
    """Train the experts, fused expert and router (or the attention baseline) with cross-validation and
    publish the RUN_DIR ``out``. ``options`` override fields of ``config`` (see ``FitConfig``)."""
    cfg = replace(config, **options) if config is not None else FitConfig.from_options(**options)
    cfg = cfg.checked()
    check_run_target_early(out, cfg.rounds)
    import torch  # noqa: F401 - loaded here, so torch_threads can set its count

    with torch_threads(cfg.threads):  # the caller's count again afterwards (a notebook, the demo)
        return _fit_rounds(cache, labels, features, out, cfg)


def _fit_rounds(cache, labels, features, out, cfg: FitConfig) -> FitResult:
    note = Notes()
    stage1 = cfg.stage1 or stage1_of(cfg.pseudo)
    current, earlier, prev = cfg.pseudo, [], None
    for r in range(1, cfg.rounds + 1):
        run_out = Path(out) if r == cfg.rounds else Path(f"{out}-round{r}")
        if r > 1:
            current = relabel(prev, cache, current, Path(f"{out}-round{r}.pseudo.csv"), cfg)
            LOG.info(f"round {r}/{cfg.rounds}: pseudo-labels {current} -> {run_out}")
        res = _fit_once(cache, labels, features, run_out, cfg, current, note,
                        compare_with=stage1 if cfg.pseudo is not None and r == cfg.rounds else None)
        if r < cfg.rounds:
            earlier.append(run_out)
        prev = run_out
    res.rounds = earlier
    res.notes = list(note)
    return res


def check_run_target_early(out, rounds: int) -> None:
    """Refuse a bad --out before any training (the writer checks again when it starts)."""
    from models.run_dir import check_run_target

    check_run_target(Path(out))
    for r in range(1, rounds):
        check_run_target(Path(f"{out}-round{r}"))
        check_output(Path(f"{out}-round{r + 1}.pseudo.csv"), "pseudo-label",
                     [Path(f"{out}-round{r + 1}.pseudo.csv.meta.json")])


def relabel(run_dir, cache, pseudo, out, cfg: FitConfig) -> str:
    """Next round's pseudo-labels: the newest run + the annotator and thresholds of ``pseudo``."""
    from models.pseudo import pseudo_label

    meta = read_pseudo(pseudo, open_run(run_dir).classes).meta
    if not meta.get("annotator"):
        raise InputError(f"--rounds: {pseudo} has no meta sidecar naming its annotator; make it with "
                         "`cli.py pseudo-label`")
    res = pseudo_label(run_dir, cache, meta["annotator"], out, min_confidence=meta.get("min_confidence", 0.0),
                       class_thresholds=meta.get("class_thresholds") or None,
                       min_annotator_confidence=meta.get("min_annotator_confidence", 0.0),
                       group_table=cfg.group_table, device=cfg.device)
    LOG.info(f"re-labeled with {run_dir}: kept {res.counts['kept']} of {res.counts['candidates']} -> {out}")
    return str(out)

