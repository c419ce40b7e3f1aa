"""``predict``: class probabilities of cached clips with a published RUN_DIR (mean over its models).

    from models import predict
    pred = predict("runs/stage1", "cache")          # every cached id of the run's features
    pred.probs[pred.routed]                          # (n, C), NaN where a member has no prediction
    pred.write("probs.csv")                          # name,<classes...> + probs.csv.meta.json
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from extract.cache import FeatureCache, atomic_open
from extract.outputs import WRITTEN_BY, check_output
from models.data import InputError, cached_ids, first_few, load_features, read_group_table, read_id_list
from models.fitting import Notes, drop_featureless, groups_of
from models.run_dir import Run, read_run, write_probs
from models.train import SharedInputs, load_model_file, model_from_saved, predict_saved, resolve_device


def sidecar(out) -> Path:
    return Path(f"{out}.meta.json")


@dataclass
class Prediction:
    ids: list[str]
    probs: dict[str, np.ndarray]   # member -> (n, C), NaN where the member has no prediction
    run: Run
    notes: list[str] = field(default_factory=list)
    weights: np.ndarray | None = None     # (n, K) router weights averaged over the run's models
    weight_names: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.run.classes

    @property
    def routed(self) -> str:
        return self.run.routed_member()

    def write(self, out, member: str | None = None, force: bool = False) -> int:
        """``name,<classes>`` of one member (default: the routed output) + a provenance sidecar."""
        member = member or self.routed
        if member not in self.probs:
            raise InputError(f"--member {member!r} is not a member of {self.run.root} "
                             f"(members: {', '.join(self.probs)})")
        check_output(out, "predict", [sidecar(out)], force)
        n = write_probs(Path(out), self.ids, self.probs[member], self.classes)
        meta = {WRITTEN_BY: "predict", "run": str(self.run.root), "member": member, "models": len(self.run.model_files),
                "rows": n, "ids_without_prediction": len(self.ids) - n, "classes": self.classes,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_provenance": self.run.provenance()}
        with atomic_open(sidecar(out)) as fh:
            json.dump(meta, fh, indent=1, default=str)
        return n


def load_features_like(run: Run, fc, keys, ids, first_model: dict | None = None):
    """The features of ``ids`` shaped as the run's models were trained: a series longer than the
    frames a model was built for (a new, longer clip) is subsampled evenly to that many, as the
    cache subsamples to --max-frames."""
    from models.data import FeatureData

    cap = run.config.get("max_frames", 64)
    specs = {s["key"]: s for s in (first_model or load_model_file(run.model_files[0]))["specs"]}
    out = []
    for k in keys:
        fd = load_features(fc, [k], ids, max_frames=min(cap, specs[k]["n_tokens"] if k in specs else cap))[0]
        spec = specs.get(k)
        if spec is not None and not fd.present.any() and fd.dim != spec["dim"]:  # no value at all: the model's shape
            t = spec["n_tokens"] if fd.kind == "layers" else 1
            fd = FeatureData(k, fd.kind, np.zeros((len(ids), t, spec["dim"]), np.float32),
                             np.zeros((len(ids), t), bool), fd.present, fd.meta)
        out.append(fd)
    return out


def predict(run_dir, cache, ids=None, group_table=None, device: str = "auto", strict: bool = False,
            progress: bool = True, models: dict | None = None, built: dict | None = None) -> Prediction:
    """Average the run's fold/seed models over ``ids`` (a list, or a CSV with a name column; default: every
    cached id of the run's features). ``run_dir`` may be an opened ``Run``; ``models`` ({path: loaded model
    file}) and ``built`` ({path: network}) let a caller that predicts often (the Recogniser) load and build
    each model once."""
    note = Notes()
    run = run_dir if isinstance(run_dir, Run) else read_run(run_dir)
    models = models if models is not None else {}
    if not Path(cache).is_dir():
        raise InputError(f"--cache {cache}: no such directory")
    device = resolve_device(device)
    fc = FeatureCache(cache)
    keys = list(run.config["features"])
    missing_keys = [k for k in keys if k not in fc.keys()]
    if missing_keys:
        raise InputError(f"cache {cache} lacks the feature sets this run was trained on: {', '.join(missing_keys)}; "
                         "extract them with the same configuration (the key holds its hash)")
    known, usable = cached_ids(fc, keys)
    if ids is not None:
        source = ids if isinstance(ids, (str, Path)) else "--ids"
        want = list(dict.fromkeys(read_id_list(ids) if isinstance(ids, (str, Path)) else ids))
        absent = [i for i in want if i not in usable]
        if absent:
            msg = (f"{source}: {len(absent)} of {len(want)} ids have no feature in cache {cache} "
                   f"(first: {first_few(absent)}); they get no prediction")
            if strict:
                raise InputError(msg)
            note(msg)
        ids = [i for i in want if i in usable]
    else:
        ids = sorted(usable)
    if not ids:
        raise InputError(f"no id to predict: none of the requested ids has a feature in cache {cache}")
    first = models.get(run.model_files[0]) or load_model_file(run.model_files[0])
    feats = load_features_like(run, fc, keys, ids, first)
    ids, feats, dead = drop_featureless(ids, feats)
    if dead:
        note(f"{len(dead)} ids have no usable value in any feature of the run (first: {first_few(dead)}); "
             "no prediction")
    row_groups = None
    if run.config.get("normalize") == "cluster":
        clusters = run.clusters()
        if clusters is None:
            raise InputError(f"{run.root}: a --normalize cluster run without clusters.json; re-run `cli.py fit`")
        if clusters.feature not in fc.keys():
            raise InputError(f"cache {cache} lacks {clusters.feature}, the speaker embedding this run's clusters were "
                             "made from; extract it with the same configuration")
        emb = load_features(fc, [clusters.feature], ids)[0]
        row_groups = clusters.assign(emb.x[:, 0, :], emb.present)
    elif run.config.get("normalize") == "group":
        table = read_group_table(group_table) if group_table else {}
        row_groups = groups_of(ids, table, strict, note, lambda uncovered: (
            f"this run normalises per group: {len(uncovered)} ids have no group (first: {first_few(uncovered)}); "
            "they get pool statistics; pass --group-table CSV (name,group)"))
    c = len(run.classes)
    sums, counts = {}, {}
    from tqdm.auto import tqdm

    inputs = SharedInputs(feats, row_groups)
    w_sum, w_names = None, []
    for path in tqdm(run.model_files, desc="predict", unit="model", disable=not progress):
        saved = models.get(path) or (first if path == run.model_files[0] else load_model_file(path))
        if built is not None and path not in built:
            built[path] = model_from_saved(saved, device)
        probs, present, wts, w_names = predict_saved(saved, feats, row_groups, device, xs_np=inputs(saved),
                                                     with_weights=True, model=None if built is None else built[path])
        if wts is not None:
            w_sum = wts if w_sum is None else w_sum + wts
        for m, p in probs.items():
            sums.setdefault(m, np.zeros((len(ids), c)))
            counts.setdefault(m, np.zeros(len(ids)))
            ok = present[m]
            sums[m][ok] += p[ok]
            counts[m][ok] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {m: sums[m] / counts[m][:, None] for m in sums}
    weights = None if w_sum is None else w_sum / len(run.model_files)
    return Prediction(ids, out, run, list(note), weights, list(w_names) if w_sum is not None else [])
