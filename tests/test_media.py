import numpy as np
import pytest

from extract.media import DecodeConfig, DecodeError, decode, discover, frame_targets
from extract.synth import make_clip, write_media, frames_pattern, tone


@pytest.mark.parametrize("ext,rate,channels", [(".mp4", 44100, 2), (".mkv", 48000, 1), (".webm", 48000, 2),
                                               (".avi", 22050, 1), (".mov", 8000, 1), (".flv", 44100, 1)])
def test_video_containers_decode_to_16k_mono_and_rgb_frames(media_dir, ext, rate, channels):
    path = make_clip(media_dir / f"clip{ext}", seconds=2.0, rate=rate, channels=channels)
    clip = decode(path, "clip", ("audio", "frames"), DecodeConfig(fps=5, max_frames=64))
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert abs(len(clip.audio) / 16000 - 2.0) < 0.12
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] == (96, 128, 3)
    assert len(clip.frames) == len(clip.frame_times) == 10
    assert np.all(np.diff(clip.frame_times) > 0.15)


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".m4a"])
def test_audio_only_files_have_audio_and_say_no_video(media_dir, ext):
    path = make_clip(media_dir / f"a{ext}", seconds=1.0, rate=44100, video=False)
    clip = decode(path, "a", ("audio", "frames"))
    assert abs(len(clip.audio) - 16000) < 1200
    assert clip.frames is None and clip.missing["frames"] == "no video stream"


def test_resampled_tone_keeps_its_pitch(media_dir):
    write_media(media_dir / "t.wav", audio=tone(1.0, 44100, freq=440, noise=0), rate=44100)
    clip = decode(media_dir / "t.wav", "t", ("audio",))
    spec = np.abs(np.fft.rfft(clip.audio))
    assert abs(np.argmax(spec) * 16000 / len(clip.audio) - 440) < 3


def test_long_clip_frames_are_capped_and_spread(media_dir):
    path = make_clip(media_dir / "long.mp4", seconds=12.0, fps=10, size=(32, 32), audio=True)
    clip = decode(path, "long", ("audio", "frames"), DecodeConfig(fps=5, max_frames=8))
    assert len(clip.frames) == 8
    assert clip.frame_times[0] < 1.5 and clip.frame_times[-1] > 10.0  # spread over the whole clip
    assert abs(len(clip.audio) / 16000 - 12.0) < 0.15  # audio is never cut


def test_frame_targets():
    assert list(frame_targets(1.0, 4, 10)) == [0, 0.25, 0.5, 0.75]
    assert len(frame_targets(100.0, 4, 10)) == 10
    assert frame_targets(None, 4, 10) is None


def test_max_side_downscales(media_dir):
    write_media(media_dir / "big.mp4", frames_pattern(5, (360, 640)), fps=5)
    clip = decode(media_dir / "big.mp4", "big", ("frames",), DecodeConfig(max_side=320))
    assert clip.frames.shape[1:3] == (180, 320)


def test_bad_files_raise_decode_error_with_cause(media_dir):
    (media_dir / "empty.mp4").write_bytes(b"")
    (media_dir / "text.mp4").write_text("this is not a video\n" * 50)
    with pytest.raises(DecodeError, match="empty file"):
        decode(media_dir / "empty.mp4", "empty", ("audio",))
    with pytest.raises(DecodeError, match="not a readable media file|no audio or video"):
        decode(media_dir / "text.mp4", "text", ("audio",))


def test_truncated_file_is_an_error_or_partial_never_a_crash(media_dir):
    path = make_clip(media_dir / "c.mp4", seconds=2.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    try:
        clip = decode(path, "c", ("audio", "frames"))
    except DecodeError as exc:
        assert str(exc)
    else:
        assert clip.audio is not None or clip.frames is not None or clip.missing


def test_very_short_clip_marks_audio_missing(media_dir):
    write_media(media_dir / "s.wav", audio=tone(0.05, 16000), rate=16000)
    clip = decode(media_dir / "s.wav", "s", ("audio",))
    assert clip.audio is None and "too short" in clip.missing["audio"]


def test_discover_ids_recursive_unicode_and_collisions(media_dir):
    make_clip(media_dir / "sub dir" / "ça va.mp4", seconds=0.3)
    make_clip(media_dir / "x.mp4", seconds=0.3)
    make_clip(media_dir / "x.wav", seconds=0.3, video=False)
    (media_dir / "notes.txt").write_text("ignored")
    files, collisions = discover(media_dir)
    assert set(files) == {"sub dir/ça va"}
    assert set(collisions) == {"x"} and len(collisions["x"]) == 2
