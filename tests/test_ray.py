"""kvl on a Ray cluster on this machine, with the toy models: images, videos with scenes, bad
inputs, resume; and ``--ray local`` staying on loopback. Each run is a real ``kvl`` process, the
driver of a Ray job; all but the first join one cluster the module starts on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER

from .clips import write_video
from .conftest import kvl_env, make_image
from .raycluster import head_node, kvl_proc

LOOPBACK = ("127.", "[::ffff:127.", "[::1]")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, about its own settings


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob("part-*.jsonl")) for line in p.read_text().splitlines()]


@pytest.fixture
def library(tmp_path: Path) -> Path:
    d = tmp_path / "lib"
    d.mkdir()
    for i in range(4):
        make_image(d / f"im{i}.jpg", color=(40 * i, 100, 200 - 30 * i))
    (d / "bad.jpg").write_bytes(b"not an image")
    return d


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo += children.get(p, [])
    return found


def _outward_listeners(pid: int) -> list[str]:
    """Listening TCP sockets of ``pid``'s process tree on anything but loopback."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    tree = _descendants(pid)
    bad = []
    for line in out.splitlines():
        local = line.split()[3]
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if pids & tree and not local.startswith(LOOPBACK):
            bad.append(line)
    return bad


def test_local_cluster_on_loopback_images_and_bad_inputs(scripted, library, tmp_path):
    env = kvl_env(scripted)
    proc = subprocess.Popen([sys.executable, "-m", "kvl_cli", "caption", "--ray", "local", library,
                             tmp_path / "missing.jpg"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    exposed: list[str] = []
    while proc.poll() is None and shutil.which("ss"):
        exposed += _outward_listeners(proc.pid)
        time.sleep(1)
    out, err = proc.communicate(timeout=240)
    assert exposed == []
    assert proc.returncode == 5, err  # some inputs failed, the others ran
    recs = {r["input"]: r for r in map(json.loads, out.splitlines())}
    assert len(recs) == len(out.splitlines()) == 6  # every input exactly once
    for i in range(4):
        r = recs[str(library / f"im{i}.jpg")]
        assert r["answer"] == SCRIPTED_ANSWER and r["task"] == "caption" and r["error"] is None
    assert recs[str(library / "bad.jpg")]["exit_code"] == 3
    assert "file not found" in recs[str(tmp_path / "missing.jpg")]["error"]
    assert err.strip().splitlines()[-1].startswith("kvl: 4 inputs done, 2 failed of 6")  # the driver's last line
    assert "Traceback" not in err and not (Path.home() / ".ray" / "auth_token").exists()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One Ray cluster on loopback for the module (``head_node``); yields the env to join it."""
    with head_node(dict(os.environ)) as (address, join, _):
        yield {**join, "ADDRESS": address}


def joined(cluster: dict[str, str]) -> list[str]:
    """Join the module's cluster with one worker (two starting at once on two cores cost seconds)."""
    return ["--ray", cluster["ADDRESS"], "--workers", "1"]


def test_images_to_part_files_then_resume(scripted, library, cluster, tmp_path):
    env = kvl_env(scripted, **cluster)
    out = tmp_path / "out"
    (library / "late.jpg").write_bytes(b"not yet an image")
    r = kvl_proc(["ocr", *joined(cluster), "--output", out, library], env)
    assert r.returncode == 5, r.stderr
    assert r.stdout == ""  # the workers wrote the records
    first = {rec["input"]: rec for rec in records(out)}
    assert len(first) == len(records(out)) == 6
    assert first[str(library / "late.jpg")]["exit_code"] == 3 and first[str(library / "im0.jpg")]["task"] == "ocr"

    again = kvl_proc(["ocr", *joined(cluster), "--output", out, library], env)
    assert again.returncode == 2 and "already holds results" in again.stderr

    make_image(library / "late.jpg")  # fixed: the resume runs it (and bad.jpg, still bad) again
    r = kvl_proc(["ocr", *joined(cluster), "--output", out, "--skip-done", out, library], env)
    assert r.returncode == 5, r.stderr
    assert "skipping 4 already done" in r.stderr
    final = records(out)
    assert sorted(rec["input"] for rec in final) == sorted(first)  # still exactly once each
    assert {rec["input"] for rec in final if rec["error"] is None} == set(first) - {str(library / "bad.jpg")}


def test_video_scenes_with_subtitles_and_resume(scripted, cluster, tmp_path):
    env = kvl_env(scripted, **cluster)
    vids = tmp_path / "vids"
    vids.mkdir()
    write_video(vids / "a.mp4")  # cuts at 2 s and 4 s: three scenes
    write_video(vids / "b.mp4", seconds=4)  # two scenes
    (vids / "broken.mp4").write_bytes(b"\x00" * 1000)
    out = tmp_path / "out"
    r = kvl_proc(["video", "--scenes", "--format", "srt", *joined(cluster), "--output", out, vids], env)
    assert r.returncode == 5, r.stderr
    recs = records(out)
    keys = [(rec["file"], rec["scene"]) for rec in recs]
    assert len(keys) == len(set(keys)) == 6
    scenes = sorted(k for k in keys if k[1] is not None)
    assert scenes == [(str(vids / "a.mp4"), i) for i in (1, 2, 3)] + [(str(vids / "b.mp4"), i) for i in (1, 2)]
    assert all(rec["caption"] == SCRIPTED_ANSWER for rec in recs if rec["scene"] is not None)
    srt = (out / "a.srt").read_text()
    assert "00:00:02,000 --> 00:00:04,000" in srt and srt.count(SCRIPTED_ANSWER) == 3
    assert (out / "b.srt").exists() and not (out / "broken.srt").exists()

    r = kvl_proc(["video", "--scenes", *joined(cluster), "--skip-done", out, "--output", out, vids], env)
    assert r.returncode == 3, r.stderr  # only the broken video ran again, and failed again
    assert "skipping 2 already done" in r.stderr
    assert sorted((rec["file"], rec["scene"]) for rec in records(out) if rec["scene"]) == scenes
