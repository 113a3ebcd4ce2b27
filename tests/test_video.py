"""Video: sampling as a stream, timestamps, scenes, subtitles, through the real engine on the toy model."""

from __future__ import annotations

import json
import re
import resource
from pathlib import Path

import pytest

from kvl_cli.media.scenes import detect_scenes
from kvl_cli.media.video import FrameSampler, parse_time, probe, target_times
from kvl_cli.synthetic import SCRIPTED_ANSWER

from .clips import write_video


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_video(tmp_path / "cuts.mp4")


def test_probe(clip):
    info = probe(clip)
    assert info.frames == 60 and abs(info.fps - 10) < 0.01 and abs(info.duration - 6.0) < 0.01


def test_uniform_sampling_timestamps(clip):
    frames = list(FrameSampler(clip, max_frames=6))
    assert [round(f.time, 1) for f in frames] == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    assert frames[0].rgb.shape == (120, 160, 3)
    # the frame at 2.5 s is from the second (light) segment: RGB, not BGR
    assert tuple(int(v) for v in frames[2].rgb[0, 0]) == pytest.approx((220, 250, 220), abs=12)


def test_fps_sampling_and_range(clip):
    frames = list(FrameSampler(clip, fps=1, max_frames=100, start=1.0, end=4.0))
    assert [round(f.time, 1) for f in frames] == [1.0, 2.0, 3.0]


def test_max_frames_caps_fps_sampling():
    assert len(target_times(0, 100, fps=2, max_frames=10)) == 10


def test_scene_boundaries(clip):
    scenes = detect_scenes(clip)
    assert [(round(s.start, 1), round(s.end, 1)) for s in scenes] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]


def test_parse_time():
    assert parse_time("65") == 65 and parse_time("1:05") == 65 and parse_time("00:01:05.5") == 65.5


def test_video_summary_json(kvl, scripted, clip):
    r = kvl("video", clip, "--max-frames", "4", "--json", *scripted.args())
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["answer"] == SCRIPTED_ANSWER and rec["task"] == "video"
    assert rec["frames"] == [0.7, 2.2, 3.7, 5.2]
    assert len(rec["image_tokens"]) == 4 and rec["tokens_per_frame"] == 256


def test_ask_about_a_video(kvl, scripted, clip):
    r = kvl("ask", clip, "What happens after the light scene?", "--json", *scripted.args())
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["question"] == "What happens after the light scene?" and len(rec["frames"]) == 16


def test_scenes_as_srt(kvl, scripted, clip):
    r = kvl("video", "--scenes", "--format", "srt", clip, *scripted.args())
    assert r.code == 0, r.err
    blocks = r.out.strip().split("\n\n")
    assert len(blocks) == 3
    assert blocks[1].splitlines() == ["2", "00:00:02,000 --> 00:00:04,000", SCRIPTED_ANSWER]
    for b in blocks:
        assert re.fullmatch(r"\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n.+", b)


def test_verbose_into_a_log_says_each_status_once(kvl, scripted, clip, tmp_path):
    """-v with stderr not a terminal (a log): each status line once, not once per progress event (it was
    "captioning scene 2/3" and its siblings 33 times for this 3-scene video), scenes taking turns or not."""
    def status_lines(*args: object) -> list[str]:
        r = kvl("video", "--scenes", "-v", *args, *scripted.args())
        assert r.code == 0, r.err
        return [line for line in r.err.splitlines() if line.startswith("kvl: ")]

    scenes = [f"kvl: captioning scene {i}/3" for i in (1, 2, 3)]
    for parallel in ("1", "2"):
        lines = status_lines(clip, "-P", parallel)
        assert [lines.count(line) for line in ["kvl: finding scenes", *scenes]] == [1, 1, 1, 1], lines
    # the next video's scenes are said again, once each
    lines = status_lines(clip, write_video(tmp_path / "again.mp4"))
    assert [lines.count(line) for line in ["kvl: finding scenes", *scenes]] == [2, 2, 2, 2], lines


def test_scenes_as_vtt_and_jsonl(kvl, scripted, clip, tmp_path):
    vtt = kvl("video", "--scenes", "--format", "vtt", clip, *scripted.args()).out
    assert vtt.startswith("WEBVTT\n\n") and "00:00:04.000 --> 00:00:06.000" in vtt
    other = write_video(tmp_path / "other.mp4", seconds=2)
    r = kvl("video", "--scenes", "--json", clip, other, *scripted.args())
    recs = [json.loads(x) for x in r.out.splitlines()]
    assert [(Path(x["file"]).name, x["scene"]) for x in recs] == [
        ("cuts.mp4", 1), ("cuts.mp4", 2), ("cuts.mp4", 3), ("other.mp4", 1)]
    assert recs[1]["start"] == 2.0 and recs[1]["end"] == 4.0 and recs[1]["caption"] == SCRIPTED_ANSWER


def test_scenes_with_two_workers_come_out_in_order_and_the_same(kvl, random_pair, clip):
    """Scenes worked on two at a time (two CPU workers) give exactly the serial subtitles, in order."""
    args = ("video", "--scenes", "--format", "srt", clip, *random_pair.args(), "--temperature", "0", "--no-think",
            "--max-tokens", "12", "--no-cache", "-t", "2")
    serial = kvl(*args, "-P", "1")
    together = kvl(*args, "-P", "2")
    assert serial.code == 0 and together.code == 0, together.err
    assert together.out == serial.out
    assert [b.splitlines()[0] for b in together.out.strip().split("\n\n")] == ["1", "2", "3"]


def test_animated_gif_counts_as_a_video(kvl, scripted, tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (56, 56), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=500, loop=0)
    r = kvl("video", path, "--max-frames", "3", "--json", *scripted.args())
    assert r.code == 0, r.err
    assert json.loads(r.out)["answer"] == SCRIPTED_ANSWER


@pytest.mark.parametrize("case,expect", [
    ("image", "this is an image, not a video"),
    ("empty", "the file is empty"),
    ("garbage", "not a video kvl can read"),
    ("start", "is past the end of the video"),
])
def test_bad_video_input(kvl, scripted, clip, images, tmp_path, case, expect):
    extra: list[str] = []
    target: Path = clip
    if case == "image":
        target = images["jpg"]
    elif case == "empty":
        target = tmp_path / "e.mp4"
        target.write_bytes(b"")
    elif case == "garbage":
        target = tmp_path / "g.mp4"
        target.write_bytes(b"\x00\x01garbage" * 100)
    else:
        extra = ["--start", "0:30"]
    r = kvl("video", target, *extra, *scripted.args())
    assert r.code == 3, r.err
    assert expect in r.err and "Traceback" not in r.err


def test_long_video_memory_stays_bounded(tmp_path):
    path = write_video(tmp_path / "long.mp4", seconds=240, fps=25, size=(320, 240), segment=7)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = FrameSampler(path, max_frames=8)
    kept = [f.time for f in sampler]  # keep only timestamps: the sampler itself must not accumulate
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(kept) == 8 and kept[-1] == 225.0
    assert sampler.decoded >= 225 * 25  # read through to the last target, then stopped
    raw_mb = 6000 * 320 * 240 * 3 / 2**20  # what holding every frame would take: ~1.3 GB
    assert growth_mb < 100, f"RSS grew {growth_mb:.0f} MB (all frames would be {raw_mb:.0f} MB)"
