"""Scene detection: seconds per minute of video for each detector, and how many true cuts each finds.

    .venv/bin/python benchmarks/scenes.py                  # a 1-minute 640x360 25 fps clip
    .venv/bin/python benchmarks/scenes.py --minutes 3 --repeat 3

Writes a generated clip (textured shots joined by hard cuts, hue-only cuts, dissolves and fades
through black, with camera pans inside some shots; the true cut times are known) into
``.bench/scenes/``, then times ``kvl_cli.media.video.detect_scenes`` with each detector, alone
(``transitions=False``) and with kvl's fade and dissolve pass, plus decoding alone as the floor.
Prints a Markdown table: wall and CPU seconds per minute of video (best of ``--repeat``; the CPU
time counts PySceneDetect's decoding thread too, and is the steadier number on a busy machine),
and the cuts found against the truth (a found cut counts within 0.5 s of a true one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kvl_cli.media.scenes import detect_scenes  # noqa: E402
from kvl_cli.media.video import probe  # noqa: E402
from tests.clips import Canvas  # noqa: E402

KINDS = ("cut", "hue", "dissolve", "fade")


def build(path: Path, minutes: float, c: Canvas, seed: int = 1) -> tuple[Path, list[float]]:
    """Shots of 3-6 s until ``minutes`` are filled; every third shot is a pan. (path, true cuts)."""
    rng = np.random.default_rng(seed)
    frames: list = []
    truth: list[float] = []
    prev = None
    i = 0
    while len(frames) < minutes * 60 * c.fps:
        seconds = float(rng.uniform(3, 6))
        kind = KINDS[i % len(KINDS)]
        hue = float(rng.uniform(0, 360)) if kind != "hue" or prev is None else (prev[0] + 70) % 360
        luma = float(rng.uniform(60, 190)) if kind != "hue" or prev is None else prev[1]
        shot = c.pan(seconds, speed=6, seed=i) if i % 3 == 2 else c.hold(c.shot(hue, luma, c.texture(i)), seconds)
        if prev is not None:
            frames, cut = _join(frames, shot, kind, c)
            truth.append(cut)
        frames += shot
        prev, i = (hue, luma), i + 1
    return c.write(path, frames), truth


def _join(frames: list, shot: list, kind: str, c: Canvas) -> tuple[list, float]:
    """Append the transition into ``shot``; the time of its cut."""
    if kind == "dissolve":
        frames = frames + c.dissolve(frames[-1], shot[0], 1.0)
        return frames, (len(frames) - c.frames(0.5)) / c.fps
    if kind == "fade":
        frames = frames + c.fade(frames[-1], 0.5, into=False) + c.hold(shot[0] * 0, 0.5)
        cut = (len(frames) - c.frames(0.25)) / c.fps
        return frames + c.fade(shot[0], 0.5, into=True), cut
    return frames, len(frames) / c.fps


def score(found: list[float], truth: list[float], tol: float = 0.5) -> tuple[int, int]:
    """(true cuts found, cuts found that match none)."""
    left = list(truth)
    hits = 0
    for f in found:
        near = [t for t in left if abs(t - f) <= tol]
        if near:
            left.remove(near[0])
            hits += 1
    return hits, len(found) - hits


def decode_only(path: Path) -> float:
    """Seconds to decode every frame with OpenCV and shrink it as PySceneDetect does (linear, to ~256 px wide)."""
    import cv2

    t0 = time.perf_counter()
    cap = cv2.VideoCapture(str(path))
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        cv2.resize(frame, (256, frame.shape[0] * 256 // frame.shape[1]), interpolation=cv2.INTER_LINEAR)
    cap.release()
    return time.perf_counter() - t0


def best(fn, repeat: int) -> tuple[float, float, object]:  # type: ignore[no-untyped-def]
    """(best wall seconds, best CPU seconds of the whole process, fn's result) over ``repeat`` runs."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    folder = REPO / ".bench" / "scenes"
    folder.mkdir(parents=True, exist_ok=True)
    path, truth = build(folder / f"scenes-{args.size}-{args.fps}.mp4", args.minutes, Canvas(w, h, args.fps))
    minutes = probe(path).duration / 60
    print(f"{path.name}: {minutes * 60:.0f} s, {w}x{h} at {args.fps} fps, {len(truth)} true cuts "
          f"({', '.join(KINDS)} in turn)\n")
    print("| detector | pass | wall s per minute of video | CPU s per minute | true cuts found | extra cuts |")
    print("|---|---|---:|---:|---:|---:|")
    wall, cpu, _ = best(lambda: decode_only(path), args.repeat)
    print(f"| (decode only) | | {wall / minutes:.2f} | {cpu / minutes:.2f} | | |")
    for detector in ("adaptive", "content", "histogram", "hash"):
        for transitions in (False, True):
            wall, cpu, scenes = best(lambda d=detector, t=transitions: detect_scenes(path, detector=d, transitions=t),
                                     args.repeat)
            hits, extra = score([sc.start for sc in scenes[1:]], truth)  # type: ignore[attr-defined]
            label = "+ fades, dissolves" if transitions else "alone"
            print(f"| {detector} | {label} | {wall / minutes:.2f} | {cpu / minutes:.2f} | {hits}/{len(truth)} | "
                  f"{extra} |")

if __name__ == "__main__":
    main()
