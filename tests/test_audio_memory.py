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
import resource
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from extract import media
from extract.media import Clip, DecodeConfig, decode
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
