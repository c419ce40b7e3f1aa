"""A small SYNTHETIC emotion data set for the demo and the end-to-end test (no download).

Nothing here is real emotional data. Each clip is 2 s of:
  * voice: a harmonic tone whose pitch, loudness, vibrato and rate depend on the class, shifted per
    "speaker" (so speaker normalisation matters, as on real speech);
  * face: a real photo (scikit-image's astronaut, public domain, NASA) whose mouth, eyes and brows
    are warped in a class-dependent way (in 65% of clips; the rest show the plain face), with
    per-clip jitter, so the MediaPipe blendshapes move;
  * transcript: a class-typical English sentence, or (35%) one of a random class.
It also writes a simulated annotator (a noisy judge, right about 70% of the time) standing in for
VLM/Gemini answers, and the true labels of the unlabeled clips for the final evaluation only.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .synth import tone, write_media

CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")

# pitch (Hz), loudness, vibrato depth, tremolo rate (Hz)
VOICE = {"neutral": (140, 0.25, 0.00, 0.0), "angry": (210, 0.55, 0.03, 7.0), "happy": (250, 0.40, 0.06, 4.0),
         "sad": (110, 0.15, 0.01, 1.5), "worried": (175, 0.22, 0.04, 9.0), "surprise": (290, 0.45, 0.08, 2.0)}

SENTENCES = {
    "neutral": ["I went to the office and then came home.", "The meeting is at three today.",
                "We took the bus to the station."],
    "angry": ["This is unacceptable, I am furious!", "Stop it right now, I hate this!",
              "How dare you do that to me!"],
    "happy": ["I am so happy, this is wonderful!", "What a great day, I love it!", "We won, this is fantastic!"],
    "sad": ["I miss her so much, everything feels empty.", "I lost it and I feel terrible.",
            "Nobody came, I am so lonely."],
    "worried": ["What if something goes wrong tomorrow?", "I am nervous about the results.",
                "I hope he is safe, I cannot stop thinking about it."],
    "surprise": ["Wow, I did not expect that at all!", "Really? That is unbelievable!",
                 "Oh my god, you are here!"],
}


def _base_face(size: int = 256) -> np.ndarray:
    from PIL import Image
    from skimage import data

    img = data.astronaut()[40:312, 110:382]
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))


def _stretch(a: np.ndarray, y0: int, y1: int, factor: float) -> np.ndarray:
    """Stretch (factor > 1) or squeeze rows y0:y1 vertically around their centre."""
    from PIL import Image

    h = y1 - y0
    new_h = max(int(round(h * factor)), 2)
    region = np.asarray(Image.fromarray(a[y0:y1]).resize((a.shape[1], new_h), Image.BICUBIC))
    out = a.copy()
    top = (y0 + y1) // 2 - new_h // 2
    t0, t1 = max(top, 0), min(top + new_h, a.shape[0])
    out[t0:t1] = region[t0 - top:t1 - top]
    return out


def _open_mouth(a: np.ndarray, strength: float) -> np.ndarray:
    out = a.copy()
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
    m = ((yy - 108) / (9.0 * strength)) ** 2 + ((xx - 106) / 16.0) ** 2 < 1
    out[m] = (out[m] * 0.15).astype(np.uint8)
    return out


def face_for(cls: str, rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    j = lambda s=0.08: 1 + rng.normal(0, s)  # noqa: E731 - per-clip jitter of a warp
    warps = {
        "neutral": lambda a: a,
        "angry": lambda a: _stretch(_stretch(a, 30, 70, 0.75 * j()), 55, 78, 0.7 * j()),
        "happy": lambda a: _stretch(a, 92, 125, 1.4 * j()),
        "sad": lambda a: _stretch(a, 95, 120, 0.6 * j()),
        "worried": lambda a: _stretch(a, 30, 70, 1.3 * j()),
        "surprise": lambda a: _open_mouth(_stretch(a, 30, 70, 1.25 * j()), 1.1 * j()),
    }
    face = warps[cls if rng.random() < 0.65 else "neutral"](base)  # faces do not always show it
    shift = rng.integers(-6, 7, size=2)
    face = np.roll(face, tuple(shift), axis=(0, 1))
    gain = rng.uniform(0.85, 1.15)
    return np.clip(face.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def voice_for(cls: str, rng: np.random.Generator, speaker_shift: float, seconds: float, rate: int) -> np.ndarray:
    f0, amp, vib, trem = VOICE[cls]
    x = tone(seconds, rate, freq=f0 * speaker_shift * (1 + rng.normal(0, 0.08)), seed=int(rng.integers(1 << 30)),
             amp=amp * rng.uniform(0.6, 1.4), vibrato=vib * rng.uniform(0.3, 1.5), noise=0.05)[0]
    if trem:
        t = np.arange(len(x)) / rate
        x = x * (0.75 + 0.25 * np.sin(2 * np.pi * trem * t))
    return x[None].astype(np.float32)


def make_demo_set(out: str | Path, labeled_per_class: int = 12, unlabeled_per_class: int = 6, speakers: int = 6,
                  seconds: float = 2.0, fps: int = 10, seed: int = 0, classes=CLASSES) -> dict[str, Path]:
    """Write videos/, labels.csv (name,discrete,speaker), transcripts.csv, annotator.jsonl,
    truth_unlabeled.csv and speakers.csv under ``out``. Returns their paths."""
    out = Path(out)
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = _base_face()
    shifts = {f"spk{s}": float(v) for s, v in enumerate(rng.uniform(0.8, 1.25, size=speakers))}
    rows = []
    n = 0
    for role, per_class in (("labeled", labeled_per_class), ("unlabeled", unlabeled_per_class)):
        for cls in classes:
            for _ in range(per_class):
                rows.append({"name": f"clip{n:04d}", "discrete": cls, "role": role,
                             "speaker": f"spk{int(rng.integers(speakers))}"})
                n += 1
    texts, answers = [], []
    for row in rows:
        cls = row["discrete"]
        frame = face_for(cls, rng, base)
        frames = np.stack([np.roll(frame, int(rng.integers(-2, 3)), axis=1) for _ in range(int(seconds * fps))])
        audio = voice_for(cls, rng, shifts[row["speaker"]], seconds, 16000)
        write_media(videos / f"{row['name']}.mp4", frames, fps=fps, audio=audio, rate=16000)
        sentence_cls = cls if rng.random() > 0.35 else str(rng.choice(classes))
        texts.append({"name": row["name"], "text": str(rng.choice(SENTENCES[sentence_cls]))})
        answers.append(_annotator_answer(cls, classes, rng))
    _write_csv(out / "labels.csv", ["name", "discrete", "speaker"], [r for r in rows if r["role"] == "labeled"])
    _write_csv(out / "truth_unlabeled.csv", ["name", "discrete", "speaker"], [r for r in rows if r["role"] == "unlabeled"])
    _write_csv(out / "speakers.csv", ["name", "speaker"], rows)
    _write_csv(out / "transcripts.csv", ["name", "text"], texts)
    with open(out / "annotator.jsonl", "w", encoding="utf-8") as fh:
        for row, ans in zip(rows, answers):
            fh.write(json.dumps({"name": row["name"], **ans, "source": "simulated judge (synthetic demo)"}) + "\n")
    (out / "README.txt").write_text(
        "SYNTHETIC demo data made by moe-emotion (extract/demo_data.py): tones, a warped public-domain photo\n"
        "and template sentences. Not real emotional data; figures on it only show that the chain works.\n",
        encoding="utf-8")
    return {"videos": videos, "labels": out / "labels.csv", "transcripts": out / "transcripts.csv",
            "annotator": out / "annotator.jsonl", "truth": out / "truth_unlabeled.csv",
            "speakers": out / "speakers.csv"}


def _annotator_answer(cls: str, classes, rng: np.random.Generator) -> dict:
    """A noisy judge: right ~70% of the time, with a confidence that is higher when right."""
    right = rng.random() < 0.7
    label = cls if right else str(rng.choice([c for c in classes if c != cls]))
    logits = rng.normal(0, 0.5, size=len(classes))
    logits[list(classes).index(label)] += 2.5 if right else 1.5
    p = np.exp(logits) / np.exp(logits).sum()
    return {"label": label, "scores": {c: round(float(v), 4) for c, v in zip(classes, p)}}


def _write_csv(path: Path, fields, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
