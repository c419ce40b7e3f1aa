"""Cross-validated training: folds x seeds, early stopping on validation weighted F1.

The loop is model-agnostic: a model (``MODELS``) maps per-feature token tensors to member logits
and owns its loss. Per-sample weights and *train-only* rows (ids that enter every training fold and
never a validation fold, e.g. pseudo-labeled clips) are part of the API, so semi-supervised stages
plug in without touching the loop.

Determinism: seeds are set per (fold, seed) before the model is built, batches come from a seeded
``torch.Generator``, no worker processes, and ``torch.use_deterministic_algorithms(True)`` is on
while training; same inputs and seed give the same probabilities on CPU.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from models.baseline import AttentionBaseline
from models.data import FeatureData, InputError
from models.folds import split as split_folds
from models.lgbm import log_proba
from models.prob_experts import PROB_HEADS
from models.metrics import weighted_f1
from models.normalize import FOLD_INDEPENDENT, NORMALIZERS, FeatureNormalizer, extend_groups
from models.router import ExpertSpec, MoEModel

MODELS = {"moe": MoEModel, "attention": AttentionBaseline}
CLASS_WEIGHTS = ("none", "balanced")
EVAL_CHUNK = 1024
MODEL_FORMAT = "moe-emotion-model/2"  # 2: probability experts (lgbm, logreg) under "prob_heads"


@dataclass
class TrainConfig:
    model: str = "moe"
    head: str = "mlp"
    folds: int = 5
    seeds: tuple = (0,)
    epochs: int = 40
    patience: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    hidden: int = 256
    n_layers: int = 1
    n_heads: int = 4
    dropout: float = 0.2
    normalize: str = "pool"
    class_weight: str = "none"
    device: str = "cpu"
    stage2: str = "joint"  # how Problem.train_only rows are used: joint | pretrain-finetune

    def arch(self) -> dict:
        return dict(hidden=self.hidden, n_layers=self.n_layers, n_heads=self.n_heads, dropout=self.dropout)


@dataclass
class TrainOnly:
    """Rows that join every training fold and never a validation fold (e.g. pseudo-labels)."""

    rows: np.ndarray
    y: np.ndarray
    weights: np.ndarray


@dataclass
class Problem:
    ids: list[str]                      # every id the run touches (row order of the features)
    features: list[FeatureData]
    classes: list[str]
    lab_rows: np.ndarray                # rows with a label: cross-validated
    y: np.ndarray                       # labels of lab_rows
    test_rows: np.ndarray               # rows to predict (no label)
    groups: np.ndarray | None = None    # CV groups of lab_rows
    row_groups: np.ndarray | None = None  # normalisation group of every row (--normalize group)
    weights: np.ndarray | None = None   # per-sample weights of lab_rows (default 1)
    train_only: TrainOnly | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass
class CVResult:
    members: list[dict]
    oof: dict                           # member -> (n_lab, C) averaged over seeds, NaN where absent
    test: dict                          # member -> (n_test, C) averaged over folds and seeds, NaN where absent
    weight_names: list = field(default_factory=list)   # router columns: experts (+ fused)
    oof_weights: np.ndarray | None = None               # (n_lab, K) router weights, averaged like oof
    test_weights: np.ndarray | None = None              # (n_test, K)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return name


@contextlib.contextmanager
def deterministic():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def make_folds(y, groups, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The outer CV folds: stratified, and grouped when ``groups`` are given (models.folds)."""
    if groups is not None:
        n_groups = len(set(groups))
        if n_groups < k:
            raise InputError(f"--groups: only {n_groups} distinct groups for --folds {k}; "
                             f"lower --folds to at most {n_groups}")
    return split_folds(k, seed, y=y, groups=groups)


def class_weights(y, n_classes: int, mode: str) -> np.ndarray:
    if mode == "none":
        return np.ones(n_classes)
    counts = np.bincount(y, minlength=n_classes).astype(float)
    w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return w


def expert_specs(features: list[FeatureData], head: str, n_classes: int) -> list[ExpertSpec]:
    specs = []
    for fd in features:
        # lgbm / logreg read vector features; a layered or series feature keeps the transformer head
        h = head if (head in PROB_HEADS and fd.kind == "vector") else "linear" if head == "linear" else "mlp"
        dim = n_classes if h in PROB_HEADS else fd.dim
        ntok = 1 if h in PROB_HEADS else fd.n_tokens
        specs.append(ExpertSpec(fd.key, fd.kind, dim, ntok, h))
    return specs


def build_model(name: str, specs, n_classes: int, arch: dict):
    return MODELS[name](specs, n_classes, **arch)


# ----------------------------------------------------------------------------------------------- tensors
def normalize_features(features, normalizers: dict, row_groups=None) -> list[np.ndarray]:
    return [normalizers[fd.key].transform(fd, row_groups) for fd in features]


def prob_inputs(specs, features, xs_np, train_rows, y_train, w_train, groups_train, n_classes, seed, n_jobs):
    """Fit the probability experts (lgbm, logreg) of one fold. Returns (fitted experts by key,
    per-feature replaced inputs: their log-probabilities)."""
    fitted, crossfit = {}, {}
    for i, (spec, fd) in enumerate(zip(specs, features)):
        if spec.head not in PROB_HEADS:
            continue
        kind = PROB_HEADS[spec.head]
        x = xs_np[i][:, 0, :]
        keep = fd.present[train_rows]
        tr = train_rows[keep]
        ytr, wtr = y_train[keep], w_train[keep]
        gtr = None if groups_train is None else groups_train[keep]
        fitted[fd.key] = kind.make(n_classes, seed, n_jobs).fit(x[tr], ytr, wtr, gtr)
        crossfit[i] = (tr, log_proba(kind.crossfit(x[tr], ytr, wtr, gtr, n_classes, seed, n_jobs)))
    replaced = prob_apply(specs, features, xs_np, fitted, n_classes)  # every present row: the fold's expert
    for i, (tr, logp) in crossfit.items():                             # its own training rows: cross-fitted
        replaced[i][tr, 0] = logp
    return fitted, replaced


def prob_apply(specs, features, xs_np, fitted: dict, n_classes: int) -> dict:
    replaced = {}
    for i, (spec, fd) in enumerate(zip(specs, features)):
        if spec.head not in PROB_HEADS:
            continue
        x = xs_np[i][:, 0, :]
        logp = np.zeros((len(x), 1, n_classes), np.float32)
        present = np.flatnonzero(fd.present)
        if len(present):
            logp[present, 0] = log_proba(fitted[fd.key].predict_proba(x[present]))
        replaced[i] = logp
    return replaced


@dataclass
class Tensors:
    xs: list
    masks: list
    presents: list

    def take(self, idx):
        return ([x.index_select(0, idx) for x in self.xs], [m.index_select(0, idx) for m in self.masks],
                [p.index_select(0, idx) for p in self.presents])


def to_tensors(features, xs_np, replaced: dict, device) -> Tensors:
    xs, masks, presents = [], [], []
    for i, fd in enumerate(features):
        if i in replaced:
            x = torch.from_numpy(replaced[i])
            m = torch.ones(x.shape[:2], dtype=torch.bool)
        else:
            x = torch.from_numpy(np.ascontiguousarray(xs_np[i]))
            m = torch.from_numpy(fd.tok_mask)
        xs.append(x.to(device))
        masks.append(m.to(device))
        presents.append(torch.from_numpy(fd.present).to(device))
    return Tensors(xs, masks, presents)


# ----------------------------------------------------------------------------------------------- loop
@torch.no_grad()
def predict_rows(model, tensors: Tensors, rows: np.ndarray, device, with_weights: bool = False):
    """Member probabilities of ``rows`` (eval mode: BatchNorm running stats, no dropout) -> (probs,
    present); with ``with_weights`` also the router (or attention) weights per row, (n, K) or None."""
    model.eval()
    probs: dict = {}
    present: dict = {}
    weights: list = []
    for start in range(0, len(rows), EVAL_CHUNK):
        idx = torch.as_tensor(rows[start:start + EVAL_CHUNK], dtype=torch.long, device=device)
        out = model(*tensors.take(idx))
        for m, lg in out.logits.items():
            probs.setdefault(m, []).append(torch.softmax(lg.double(), dim=1).cpu())
            present.setdefault(m, []).append(out.present[m].cpu())
        if out.weights is not None:
            weights.append(out.weights.double().cpu())
    if not len(rows):
        return ({}, {}, None) if with_weights else ({}, {})
    res = ({m: torch.cat(v).numpy() for m, v in probs.items()},
           {m: torch.cat(v).numpy().astype(bool) for m, v in present.items()})
    return (*res, torch.cat(weights).numpy() if weights else None) if with_weights else res


def weight_names(model) -> list[str]:
    """What each column of the model's router (MoE: experts + fused) or attention weights is."""
    names = [s.member for s in model.specs]
    return names + ["fused"] if model.main == "routed" else names


def _batches(perm: torch.Tensor, size: int) -> list[torch.Tensor]:
    parts = list(torch.split(perm, size))
    if len(parts) > 1 and len(parts[-1]) == 1:      # a lone last row would make BatchNorm useless
        parts[-2] = torch.cat([parts[-2], parts[-1]])
        parts.pop()
    return parts


def train_model(model, tensors: Tensors, train_rows, y_train, w_train, val_rows, y_val, cfg: TrainConfig,
                seed: int, progress=None) -> tuple[list[dict], int, float]:
    """Train with early stopping on validation weighted F1 of the model's main output; the weights
    of the best epoch are restored. Returns (curve rows, best epoch, best val weighted F1)."""
    device = cfg.device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    rows_t = torch.as_tensor(train_rows, dtype=torch.long)
    y_all = torch.as_tensor(y_train, dtype=torch.long)
    w_all = torch.as_tensor(w_train, dtype=torch.float32)
    yv = torch.as_tensor(y_val, dtype=torch.long, device=device)
    curve, best_key, best_state, best_epoch, bad = [], None, None, 0, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(len(rows_t), generator=gen)
        total, seen = 0.0, 0
        for b in _batches(perm, cfg.batch_size):
            idx = rows_t[b].to(device)
            out = model(*tensors.take(idx))
            loss = model.loss(out, y_all[b].to(device), w_all[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += loss.detach().item() * len(b)
            seen += len(b)
        model.eval()
        with torch.no_grad():
            vl, vseen, preds = 0.0, 0, []
            for start in range(0, len(val_rows), EVAL_CHUNK):
                idx = torch.as_tensor(val_rows[start:start + EVAL_CHUNK], dtype=torch.long, device=device)
                out = model(*tensors.take(idx))
                yy = yv[start:start + EVAL_CHUNK]
                vl += model.loss(out, yy, torch.ones_like(yy, dtype=torch.float32)).item() * len(idx)
                vseen += len(idx)
                preds.append(out.logits[out.main].argmax(1).cpu())
        pred = torch.cat(preds).numpy() if preds else np.zeros(0, int)
        f1 = weighted_f1(y_val, pred)
        val_loss = vl / max(vseen, 1)
        curve.append({"epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": val_loss,
                      "val_weighted_f1": f1})
        key = (round(f1, 10), -round(val_loss, 10))
        if best_key is None or key > best_key:
            best_key, best_epoch, bad = key, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        if progress is not None:
            progress.set_postfix(epoch=epoch, val_f1=f"{f1:.3f}", best=f"{best_key[0]:.3f}@{best_epoch}")
        if bad >= cfg.patience:
            break
    model.load_state_dict(best_state)
    return curve, best_epoch, best_key[0]


# ----------------------------------------------------------------------------------------------- CV
def fit_normalizers(problem: Problem, mode: str, train_rows) -> dict:
    fit = NORMALIZERS[mode]
    return {fd.key: fit(fd, train_rows, row_groups=problem.row_groups) for fd in problem.features}


def cross_validate(problem: Problem, cfg: TrainConfig, on_fold=None, progress: bool = True) -> CVResult:
    """K folds x seeds. ``on_fold(fold, seed, saved_model_dict, curve)`` is called after each fit
    (the run directory writes model files and curves through it)."""
    n_lab, c = len(problem.lab_rows), problem.n_classes
    weights = problem.weights if problem.weights is not None else np.ones(n_lab)
    specs = expert_specs(problem.features, cfg.head, c)
    members = build_model(cfg.model, specs, c, cfg.arch()).members()
    names = [m["member"] for m in members]
    oof_sum = {m: np.zeros((n_lab, c)) for m in names}
    oof_n = {m: np.zeros(n_lab) for m in names}
    test_sum = {m: np.zeros((len(problem.test_rows), c)) for m in names}
    test_n = {m: np.zeros(len(problem.test_rows)) for m in names}
    result = CVResult(members, {}, {})
    result.weight_names = weight_names(build_model(cfg.model, specs, c, cfg.arch()))
    k_w = len(result.weight_names)
    w_oof, n_w_oof = np.zeros((n_lab, k_w)), np.zeros(n_lab)
    w_test, n_w_test = np.zeros((len(problem.test_rows), k_w)), 0
    global_norm = global_xs = None
    if cfg.normalize in FOLD_INDEPENDENT:  # same statistics, hence same inputs, in every fold: normalise once
        global_norm = fit_normalizers(problem, cfg.normalize, None)
        # read-only from here on: prob_inputs copies the rows it fits on, to_tensors shares the arrays
        # (torch.from_numpy) and the loop only ever reads them through index_select (Tensors.take)
        global_xs = normalize_features(problem.features, global_norm, problem.row_groups)
    n_jobs = max(1, torch.get_num_threads())
    bar = tqdm(total=cfg.folds * len(cfg.seeds), desc=f"fit {cfg.model}", unit="fit", disable=not progress)
    with deterministic():
        for seed in cfg.seeds:
            for fold, (tr, va) in enumerate(make_folds(problem.y, problem.groups, cfg.folds, seed)):
                bar.set_description(f"fit {cfg.model} seed {seed} fold {fold}")
                run_seed = seed * 1000 + fold
                train_rows = problem.lab_rows[tr]
                y_train, w_train = problem.y[tr], weights[tr]
                g_train = None if problem.groups is None else problem.groups[tr]
                pretrain = problem.train_only is not None and cfg.stage2 == "pretrain-finetune"
                lab_train = (train_rows, y_train, w_train)
                if problem.train_only is not None:
                    t = problem.train_only
                    train_rows = np.concatenate([train_rows, t.rows])
                    y_train = np.concatenate([y_train, t.y])
                    w_train = np.concatenate([w_train, t.weights])
                    g_train = None if g_train is None else np.concatenate(
                        [g_train, np.array([f"__train_only_{i}" for i in range(len(t.rows))], dtype=object)])
                w_train = w_train * class_weights(y_train, c, cfg.class_weight)[y_train]
                if global_norm is not None:
                    norms, xs_np = global_norm, global_xs
                else:
                    norms = fit_normalizers(problem, cfg.normalize, train_rows)
                    xs_np = normalize_features(problem.features, norms, problem.row_groups)
                torch.manual_seed(run_seed)
                np.random.seed(run_seed % (2 ** 32))
                boosters, replaced = prob_inputs(specs, problem.features, xs_np, train_rows, y_train, w_train,
                                                 g_train, c, run_seed, n_jobs)
                tensors = to_tensors(problem.features, xs_np, replaced, cfg.device)
                del xs_np
                model = build_model(cfg.model, specs, c, cfg.arch()).to(cfg.device)
                val_rows = problem.lab_rows[va]
                if pretrain:  # stage 2, pretrain-finetune: pseudo-labeled rows first, then the labeled fold
                    t = problem.train_only
                    w_pre = t.weights * class_weights(t.y, c, cfg.class_weight)[t.y]
                    curve0, _, _ = train_model(model, tensors, t.rows, t.y, w_pre, val_rows, problem.y[va], cfg,
                                               run_seed + 500, progress=bar)
                    rows_l, y_l, w_l = lab_train
                    w_l = w_l * class_weights(y_l, c, cfg.class_weight)[y_l]
                    curve, best_epoch, best_f1 = train_model(model, tensors, rows_l, y_l, w_l, val_rows,
                                                             problem.y[va], cfg, run_seed, progress=bar)
                    curve = [dict(r, phase="pretrain") for r in curve0] + [dict(r, phase="finetune") for r in curve]
                else:
                    curve, best_epoch, best_f1 = train_model(model, tensors, train_rows, y_train, w_train, val_rows,
                                                             problem.y[va], cfg, run_seed, progress=bar)
                probs, present, wts = predict_rows(model, tensors, val_rows, cfg.device, with_weights=True)
                for m in names:
                    ok = present[m]
                    oof_sum[m][va[ok]] += probs[m][ok]
                    oof_n[m][va[ok]] += 1
                if wts is not None:
                    w_oof[va] += wts
                    n_w_oof[va] += 1
                if len(problem.test_rows):
                    probs, present, wts = predict_rows(model, tensors, problem.test_rows, cfg.device, with_weights=True)
                    for m in names:
                        ok = present[m]
                        test_sum[m][ok] += probs[m][ok]
                        test_n[m][ok] += 1
                    if wts is not None:
                        w_test += wts
                        n_w_test += 1
                if on_fold is not None:
                    on_fold(fold, seed, saved_model(model, cfg, specs, problem.classes, norms, boosters, fold, seed,
                                                    best_epoch, best_f1), curve)
                del tensors, model
                bar.update(1)
    bar.close()
    for m in names:
        with np.errstate(invalid="ignore", divide="ignore"):
            result.oof[m] = oof_sum[m] / oof_n[m][:, None]
            result.test[m] = test_sum[m] / test_n[m][:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        result.oof_weights = w_oof / n_w_oof[:, None]
        result.test_weights = w_test / max(n_w_test, 1)
    return result


# ----------------------------------------------------------------------------------------------- model files
def _norm_to_torch(norm: FeatureNormalizer) -> dict:
    d = norm.to_dict()
    conv = lambda s: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in s.items()}  # noqa: E731
    return {"base": conv(d["base"]), "groups": {g: conv(s) for g, s in d["groups"].items()}}


def _norm_from_torch(d: dict) -> FeatureNormalizer:
    conv = lambda s: {k: v.numpy() for k, v in s.items()}  # noqa: E731
    return FeatureNormalizer.from_dict({"base": conv(d["base"]), "groups": {g: conv(s) for g, s in d["groups"].items()}})


def saved_model(model, cfg: TrainConfig, specs, classes, norms: dict, boosters: dict, fold, seed, best_epoch,
                best_f1) -> dict:
    return {"format": MODEL_FORMAT, "model": cfg.model, "arch": cfg.arch(), "normalize": cfg.normalize,
            "specs": [s.to_dict() for s in specs], "classes": list(classes),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "normalizers": {k: _norm_to_torch(v) for k, v in norms.items()},
            "prob_heads": {k: b.to_string() for k, b in boosters.items()},  # lgbm / logreg experts, as text
            "fold": int(fold), "seed": int(seed), "best_epoch": int(best_epoch), "val_weighted_f1": float(best_f1)}


def load_model_file(path) -> dict:
    import pickle

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{path}: not a loadable model file of this toolkit (torch.load with weights_only=True "
                         f"refused it: {first}); re-run `cli.py fit`") from None
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise InputError(f"{path}: not a model file of this toolkit (format "
                         f"{saved.get('format') if isinstance(saved, dict) else type(saved).__name__!r})")
    return saved


def saved_inputs(saved: dict, features: list[FeatureData], row_groups=None) -> list[np.ndarray]:
    """``features`` normalised with a model file's statistics (group mode: groups unseen at fit time
    get statistics from the rows being predicted)."""
    norms = {}
    for fd in features:
        norm = _norm_from_torch(saved["normalizers"][fd.key])
        if saved["normalize"] == "group":
            norm = extend_groups(norm, fd, row_groups)
        norms[fd.key] = norm
    return normalize_features(features, norms, row_groups)


def same_statistics(a, b) -> bool:
    """Two model files' stored normalizers hold exactly the same figures (nested dicts of tensors)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_statistics(a[k], b[k]) for k in a)
    return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)


class SharedInputs:
    """Normalised inputs reused across the model files of one run: with ``pool``/``group``
    statistics every fold x seed stores the same normalizers, so the features are normalised once
    (checked figure by figure; fold-mode files, or differing figures, get their own)."""

    def __init__(self, features: list[FeatureData], row_groups=None):
        self.features, self.row_groups = features, row_groups
        self._norms = self._xs = None

    def __call__(self, saved: dict) -> list[np.ndarray]:
        if saved["normalize"] not in FOLD_INDEPENDENT:
            return saved_inputs(saved, self.features, self.row_groups)
        if self._xs is None or not same_statistics(self._norms, saved["normalizers"]):
            self._norms, self._xs = saved["normalizers"], saved_inputs(saved, self.features, self.row_groups)
        return self._xs


def model_from_saved(saved: dict, device: str = "cpu"):
    """The network of a model file, weights loaded, in eval mode."""
    specs = [ExpertSpec(**s) for s in saved["specs"]]
    model = build_model(saved["model"], specs, len(saved["classes"]), saved["arch"]).to(device)
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def predict_saved(saved: dict, features: list[FeatureData], row_groups=None, device: str = "cpu",
                  xs_np: list[np.ndarray] | None = None, with_weights: bool = False, model=None):
    """Probabilities of every row of ``features`` (ordered as the saved specs) with one model file.
    ``xs_np``: the features already normalised with this file's statistics (see SharedInputs); only
    read, never written."""
    specs = [ExpertSpec(**s) for s in saved["specs"]]
    c = len(saved["classes"])
    if xs_np is None:
        xs_np = saved_inputs(saved, features, row_groups)
    head_of = {sp.key: sp.head for sp in specs}
    boosters = {k: PROB_HEADS[head_of[k]].load(v, c) for k, v in saved["prob_heads"].items()}
    replaced = prob_apply(specs, features, xs_np, boosters, c)
    tensors = to_tensors(features, xs_np, replaced, device)
    model = model if model is not None else model_from_saved(saved, device)
    res = predict_rows(model, tensors, np.arange(len(features[0].present)), device, with_weights)
    if with_weights:
        return (*res, weight_names(model))  # (probs, present, weights (n, K) or None, their names)
    return res
