"""Audio extractors run in bounded memory (issue 12 item 4).

The decoder keeps at most media.AUDIO_MEMORY_SECONDS of audio in memory (a longer clip's audio goes
to an unlinked temporary file, read back piece by piece); librosa computes its frame features per
chunk and pools them with running statistics; egemaps feeds openSMILE block by block; hf-audio reads
one chunk at a time. Values stay those of the whole-signal computation (the same for short clips,
within float rounding for long ones), and a subprocess's peak RSS shows the memory no longer grows
with the length of the audio. Media is made here with PyAV.
"""
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from extract import media
from extract.media import Clip, decode
from tiny_models import save_tiny_hubert
from extract.registry import build, load_all
from extract.synth import tone, write_media

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
load_all()


def speechlike(seconds: float, rate: int = RATE, seed: int = 0, start: int = 0) -> np.ndarray:
    """(n,) float32: a gliding harmonic tone in bursts with pauses, plus a little noise: voiced and
    unvoiced frames, loud and quiet ones (so voicing, pitch and the dB floor all matter)."""
    rng = np.random.default_rng(seed + start)
    t = (start + np.arange(int(round(seconds * rate)))) / rate
    f = 150 + 40 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f) / rate + 2 * np.pi * 150 * start / rate
    x = 0.3 * (np.sin(phase) + 0.3 * np.sin(2 * phase)) * (np.sin(2 * np.pi * 0.25 * t) > -0.3)
    return (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_long_wav(path: Path, seconds: float, rate: int = RATE, block_seconds: float = 10.0) -> Path:
    """A long 16-bit WAV written block by block (the generator itself stays small)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        n, block = int(seconds * rate), int(block_seconds * rate)
        for start in range(0, n, block):
            x = speechlike(min(block, n - start) / rate, rate, start=start)
            frame = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16).reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


# -- the decoder: long audio in a temporary file, read back piece by piece ------------------------
def test_long_audio_is_kept_out_of_memory_with_the_same_values(media_dir, monkeypatch):
    path = write_media(media_dir / "a.wav", audio=speechlike(3.0)[None], rate=RATE)
    in_memory = decode(path, "a", ("audio",))
    assert type(in_memory.audio) is np.ndarray and in_memory.audio_file is None
    monkeypatch.setattr(media, "AUDIO_MEMORY_SECONDS", 1.0)
    spilled = decode(path, "a", ("audio",))
    assert isinstance(spilled.audio, np.memmap) and spilled.audio_file is not None
    assert spilled.audio.dtype == np.float32 and spilled.audio_samples == in_memory.audio_samples
    np.testing.assert_array_equal(np.asarray(spilled.audio), in_memory.audio)
    np.testing.assert_array_equal(spilled.read_audio(1000, 30000), in_memory.audio[1000:30000])
    np.testing.assert_array_equal(np.concatenate(list(spilled.audio_chunks(7000))), in_memory.audio)
    assert [len(c) for c in spilled.audio_chunks(20000)] == [20000, 20000, 8000]
    assert os.fstat(spilled.audio_file.fileno()).st_nlink == 0  # unlinked: nothing is left on disk


@pytest.mark.parametrize("pad", ["constant", "edge"])
def test_read_audio_pads_as_numpy_pads_the_whole_signal(pad, monkeypatch, media_dir):
    path = write_media(media_dir / "a.wav", audio=speechlike(2.0)[None], rate=RATE)
    monkeypatch.setattr(media, "AUDIO_MEMORY_SECONDS", 0.5)
    for clip in (decode(path, "a", ("audio",)), Clip("m", "m.wav", audio=speechlike(2.0))):
        y = np.asarray(clip.audio)
        padded = np.pad(y, 300, mode=pad)
        for start, stop in ((-300, 200), (-10, -2), (100, 400), (len(y) - 50, len(y) + 300), (-300, len(y) + 300),
                            (len(y) + 5, len(y) + 9)):
            np.testing.assert_array_equal(clip.read_audio(start, stop, pad=pad), padded[start + 300:stop + 300])
        np.testing.assert_array_equal(clip.read_audio(-10, 5), y[:5])  # no pad: cut to the signal


def test_spilled_audio_keeps_notes_and_too_short_audio_stays_missing(media_dir, monkeypatch):
    monkeypatch.setattr(media, "AUDIO_MEMORY_SECONDS", 0.2)
    write_media(media_dir / "silent.wav", audio=np.zeros((1, RATE), np.float32), rate=RATE)
    clip = decode(media_dir / "silent.wav", "silent", ("audio",))
    assert clip.audio_file is not None and any("silent audio" in n for n in clip.notes["audio"])
    write_media(media_dir / "short.wav", audio=tone(0.05, RATE), rate=RATE)
    short = decode(media_dir / "short.wav", "short", ("audio",))
    assert short.audio is None and "too short" in short.missing["audio"]


def spilled_clip(tmp_path, monkeypatch, seconds: float, name: str = "long") -> Clip:
    """A decoded clip whose audio lives in the decoder's temporary file (AUDIO_MEMORY_SECONDS lowered)."""
    path = write_long_wav(tmp_path / f"{name}.wav", seconds)
    monkeypatch.setattr(media, "AUDIO_MEMORY_SECONDS", 1.0)
    clip = decode(path, name, ("audio",))
    assert clip.audio_file is not None
    return clip


# -- librosa: chunked statistics equal the whole-signal ones -------------------------------------
def relative_gap(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b) / np.maximum(np.abs(a), 1e-3)))


@pytest.mark.parametrize("seconds", [17.0, 17.013])  # a whole number of hops, and not
def test_librosa_chunked_equals_the_whole_signal_within_float_rounding(tmp_path, monkeypatch, seconds):
    from extract.extractors import audio_stats

    clip = spilled_clip(tmp_path, monkeypatch, seconds)
    ex = build("librosa").ensure_loaded()
    whole = ex._extract_whole(Clip("w", "w.wav", audio=np.asarray(clip.audio).copy())).data
    monkeypatch.setattr(audio_stats, "CHUNK_SECONDS", 4.0)  # five chunks (of 3.4 s)
    chunked = ex.extract(clip).data
    assert chunked.shape == whole.shape == (len(ex.channels()),)
    assert relative_gap(whole, chunked) < 1e-5  # measured: about 2e-7


def test_librosa_short_clips_take_the_one_piece_path_unchanged(monkeypatch):
    from extract.extractors import audio_stats

    ex = build("librosa").ensure_loaded()
    clip = Clip("s", "s.wav", audio=speechlike(3.0))
    monkeypatch.setattr(ex, "_extract_chunked", lambda clip: pytest.fail("a short clip was chunked"))
    assert clip.audio_samples <= audio_stats.CHUNK_SECONDS * RATE
    np.testing.assert_array_equal(ex.extract(clip).data, ex._extract_whole(clip).data)


def test_librosa_pyin_chunked_stays_close_to_the_whole_signal(monkeypatch):
    from extract.extractors import audio_stats

    ex = build("librosa:pitch=pyin").ensure_loaded()
    clip = Clip("p", "p.wav", audio=speechlike(7.0))
    whole = ex._extract_whole(clip).data
    monkeypatch.setattr(audio_stats, "CHUNK_SECONDS", 2.0)
    monkeypatch.setattr(audio_stats, "PYIN_CONTEXT_SECONDS", 1.0)
    chunked = ex.extract(clip).data
    names = ex.channels()
    pitch = [i for i, n in enumerate(names) if n.startswith(("f0_", "voiced_"))]
    assert abs(whole[names.index("voiced_fraction")] - chunked[names.index("voiced_fraction")]) < 0.01
    assert relative_gap(whole[pitch], chunked[pitch]) < 0.02
    others = [i for i in range(len(names)) if i not in pitch]
    assert relative_gap(whole[others], chunked[others]) < 1e-5


def test_running_statistics_match_numpy_with_nan_rows():
    from extract.extractors.audio_stats import _pool, _RunningStats

    rng = np.random.default_rng(0)
    x = rng.normal(1000, 3, size=(3, 1000))
    x[1, rng.random(1000) < 0.3] = np.nan
    x[2] = np.nan  # no value at all: 0, as _pool gives
    stats = _RunningStats()
    for a, b in ((0, 1), (1, 400), (400, 401), (401, 1000)):
        stats.add(x[:, a:b])
    np.testing.assert_allclose(np.concatenate(stats.result()), _pool(x), rtol=1e-12)


# -- egemaps: openSMILE fed block by block gives exactly process_signal's values -----------------
def test_egemaps_streamed_equals_process_signal_exactly(tmp_path, monkeypatch):
    from extract.extractors import egemaps

    ex = build("egemaps").ensure_loaded()
    clip = spilled_clip(tmp_path, monkeypatch, 4.0)
    reference = ex.smile.process_signal(np.asarray(clip.audio), RATE).to_numpy()[0].astype(np.float32)
    np.testing.assert_array_equal(ex.extract(clip).data, reference)
    # blocks smaller than openSMILE's reads and a ring buffer that fills up: still the same values
    monkeypatch.setattr(egemaps, "BLOCK_SECONDS", 0.05)
    monkeypatch.setattr(egemaps, "RING_SECONDS", 0.2)
    np.testing.assert_array_equal(ex.extract(clip).data, reference)
    in_memory = Clip("m", "m.wav", audio=np.asarray(clip.audio).copy())
    np.testing.assert_array_equal(ex.extract(in_memory).data, reference)
    ex.close()
    np.testing.assert_array_equal(ex.extract(in_memory).data, reference)  # used again after close()


def test_egemaps_long_audio_is_the_length_weighted_mean_of_its_windows(monkeypatch):
    from extract.extractors import egemaps

    ex = build("egemaps").ensure_loaded()
    y = speechlike(5.0)
    monkeypatch.setattr(egemaps, "WINDOW_SECONDS", 2.0)  # three windows of 1.67 s
    got = ex.extract(Clip("w", "w.wav", audio=y)).data
    bounds = egemaps.split_even(len(y), 2 * RATE)
    assert len(bounds) == 3
    parts = [ex.smile.process_signal(y[a:b], RATE).to_numpy()[0].astype(np.float64) for a, b in bounds]
    want = sum((b - a) * p for (a, b), p in zip(bounds, parts)) / len(y)
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6)


# -- hf-audio: chunks read one at a time, same values --------------------------------------------
def test_hf_audio_reads_chunks_from_a_spilled_clip_with_the_same_values(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    d = save_tiny_hubert(tmp_path / "hubert")
    ex = build(f"hf-audio:model={d},chunk_seconds=1").ensure_loaded()
    clip = spilled_clip(tmp_path, monkeypatch, 3.5)
    seen = []
    real = ex.encode_chunk
    monkeypatch.setattr(ex, "encode_chunk", lambda chunk: seen.append(type(chunk)) or real(chunk))
    got = ex.extract(clip).data
    assert seen == [np.ndarray] * 4  # plain arrays read from the file, never the memory map
    want = ex.extract(Clip("m", "m.wav", audio=np.asarray(clip.audio).copy())).data
    np.testing.assert_array_equal(got, want)


# -- peak RSS: a long file costs (almost) what a short one does ----------------------------------
RUN = """
import json, sys
sys.path.insert(0, sys.argv[4])
from extract import extract
summary = extract(sys.argv[1], sys.argv[2], features=sys.argv[3], jobs=1, device="cpu", progress=False)
print(json.dumps({"done": dict(summary.done), "failed": summary.failures}))
"""
MEASURE = """
import resource, subprocess, sys
out = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True).stdout
print(out.strip().splitlines()[-1] + "\\t" + str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
"""


def peak_rss_of_extract(folder: Path, cache: Path, features: str) -> tuple[dict, float]:
    """(what the run did, peak RSS in MiB) of `extract.extract` in a fresh process of its own (the
    intermediate process waits for that one child only, so RUSAGE_CHILDREN is its figure)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    line = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-c", RUN, str(folder), str(cache), features,
                           str(ROOT)], check=True, capture_output=True, text=True, env=env).stdout.strip()
    report, rss = line.rsplit("\t", 1)
    return json.loads(report), int(rss) / 1024


def test_peak_rss_of_a_10_minute_file_is_within_1_5x_of_a_2_second_one(tmp_path):
    short, long = tmp_path / "short", tmp_path / "long"
    short.mkdir(), long.mkdir()
    write_long_wav(short / "a.wav", 2.0)
    write_long_wav(long / "a.wav", 600.0)
    runs = {}
    for name, folder in (("2 s", short), ("10 min", long)):
        report, rss = peak_rss_of_extract(folder, tmp_path / f"cache-{name[:2].strip()}", "librosa,egemaps")
        assert not report["failed"] and sorted(report["done"].values()) == [1, 1], report
        runs[name] = rss
    # before: about 93 MB per minute for librosa alone (10 min: 1.2 GB against 0.37 GB)
    assert runs["10 min"] <= 1.5 * runs["2 s"], runs


def test_egemaps_loads_without_scanning_every_installed_package():
    """audobject's class naming scanned every installed distribution (0.4 s in each process)."""
    import subprocess
    import sys

    code = ("import importlib.metadata as m; calls = []; orig = m.packages_distributions\n"
            "m.packages_distributions = lambda: (calls.append(1), orig())[1]\n"
            "from extract import registry; registry.load_all(); ex = registry.build('egemaps').ensure_loaded()\n"
            "print(len(calls), len(ex.channels()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["0", "88"]


def test_egemaps_leaves_nothing_in_the_temp_folder_of_a_killed_process(tmp_path):
    """A worker killed after extracting (no finaliser runs) left a moe-egemaps-* folder each time."""
    code = ("import os, numpy as np\n"
            "from extract import registry; from extract.media import Clip\n"
            "registry.load_all(); ex = registry.build('egemaps').ensure_loaded()\n"
            "y = (0.1 * np.sin(np.arange(16000) / 5.0)).astype(np.float32)\n"
            "print(len(ex.extract(Clip('k', 'k.wav', audio=y)).data), flush=True); os._exit(9)")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TMPDIR": str(scratch)})
    assert out.stdout.split() == ["88"], out.stderr[-2000:]
    assert sorted(p.name for p in scratch.iterdir()) == []
