"""Recognise new clips with an exported bundle (``cli.py recognise``)::

    from ensemble import Recogniser
    rec = Recogniser.load("model/")
    r = rec.predict("clip.mp4")     # label, probabilities, confidence, per-expert probabilities, router weights
    rs = rec.predict_many(["a.mp4", "videos/"], cache="cache")

Each clip is decoded once and only the bundle's features are extracted (the same extractors and
configuration: the cache key must come out identical), into a temporary cache unless one is given
(then a re-run is instant). Every model of the bundle predicts, the ensemble votes with the weights
re-derived from the bundle's out-of-fold rows, the rules apply (those needing an annotator only
with answers), and the calibrated confidence says how far to trust the label.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from extract.errors import UserError

from .bundle import Bundle, BundleError, open_bundle

LOG = logging.getLogger("moe.ensemble")


@dataclass
class Recognition:
    clip: str                       # clip id (file stem, or path relative to the folder given)
    label: str | None               # None: nothing could be extracted (see ``failure``)
    confidence: float = float("nan")  # calibrated probability of the label
    probabilities: dict = field(default_factory=dict)      # class -> calibrated probability
    scores: dict = field(default_factory=dict)             # class -> final score (vote + rules), uncalibrated
    top3: list = field(default_factory=list)               # [(class, probability)]
    experts: dict = field(default_factory=dict)            # expert -> {class: probability} (present ones)
    router: dict = field(default_factory=dict)             # expert (or fused) -> mean router weight
    absent: list = field(default_factory=list)             # experts without input for this clip
    abstained: bool = False
    failure: str | None = None
    source: str | None = None       # the file

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _decode_for(features: list[dict]):
    """One DecodeConfig serving every feature (their decode options must agree)."""
    from extract.media import DecodeConfig

    merged: dict = {}
    for f in features:
        for k, v in (f.get("decode") or {}).items():
            if k in merged and merged[k] != v:
                raise BundleError(f"the bundle's features disagree on decode option {k} ({merged[k]} vs {v}): "
                                  "recognise cannot decode each clip once for all of them")
            merged[k] = v
    known = set(DecodeConfig.__dataclass_fields__)
    return DecodeConfig(**{k: v for k, v in merged.items() if k in known})


def _rebuild(cls, feature: dict, recorded: dict, decode, device: str):
    try:
        config = cls.Config(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in recorded.items()})
    except TypeError as exc:
        raise BundleError(f"feature {feature['key']}: its recorded config does not fit {cls.name} ({exc})") from None
    return cls(config, decode=decode, device=device)


def build_extractors(features: list[dict], device: str = "auto", relocate: dict | None = None):
    """The bundle's extractors, rebuilt from their recorded specs; each must give the recorded key.
    ``relocate``: {model path the bundle names: where it is now} (ensemble/relocate.py)."""
    from extract.registry import REGISTRY, load_all

    from .relocate import key_before_the_move, not_the_same_model, relocated_config, why_the_key_differs

    load_all()
    decode = _decode_for(features)
    out = []
    for f in features:
        cls = REGISTRY.get(f.get("extractor") or "")
        if cls is None:
            raise BundleError(f"feature {f['key']}: extractor {f.get('extractor')!r} is not registered here (a "
                              "synthetic or foreign feature): this bundle can only predict clips already cached")
        config, moved = relocated_config(f.get("config") or {}, relocate)
        ex = _rebuild(cls, f, config, decode, device)
        if key_before_the_move(ex, moved) != f["key"]:  # an option that resolves per machine (auto): as it did
            pinned = cls.pinned_config(config, f.get("model"))
            alt = _rebuild(cls, f, pinned, decode, device) if pinned is not None else None
            ex = alt if alt is not None and key_before_the_move(alt, moved) == f["key"] else ex
        if key_before_the_move(ex, moved) != f["key"]:
            why = not_the_same_model(f, ex, moved) if moved else why_the_key_differs(f, ex)
            raise BundleError(f"feature {f['key']}: " + (why or (
                f"rebuilding {cls.name} from the bundle gives key {ex.key} (extractor version {cls.version}, "
                f"bundle {f.get('extractor_version')}): the features would differ from the ones the models "
                "were trained on")))
        out.append(ex.filed_as(f["key"]) if moved else ex)
    return out, decode


class Recogniser:
    def __init__(self, bundle: Bundle, annotator=None, device: str = "auto", split: bool = True,
                 relocate: dict | None = None):
        """``relocate``: {a local model's path as the bundle names it: where it is now}, checked by
        its checksum (ensemble/relocate.py). ``split``: compute each clip's audio sets in a worker
        process while this process computes the others, where that can help (see
        ensemble/audio_worker.py); the worker starts loading its models now, while this process loads
        the bundle's."""
        self._extractors = None
        self._decode = None
        self._audio_worker = None
        self._work = None
        self.device = device
        self.bundle = bundle
        self.relocate = dict(relocate or {})
        try:
            if split:
                self._start_audio_worker()
            self._load_bundle(bundle, annotator)
        except BaseException:
            self.close()  # the audio worker started above ends now, not at its idle timeout
            raise

    def _load_bundle(self, bundle: Bundle, annotator) -> None:
        """The ensemble, rules, calibration and fitted models of ``bundle``, loaded once."""
        from extract.annotator import Annotator, load_annotator

        from .pipeline import EnsemblePipeline
        from .reranking import parse_rules

        self.classes = bundle.classes
        recipe = bundle.record["recipe"]
        own = load_annotator(bundle.annotator_path()) if bundle.annotator_path() else None
        user = load_annotator(annotator) if annotator else None
        if own is not None or user is not None:
            answers = {**(own.answers if own else {}), **(user.answers if user else {})}
            self.annotator = Annotator(Path(annotator or bundle.annotator_path()), answers)
        else:
            self.annotator = None
        entries = list(recipe["rules"])
        self.skipped_rules: list[str] = []
        if user is None:  # rules that need answers for the new clips run only with --annotator
            self.skipped_rules = [e.get("rule") for e in entries if e.get("rule") == "annotator_override"]
            entries = [e for e in entries if e.get("rule") != "annotator_override"]
        rules = parse_rules(entries, self.classes, f"{bundle.root}/bundle.json", have_annotator=self.annotator is not None)
        split, y = bundle.tuning()
        from .api import _power

        self.pipeline = EnsemblePipeline(self.classes, recipe["vote"], _power(recipe["power"]), rules,
                                         self.annotator).fit(split, y)
        from .calibration import TemperatureScaler

        self.scaler = TemperatureScaler(bundle.record["calibration"]["temperature"]).fit(split.probs[0], [])
        self.member_names = [m["name"] for m in bundle.record["members"]]
        self.members = bundle.record["members"]
        from models.run_dir import read_run
        from models.train import load_model_file

        self.runs = [read_run(d) for d in bundle.run_dirs()]  # opened and loaded once, used for every clip
        self.models = {p: load_model_file(p) for run in self.runs for p in run.model_files}
        self.built: dict = {}

    @classmethod
    def load(cls, path, annotator=None, device: str = "auto", split: bool = True,
             relocate: dict | None = None) -> "Recogniser":
        return cls(open_bundle(path), annotator, device, split, relocate)

    def _start_audio_worker(self) -> None:
        from extract.executors import hold_local_workers

        from . import audio_worker

        try:
            extractors = self.extractors()
        except BundleError:
            return  # reported by the first prediction that needs them (a bundle of cached clips only)
        if audio_worker.wanted(extractors, self.device):
            self._work = tempfile.mkdtemp(prefix="moe-recognise-")  # the worker's log of library output
            self._audio_worker = audio_worker.AudioWorker(extractors, self._decode,
                                                          os.path.join(self._work, "audio-worker.log"))
            hold_local_workers(self)  # close() lets the worker go

    def close(self) -> None:
        """Release the extractors' models (MediaPipe landmarkers must be closed before the
        interpreter exits; an atexit hook does it for a Recogniser left open) and end the worker
        processes that ``predict_many(jobs > 1)`` keeps between calls."""
        if self._extractors is not None:
            from extract.runner import close_loaded

            close_loaded(self._extractors)
        from extract.executors import stop_local_workers

        # the workers this Recogniser held (audio worker, predict_many(jobs > 1)), unless another
        # Recogniser still holds them; nothing if it held none
        stop_local_workers(self)
        self._audio_worker = None
        if self._work is not None:
            import shutil

            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

    def __enter__(self) -> "Recogniser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- features -------------------------------------------------------------------------------
    def extractors(self):
        if self._extractors is None:
            self._extractors, self._decode = build_extractors(self.bundle.record["features"], self.device,
                                                                  self.relocate)
        return self._extractors

    def _extract(self, paths, cache, progress: bool, jobs: int = 1, own_cache: bool = False) -> dict[str, str]:
        """Extract the bundle's features of ``paths`` (files and folders) into ``cache``; each clip is
        decoded once. ``own_cache``: ``cache`` is this call's temporary one (the audio worker may
        write into it). Returns {clip id: source file}."""
        import shutil

        from extract import media
        from extract.executors import hold_local_workers, usable_cores
        from extract.runner import run_extract

        extractors = self.extractors()
        ids: dict[str, str] = {}
        folders: list[Path] = []
        singles: dict[str, Path] = {}  # file name -> a file given alone (linked into `loose` by name)
        in_folders: set[str] = set()  # ids a folder given brings
        loose = Path(tempfile.mkdtemp(prefix="moe-recognise-"))
        try:
            for p in map(Path, paths):
                if not p.exists():
                    raise UserError(f"{p}: no such file or folder")
                if p.is_dir():
                    found = {cid: str(path) for cid, path in media.discover(p)[0].items()}
                    folders.append(p)
                    in_folders.update(found)
                else:
                    if p.suffix.lower() not in media.MEDIA_EXTENSIONS:
                        raise UserError(f"{p}: not a media file this tool reads (extension {p.suffix or 'none'})")
                    if p.name in singles:
                        if os.path.samefile(singles[p.name], p):  # the same file given twice
                            continue
                        raise UserError(f"two files are both called {p.name!r}: give them in separate calls")
                    singles[p.name] = p
                    found = {media.clip_id(loose / p.name, loose): str(p)}
                # a file given alone and inside a folder given too is one clip, not a clash
                clash = sorted(c for c in set(found) & set(ids) if not os.path.samefile(ids[c], found[c]))
                if clash:
                    raise UserError(f"two clips are both called {clash[0]!r} ({ids[clash[0]]}, {found[clash[0]]}): "
                                    "give them in separate calls or rename one")
                ids.update(found)
            for name, p in singles.items():  # linked unless a folder given brings it (extracted once)
                if media.clip_id(loose / name, loose) not in in_folders:
                    os.symlink(p.resolve(), loose / name)
            if any(loose.iterdir()):
                folders.append(loose)
            if jobs != 1:  # a number > 1, or auto: the workers wait, models loaded, until close()
                hold_local_workers(self)

            def run_here(folder, exs, cache):
                # the extractors stay loaded between calls (closed by close()): a call then costs the clip,
                # not loading whisper, MiniLM and MediaPipe again (0.5 s per call with the default bundle)
                # one process: whisper's pool takes every usable core (its values do not depend on it)
                return run_extract(folder, exs, cache, self._decode, jobs=jobs, progress=progress, keep_loaded=True,
                                   pool_threads=usable_cores() if jobs == 1 else None)

            if self._audio_worker is not None and own_cache and jobs == 1:
                self._audio_worker.extract(folders, cache, run_here)
            else:
                for folder in folders:
                    run_here(folder, extractors, cache)
        finally:
            shutil.rmtree(loose, ignore_errors=True)
        return ids

    # -- prediction -----------------------------------------------------------------------------
    def predict(self, clip, cache=None, abstain_below: float | None = None, progress: bool = False) -> Recognition:
        res = self.predict_many([clip], cache, abstain_below, progress)
        return res[0]

    def predict_many(self, paths, cache=None, abstain_below: float | None = None, progress: bool = False,
                     jobs: int = 1) -> list[Recognition]:
        """Recognise media files and folders (one result per clip, sorted by clip id)."""
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        tmp = None
        if cache is None:
            tmp = tempfile.TemporaryDirectory(prefix="moe-recognise-cache-")
            cache = tmp.name
        try:
            sources = self._extract(paths, cache, progress, jobs, own_cache=tmp is not None)
            out = self.predict_cached(sorted(sources), cache, abstain_below)
        finally:
            if tmp is not None:
                tmp.cleanup()
        for r in out:
            r.source = sources.get(r.clip)
        return out

    def predict_cached(self, ids, cache, abstain_below: float | None = None) -> list[Recognition]:
        """Recognise clips whose features are already in ``cache`` (the bundle's feature keys)."""
        from extract.cache import FeatureCache
        from models.data import cached_ids
        from models.predicting import predict

        from .members import Split

        ids = list(dict.fromkeys(ids))
        fc = FeatureCache(cache)
        keys = [f["key"] for f in self.bundle.record["features"]]
        missing_sets = [k for k in keys if k not in fc.keys()]
        known, usable = cached_ids(fc, [k for k in keys if k not in missing_sets]) if len(missing_sets) < len(keys) \
            else (set(), set())
        failures = {}
        recorded = {k: fc.feature_set(k).failures() for k in keys if k not in missing_sets}  # read once
        for cid in ids:
            if cid not in usable:
                reasons = [f"{k}: {fails.get(cid, 'not extracted')}" for k, fails in recorded.items()]
                failures[cid] = "; ".join(reasons) or "no feature could be extracted"
        good = [i for i in ids if i in usable]
        M, C = len(self.member_names), len(self.classes)
        probs = np.full((M, len(good), C), np.nan, np.float32)
        present = np.zeros((M, len(good)), bool)
        router_sum = np.zeros((len(good), 0))
        router_names: list[str] = []
        n_router = 0
        pos = {cid: k for k, cid in enumerate(good)}
        expert_probs: dict[str, np.ndarray] = {}
        if good:
            for k, run in enumerate(self.runs):
                if any(key not in fc.keys() for key in run.config.get("features", [])):
                    continue
                pred = predict(run, cache, ids=list(good), device=self.device, progress=False, models=self.models,
                               built=self.built)
                rows = np.array([pos[i] for i in pred.ids], dtype=np.int64)
                for m_idx, m in enumerate(self.members):
                    if m["run"] != k or m["member"] not in pred.probs:
                        continue
                    p = pred.probs[m["member"]]
                    ok = np.isfinite(p).all(axis=1)
                    probs[m_idx, rows[ok]] = p[ok].astype(np.float32)
                    present[m_idx, rows[ok]] = True
                    if m["kind"] == "expert":
                        full = np.full((len(good), C), np.nan)
                        full[rows] = p
                        expert_probs.setdefault(m["member"], full)
                if pred.weights is not None:
                    if not router_names:
                        router_names = pred.weight_names
                        router_sum = np.zeros((len(good), len(router_names)))
                    if pred.weight_names == router_names:
                        router_sum[rows] += pred.weights
                        n_router += 1
        split = Split(good, probs, present)
        result = self.pipeline.run(split) if good else None
        out = []
        from .explain import short

        calibrated = self.scaler.transform(result.final.scores) if good else np.zeros((0, C))
        for cid in ids:
            if cid in failures:
                out.append(Recognition(cid, None, failure=failures[cid]))
                continue
            r = pos[cid]
            cal = calibrated[r]
            order = np.argsort(-cal, kind="stable")
            label = self.classes[int(result.final.labels[r])]
            rec = Recognition(
                cid, label, float(cal[self.classes.index(label)]),
                {c: float(v) for c, v in zip(self.classes, cal)},
                {c: float(v) for c, v in zip(self.classes, result.final.scores[r])},
                [(self.classes[j], float(cal[j])) for j in order[:3]],
                {short(m): {c: float(v) for c, v in zip(self.classes, p[r])}
                 for m, p in expert_probs.items() if np.isfinite(p[r]).all()},
                {short(n): float(w) for n, w in zip(router_names, router_sum[r] / max(n_router, 1))} if n_router else {},
                sorted({short(m) for m, p in expert_probs.items() if not np.isfinite(p[r]).all()}
                       | {short(m["member"]) for m in self.members if m["kind"] == "expert"
                          and m["member"] not in expert_probs}))
            if abstain_below is not None and rec.confidence < abstain_below:
                rec = replace(rec, abstained=True)
            out.append(rec)
        return out


# -- the results file (owner of recognise's CSV / JSON output) ----------------------------------------

def result_rows(results: list[Recognition], classes) -> tuple[list[str], list[list]]:

    header = ["name", "label", "confidence", "abstained", "top3", "router_top2", "absent_experts", "failure",
              "source"] + [f"prob_{c}" for c in classes]
    rows = []
    for r in results:
        router = sorted(r.router.items(), key=lambda kv: -kv[1])[:2]
        rows.append([r.clip, r.label or "", "" if r.label is None else f"{r.confidence:.6f}", int(r.abstained),
                     ";".join(f"{c}:{p:.3f}" for c, p in r.top3), ";".join(f"{e}:{w:.3f}" for e, w in router),
                     ";".join(r.absent), r.failure or "", r.source or ""]
                    + [f"{r.probabilities[c]:.6f}" if r.probabilities else "" for c in classes])
    return header, rows


def write_results(out, results: list[Recognition], classes, bundle_root, as_json: bool = False,
                  force: bool = False) -> Path:
    """The results as CSV (or JSON with every field), with a provenance sidecar ``<out>.meta.json``."""
    import csv
    import json
    import time

    from extract.cache import atomic_open
    from extract.outputs import WRITTEN_BY, check_output

    out = Path(out)
    side = Path(f"{out}.meta.json")
    check_output(out, "recognise", [side], force)
    with atomic_open(out, newline="") as fh:
        if as_json:
            json.dump([r.as_dict() for r in results], fh, indent=1, ensure_ascii=False)
        else:
            header, rows = result_rows(results, classes)
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
    with atomic_open(side) as fh:
        json.dump({WRITTEN_BY: "recognise", "bundle": str(bundle_root), "clips": len(results),
                   "failed": sum(r.label is None for r in results), "abstained": sum(r.abstained for r in results),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, fh, indent=1)
    return out
