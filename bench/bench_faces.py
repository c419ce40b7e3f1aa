"""Faces / AU benchmark (issue 5). Prints figures; not a test.

    python bench/bench_faces.py [--data ../shared/data] [--fps 25] [--clips N] [--image-model PATH]
                                [--pyfeat-random-fullsize] [--skip-speed] [--skip-fit]

For each of ``emo-av`` and ``mead-samples`` under --data (skipped when absent):
 (a) the fraction of decoded frames where MediaPipe finds a face, and of clips with none;
 (b) AU extraction speed (`face-au`, MediaPipe backend): frames per second of extractor compute,
     decode time apart; the py-feat backend too when $MOE_PYFEAT_WEIGHTS names its weights, or, with
     --pyfeat-random-fullsize, on py-feat's full-size architectures with random weights (speed only);
 (c) emo-av only: weighted F1 of the AU features alone on the role split (train on the labeled-role
     speakers, test on the unlabeled-role ones, and the reverse; no speaker and no face shared):
     - pooled blendshape statistics + StandardScaler + LogisticRegression (the reference figure of
       ARCHITECTURE.md, 0.712, was measured this way);
     - the AU expert, the face-cnn expert (vendored FER2013 mini-Xception on face crops: the offline
       image encoder) and, with --image-model PATH, an hf-image expert on face crops, each alone
       through `models.fit` (`cli.py fit`'s library) with folds grouped by the face's person
       (out-of-fold weighted F1), on features from `extract.extract`.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def run_au(folder: Path, spec: str, fps: float, limit: int | None):
    """Decode every clip once, run one face-au extractor; -> per-clip features and timings."""
    from extract import media
    from extract.registry import ExtractionError, build, load_all

    load_all()

    cfg = media.DecodeConfig(fps=fps, max_frames=64)
    ex = build(spec, decode=cfg).ensure_loaded()
    files, _ = media.discover(folder)
    ids = sorted(files)[:limit]
    feats, failures = {}, {}
    decode_s = extract_s = 0.0
    frames = 0
    try:
        for cid in ids:
            t0 = time.perf_counter()
            try:
                clip = media.decode(files[cid], cid, ("frames",), cfg)
            except media.DecodeError as exc:
                failures[cid] = f"decode: {exc}"
                continue
            t1 = time.perf_counter()
            decode_s += t1 - t0
            if clip.frames is None:
                failures[cid] = clip.missing.get("frames", "no frames")
                continue
            frames += len(clip.frames)
            try:
                feats[cid] = ex.extract(clip)
            except ExtractionError as exc:
                failures[cid] = str(exc)
                feats[cid] = None
            extract_s += time.perf_counter() - t1
    finally:
        ex.close()
    return ids, feats, failures, frames, decode_s, extract_s


def fullsize_pyfeat_weights(folder: Path) -> Path:
    """py-feat's released architectures (Detectorv2 multitask on a ConvNeXt-V2 tiny backbone with the
    v2.4/v2.5 heads, RetinaFace ResNet-34) at full size with RANDOM weights, in py-feat's own file
    formats. A network's speed does not depend on its weight values, so this measures the py-feat
    backend's frames/s honestly where its trained weights cannot be downloaded; its outputs are
    meaningless and no accuracy is computed from them."""
    import json
    from dataclasses import asdict

    import torch
    from feat.face_detectors.Retinaface.Retinaface_test import Retinaface
    from feat.multitask.model_v2 import MEGraphAUv2, ModelV2Config
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = ModelV2Config(pretrained=False, n_au=20, n_emotion=7, drop_mefl=True, use_head_v3=True,
                        n_blendshape=52, mesh_normalized=True)
    model = MEGraphAUv2(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "face_multitask_v28.safetensors"), metadata={"config": json.dumps(asdict(cfg))})
    with torch.enable_grad():  # py-feat's RetinaFace turns autograd off process-wide
        net = Retinaface(device="cpu", pretrained="none").net
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "retinaface_r34.safetensors"))
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"py-feat speed run: full-size random-weight networks ({cfg.backbone}, {n_params:.1f} M parameters "
          f"+ RetinaFace R34) written to {folder}: frames/s only, no accuracy")
    return folder


def face_figures(name: str, folder: Path, fps: float, limit: int | None):
    ids, feats, failures, frames, dec, ext = run_au(folder, "face-au", fps, limit)
    with_face = sum(int(f.mask.sum()) for f in feats.values() if f is not None)
    no_face_clips = [c for c, f in feats.items() if f is None]
    print(f"\n== {name}: {len(ids)} clips, {frames} frames decoded at {fps:g} fps ==")
    print(f"(a) frames with a detected face: {with_face}/{frames} = {with_face / max(frames, 1):.3f}; "
          f"clips without any face: {len(no_face_clips)}")
    for cid, why in list(failures.items())[:5]:
        print(f"      {cid}: {why}")
    print(f"(b) face-au (mediapipe): {frames / max(ext, 1e-9):.1f} frames/s of extractor compute "
          f"({ext:.1f} s); decode {dec:.1f} s ({frames / max(dec, 1e-9):.1f} frames/s)")
    if os.environ.get("MOE_PYFEAT_WEIGHTS"):
        sub = ids[: min(len(ids), 20)]
        for spec, what in (("face-au:backend=pyfeat", "RetinaFace boxes + AU model"),
                           ("face-au:backend=pyfeat,detector=mediapipe", "MediaPipe boxes + AU model")):
            _, pf, pfail, pframes, _, pext = run_au(folder, spec, fps, len(sub))
            faced = sum(int(f.mask.sum()) for f in pf.values() if f is not None)
            print(f"    face-au (pyfeat: {what}; first {len(sub)} clips): {pframes / max(pext, 1e-9):.1f} frames/s "
                  f"({faced} of {pframes} frames with a face)")
    else:
        print("    face-au (pyfeat): skipped: py-feat's weights are downloaded from the Hugging Face hub, which this "
              "machine cannot reach; set MOE_PYFEAT_WEIGHTS to a folder with face_multitask_v28.safetensors and "
              "retinaface_r34.safetensors to measure it")
    return feats


def role_split_f1(feats: dict, data: Path) -> None:
    """Pooled blendshape statistics (mean, std, max) + scaler + logistic regression, role split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = {r["name"]: r["discrete"] for r in read_csv(data / "labels.csv")}
    roles = {r["name"]: r["role"] for r in read_csv(data / "split.csv")}
    names = [n for n in sorted(feats) if n in labels]
    d = 52
    X = np.zeros((len(names), 3 * d), np.float32)
    ok = np.zeros(len(names), bool)
    for i, n in enumerate(names):
        f = feats[n]
        if f is not None:
            p = f.pooled  # mean, std, min, max, delta
            X[i] = np.concatenate([p[:d], p[d:2 * d], p[3 * d:4 * d]])
            ok[i] = True
    y = np.array([labels[n] for n in names])
    role = np.array([roles.get(n, "") for n in names])
    scores = []
    for train, test in (("labeled", "unlabeled"), ("unlabeled", "labeled")):
        tr = (role == train) & ok
        te = role == test
        if not tr.any() or not te.any():
            print(f"    train {train} -> test {test}: skipped (no clips of a role among those read; drop --clips)")
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(X[tr], y[tr])
        pred = model.predict(X[te])
        pred[~ok[te]] = model.classes_[0]  # a clip without a face still counts (as a wrong-ish guess)
        scores.append(f1_score(y[te], pred, average="weighted"))
        print(f"    train {train:9s} -> test {test:9s}: weighted F1 {scores[-1]:.3f} ({te.sum()} clips)")
    if scores:
        print(f"(c) pooled blendshapes + LogisticRegression, role split: mean weighted F1 {np.mean(scores):.3f} "
              "(ARCHITECTURE.md reference 0.712)")


def _routed_f1(run_dir: Path, which: str, truth: dict) -> float:
    """Weighted F1 of a RUN_DIR's routed probabilities (oof/ or test/) against the true labels."""
    from sklearn.metrics import f1_score

    from models import open_run

    run = open_run(run_dir)
    ids, probs = run.probs(which, run.routed_member())
    pred = [run.classes[i] for i in probs.argmax(axis=1)]
    return f1_score([truth[i] for i in ids], pred, average="weighted")


def fit_figures(data: Path, fps: float, image_model: str | None) -> None:
    import torch

    from extract import extract
    from extract.errors import UserError
    from models import fit

    logging.getLogger("moe.models").setLevel(logging.ERROR)  # as before: the table only (warnings in .notes)
    # emo-av pairs EmoDB voices with CK+ faces of other people: for a face expert the person to keep
    # out of training is the face subject (a CK+ sequence recurs in up to 4 clips, across speakers)
    rows = read_csv(data / "labels.csv")
    group = "face_subject" if "face_subject" in rows[0] else "speaker"
    role = {r["name"]: r["role"] for r in read_csv(data / "split.csv")}
    truth = {r["name"]: r["discrete"] for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        labeled = Path(tmp) / "labeled_role.csv"
        with open(labeled, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["name", "discrete", group])
            w.writerows([r["name"], r["discrete"], r[group]] for r in rows if role.get(r["name"]) == "labeled")
        feats = ["face-au", "face-cnn"] + ([f"hf-image:model={image_model},crop=face"] if image_model else [])
        extract(data, cache, features=tuple(feats), fps=fps, progress=False)
        print(f"(c) each face expert alone through `fit(groups={group!r}, folds=5)` ({fps:g} fps), routed "
              "output, weighted F1:")
        print(f"| expert | OOF, all 287 clips, grouped by {group} | trained on the labeled role, scored on the "
              "unlabeled role (other voices, other faces) |")
        print("|---|---|---|")
        threads = torch.get_num_threads()  # fit(threads=1) sets it process-wide: restored for the speed parts
        try:
            for feature in [f.split(":")[0] for f in feats]:
                cells = []
                for name, labels_csv in (("all", data / "labels.csv"), ("role", labeled)):
                    out = Path(tmp) / f"run-{feature}-{name}"
                    try:
                        fit(cache, labels_csv, feature, out, groups=group, folds=5, threads=1, progress=False)
                    except UserError as exc:
                        cells.append(f"failed: {str(exc).strip().splitlines()[-1:]}")
                        continue
                    cells.append(f"{_routed_f1(out, 'oof' if name == 'all' else 'test', truth):.3f}")
                print(f"| {feature} | " + " | ".join(cells) + " |")
        finally:
            torch.set_num_threads(threads)
    if not image_model:
        print("    hf-image expert: skipped: no transformers image-encoder weights on this machine (no model hub); "
              "pass --image-model PATH (a CLIP or DINOv2 folder saved with save_pretrained). face-cnn above is "
              "the offline image encoder (vendored FER2013 mini-Xception).")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--fps", type=float, default=25.0, help="frames per second decoded (emo-av: 25 = all 50)")
    ap.add_argument("--clips", type=int, default=None, help="at most this many clips per data set")
    ap.add_argument("--image-model", default=None)
    ap.add_argument("--fit-fps", type=float, default=5.0, help="frames per second for the experts of (c)")
    ap.add_argument("--skip-speed", action="store_true", help="only (c) through `models.fit`")
    ap.add_argument("--pyfeat-random-fullsize", action="store_true",
                    help="measure the py-feat backend's speed on full-size random-weight networks (no hub here)")
    ap.add_argument("--skip-fit", action="store_true", help="only (a) and (b)")
    args = ap.parse_args()
    data = Path(args.data)
    tmp = tempfile.TemporaryDirectory()
    if args.pyfeat_random_fullsize:
        os.environ["MOE_PYFEAT_WEIGHTS"] = str(fullsize_pyfeat_weights(Path(tmp.name) / "pyfeat"))
    ran = False
    for name, fps in (("emo-av", args.fps), ("mead-samples", min(args.fps, 5.0))):
        folder = data / name
        if not folder.is_dir():
            print(f"{name}: skipped ({folder} is absent)")
            continue
        ran = True
        if not args.skip_speed:
            feats = face_figures(name, folder, fps, args.clips)
            if name == "emo-av" and (folder / "split.csv").is_file():
                role_split_f1(feats, folder)
        if name == "emo-av" and not args.skip_fit:
            fit_figures(folder, args.fit_fps, args.image_model)
    if not ran:
        print(f"no data under {data}: nothing measured")


if __name__ == "__main__":
    main()
