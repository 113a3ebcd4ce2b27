"""Scene detection on generated clips (team issue 11, part 3): which detector finds which cut, and
kvl's own pass that makes a fade through black or a dissolve one cut, without cutting a pan."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvl_cli.errors import UsageError
from kvl_cli.media import scenes as sd
from kvl_cli.media.scenes import detect_scenes

from .clips import write_clips

HARD = [2.0, 4.0]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_clips(tmp_path_factory.mktemp("clips"))


def cuts(path: Path, **kwargs: object) -> list[float]:
    return [s.start for s in detect_scenes(path, **kwargs)[1:]]  # type: ignore[arg-type]


def assert_cuts(found: list[float], want: list[float], tol: float = 0.15) -> None:
    assert len(found) == len(want) and all(abs(f - w) <= tol for f, w in zip(found, want, strict=True)), (found, want)


# ---- the default: adaptive detector + fades and dissolves ---------------------------------------


@pytest.mark.parametrize("clip,want,tol", [
    ("brightness", HARD, 0.15),
    ("hue", HARD, 0.15),  # green to cyan at the same luma: the cut ContentDetector at 27 missed
    ("texture", HARD, 0.15),  # same mean colour, another pattern
    ("fade", [3.0], 0.15),  # out, a second of black, in: one cut in the black
    ("dissolve", [2.5], 0.5),  # anywhere inside the 2.0-3.0 s crossfade
    ("pan", [], 0),  # the camera moves over one picture: one shot
    ("fade_ends", [], 0),  # starts and ends in black: no cut there
])
def test_default_finds_each_cut_once(clips, clip, want, tol):
    assert sd.DEFAULT_DETECTOR == "adaptive"
    assert_cuts(cuts(clips[clip]), want, tol)


def test_scenes_tile_the_video(clips):
    scenes = detect_scenes(clips["fade"])
    assert [s.index for s in scenes] == [1, 2]
    assert scenes[0].start == 0.0 and scenes[0].end == scenes[1].start and scenes[1].end == pytest.approx(6.0, abs=0.1)


def test_range(clips):
    scenes = detect_scenes(clips["brightness"], start=1.0, end=5.0)
    assert [(round(s.start, 1), round(s.end, 1)) for s in scenes] == [(1.0, 2.0), (2.0, 4.0), (4.0, 5.0)]
    assert [(s.start, s.end) for s in detect_scenes(clips["brightness"], start=4.5)] == [(4.5, pytest.approx(6.0))]


# ---- what each PySceneDetect detector does alone (transitions=False) ----------------------------------


@pytest.mark.parametrize("detector,clip,want", [
    ("adaptive", "hue", HARD),
    ("content", "hue", [4.0]),  # green→cyan scores ~19 < 27
    ("histogram", "hue", [4.0]),  # luma histograms only: green and cyan are one grey
    ("hash", "hue", []),  # the hash is of grey, normalised: same picture
    ("adaptive", "texture", HARD),
    ("content", "texture", []),  # a grey pattern scores ~21 < 27
    ("histogram", "texture", []),  # the same two grey levels in each shot
    ("hash", "texture", [2.0]),
    ("hash", "brightness", []),  # normalised brightness: blind to it
    ("adaptive", "dissolve", []),  # no single frame stands out
    ("adaptive", "pan", []), ("content", "pan", []), ("histogram", "pan", []), ("hash", "pan", []),
])
def test_detectors_alone(clips, detector, clip, want):
    assert_cuts(cuts(clips[clip], detector=detector, transitions=False), want)


def test_raw_detectors_make_a_scene_of_black_that_the_fade_pass_removes(clips):
    for detector in sd.DETECTORS:
        raw = cuts(clips["fade"], detector=detector, transitions=False)
        assert len(raw) >= 2, (detector, raw)  # the black between two cuts: a scene of its own
        assert_cuts(cuts(clips["fade"], detector=detector), [3.0])


def test_the_transition_pass_catches_hard_cuts_a_detector_misses(clips):
    assert_cuts(cuts(clips["hue"], detector="content"), HARD)
    assert_cuts(cuts(clips["brightness"], detector="hash"), HARD)
    assert_cuts(cuts(clips["dissolve"], detector="histogram"), [2.5], tol=0.5)


def test_threshold_is_the_detectors_own(clips):
    assert sd.default_threshold("content") == 27.0 and sd.default_threshold("adaptive") == 3.0
    assert 0 < sd.default_threshold("histogram") < 1 and 0 < sd.default_threshold("hash") < 1
    # lower finds more: at 15 the content detector sees the green→cyan cut
    assert_cuts(cuts(clips["hue"], detector="content", threshold=15, transitions=False), HARD)
    assert_cuts(cuts(clips["hue"], detector="content", threshold=27, transitions=False), [4.0])


@pytest.mark.parametrize("detector,threshold,expect", [
    ("contents", None, "unknown scene detector 'contents'"),
    ("histogram", 27.0, "outside (0, 1] for the histogram detector"),
    ("content", 0.0, "outside (0, 255] for the content detector"),
])
def test_bad_detector_options(clips, detector, threshold, expect):
    with pytest.raises(UsageError) as exc:
        sd.check_detector(detector, threshold)
    assert expect in exc.value.message and exc.value.hint
    with pytest.raises(UsageError):
        detect_scenes(clips["pan"], detector=detector, threshold=threshold)


def test_spaced_keeps_min_scene_len():
    assert sd.spaced([0.3, 1.0, 1.2, 2.0, 5.9], 0.0, 6.0, 0.6) == [1.0, 2.0]
