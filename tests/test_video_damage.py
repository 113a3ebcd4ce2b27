"""Damaged videos (team issue 12, item 4): no frame at all is exit 3 with one sentence; some frames
missing is counted and said; FFmpeg's own lines never reach stderr."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kvl_cli.errors import InputError
from kvl_cli.media.scenes import detect_scenes
from kvl_cli.media.video import FrameSampler

from .conftest import kvl_env

QUIETING = ("OPENCV_FFMPEG_LOGLEVEL", "OPENCV_LOG_LEVEL")  # importing kvl_cli.media.video set them here
FFMPEG_NOISE = ("[mov,", "[mpeg4 @", "moov atom", "mdhd", "ac-tex", "[h264", "cap_ffmpeg", "WARN:", "ERROR:")


def write_counter(path: Path, seconds: int = 4, fps: int = 10) -> bytes:
    """A clip whose frames show their number; the file's bytes (mp4v: the moov box at the end)."""
    import cv2
    import numpy as np

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 90))
    for i in range(seconds * fps):
        img = np.full((90, 160, 3), (i * 6) % 255, np.uint8)
        cv2.putText(img, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 255), 3)
        w.write(img)
    w.release()
    return path.read_bytes()


@pytest.fixture
def damaged(tmp_path: Path) -> dict[str, Path]:
    good = write_counter(tmp_path / "good.mp4")
    out = {}
    # the media header's timescale set to 0: FFmpeg warns and guesses, the container claims hours
    mdhd = good.index(b"mdhd")
    assert good[mdhd + 4] == 0  # version 0: ctime, mtime, timescale are 32-bit
    out["timescale0"] = good[:mdhd + 16] + struct.pack(">I", 0) + good[mdhd + 20:]
    # cut in half: the moov box (at the end) is gone
    out["truncated"] = good[: len(good) // 2]
    # the picture data zeroed after the first few frames: the decoder gives up early
    data, moov = good.index(b"mdat") + 4, good.index(b"moov") - 4
    keep = data + 3000
    out["zeroed"] = good[:keep] + bytes(moov - keep) + good[moov:]
    for name, blob in out.items():
        (tmp_path / f"{name}.mp4").write_bytes(blob)
    return {name: tmp_path / f"{name}.mp4" for name in out}


def fresh_env(pair=None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """This process's environment without the settings kvl makes: the child must make them itself."""
    return {k: v for k, v in kvl_env(pair).items() if k not in QUIETING}


def python(*args: object, pair=None) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=fresh_env(pair),
                          timeout=120)


def kvl_process(pair, *args: object) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return python("-m", "kvl_cli", *args, pair=pair)


def test_no_decodable_frame_is_an_input_error(damaged):
    with pytest.raises(InputError) as exc:
        list(FrameSampler(damaged["timescale0"], max_frames=16))
    assert exc.value.message.endswith(": no frames could be decoded")
    assert "damaged" in (exc.value.hint or "") and "ffmpeg -i" in (exc.value.hint or "")


def test_some_frames_missing_are_counted_and_said(damaged):
    sampler = FrameSampler(damaged["zeroed"], max_frames=16)
    frames = list(sampler)
    assert 0 < len(frames) < 16
    assert sampler.wanted == 16 and sampler.missing == 16 - len(frames)
    assert sampler.warning is not None
    assert sampler.warning.startswith(f"{damaged['zeroed']}: only {len(frames)} of 16 frames could be decoded")


def test_a_whole_video_has_no_warning(tmp_path):
    path = tmp_path / "good.mp4"
    write_counter(path)
    sampler = FrameSampler(path, max_frames=16)
    assert len(list(sampler)) == 16 and sampler.missing == 0 and sampler.warning is None


def test_zero_timescale_exits_3_with_one_line(scripted, damaged):
    r = kvl_process(scripted, "video", damaged["timescale0"])
    assert r.returncode == 3, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvl: error: "), r.stderr
    assert "no frames could be decoded" in lines[0]


def test_truncated_mp4_exits_3_without_ffmpegs_lines(scripted, damaged):
    r = kvl_process(scripted, "video", damaged["truncated"])
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a video kvl can read" in lines[0], r.stderr


def test_decoder_errors_stay_off_stderr(damaged):
    """Sampling and scene detection on a damaged stream, in a fresh process: fd 2 stays empty."""
    code = ("import sys; from pathlib import Path; from kvl_cli.media.video import FrameSampler\n"
            "from kvl_cli.media.scenes import detect_scenes\n"
            "p = Path(sys.argv[1]); s = FrameSampler(p, max_frames=16); n = len(list(s))\n"
            "print(n, s.missing, len(detect_scenes(p)))")
    r = python("-c", code, damaged["zeroed"])
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    n, missing, scenes = map(int, r.stdout.split())
    assert n + missing == 16 and 0 < n < 16 and scenes >= 1


def test_the_damaged_file_really_is_noisy(damaged):
    """Without kvl's setting FFmpeg does print: the test above checks something."""
    code = ("import cv2, sys\nc = cv2.VideoCapture(sys.argv[1])\nwhile c.grab(): pass")
    r = python("-c", code, damaged["zeroed"])
    assert any(noise in r.stderr for noise in FFMPEG_NOISE), r.stderr


def test_scenes_of_a_video_with_no_decodable_frame(damaged):
    scenes = detect_scenes(damaged["timescale0"])
    assert len(scenes) == 1  # nothing to cut; sampling its frames is what fails, with the sentence above


def test_partly_decodable_video_answers_with_a_warning(scripted, damaged):
    r = kvl_process(scripted, "video", damaged["zeroed"], "--json")
    assert r.returncode == 0, r.stderr
    assert not any(noise in r.stderr for noise in FFMPEG_NOISE), r.stderr
    got = len(json.loads(r.stdout)["frames"])
    assert 0 < got < 16
    assert f"only {got} of 16 frames could be decoded" in " ".join(r.stderr.split())  # the renderer may wrap
