"""A hostile tester's cases against the 2026-11-30 changes (a full disk under stdout, --from,
--skip-done, --dry-run): each test was a bug on 5f41c13, fixed since; the comment in each says what
it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .clips import write_video
from .conftest import kvl_env, make_image
from .kvlrun import DISK_FULL, KVL, LONG


def run(pair, args, **kw) -> subprocess.CompletedProcess[str]:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("timeout", 120)
    return subprocess.run(KVL + args, stderr=subprocess.PIPE, text=True, env=kw.pop("env", None) or kvl_env(pair), **kw)


@pytest.fixture
def videos(tmp_path: Path) -> list[str]:
    one = write_video(tmp_path / "v1.mp4")
    two = tmp_path / "v2.mp4"
    shutil.copy(one, two)
    return [str(one), str(two)]


# ---- 1. stdout on a full disk: `kvl video` and `kvl ask VIDEO` say it twice (or once per video) ---------


@pytest.mark.parametrize("args", [["video"], ["video", "--json"], ["video", "--scenes", "--format", "srt"],
                                  ["ask", "{v}", "what?"]], ids=["summary", "json", "scenes-srt", "ask"])
def test_video_on_dev_full_says_it_once(scripted, videos, args):  # was: 2 identical lines
    args = [a.replace("{v}", videos[0]) for a in args]
    with open("/dev/full", "w") as full:
        r = run(scripted, [*args, *([] if args[0] == "ask" else videos[:1])], stdout=full)
    assert r.returncode == 7
    assert r.stderr == DISK_FULL


def test_several_videos_on_dev_full_stop_at_once_and_say_it_once(scripted, videos):
    # was: one line per video plus one (the failure is caught per video and the next video is started)
    with open("/dev/full", "w") as full:
        r = run(scripted, ["video", "--scenes", "--format", "jsonl", *videos, *videos], stdout=full)
    assert r.returncode == 7
    assert r.stderr == DISK_FULL


# ---- 1. a file opened read-write at an offset (`1<> FILE`): what kvl never wrote is cut off -------------


def test_read_write_stdout_keeps_what_follows_kvls_writes(random_pair, photos, tiny_fs):
    # was: the file is truncated to kvl's last record; the trailer (4 MiB into a sparse file) is gone
    inputs = photos(24)
    out = tiny_fs / "out"
    with out.open("wb") as f:
        f.write(b"HEADER\n" * 10)
        f.seek(4 << 20)
        f.write(b"TRAILER-KEEP-ME\n")
    fd = os.open(out, os.O_RDWR)
    try:
        os.lseek(fd, 70, os.SEEK_SET)  # sh: kvl caption --json ... 1<>out after the header
        r = run(random_pair, ["caption", "--json", *LONG, *inputs], stdout=fd, timeout=300)
    finally:
        os.close(fd)
    assert r.returncode == 7 and r.stderr == DISK_FULL
    data = out.read_bytes()
    assert data.startswith(b"HEADER\n" * 10)
    assert data.endswith(b"TRAILER-KEEP-ME\n")  # not kvl's to cut


# ---- 3. --skip-done on an endless file -------------------------------------------------------------------


@pytest.mark.parametrize("endless", ["/dev/zero", "/dev/urandom"])
def test_skip_done_on_an_endless_file_is_refused(scripted, tmp_path, endless):
    # was: reads forever (bounded memory, 100% CPU) before anything else; killed by the timeout
    img = str(make_image(tmp_path / "a.png"))
    try:
        r = run(scripted, ["caption", "--json", "--skip-done", endless, img], timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"--skip-done {endless} read forever")
    assert r.returncode in (2, 3)
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


# ---- 4. --dry-run of videos: failures in their place ----------------------------------------------------------


def test_video_dry_run_keeps_input_order(scripted, videos, tmp_path):
    # was: the failures are written first, then the good videos
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage")
    r = run(scripted, ["video", "--dry-run", "--json", videos[0], str(bad), str(tmp_path / "missing.mp4"), videos[1]])
    assert r.returncode == 5
    assert [json.loads(x)["input"] for x in r.stdout.splitlines()] == [videos[0], str(bad),
                                                                       str(tmp_path / "missing.mp4"), videos[1]]


def test_video_scenes_dry_run_json_writes_failures(scripted, videos, tmp_path):
    # was: with --scenes the failed videos are only on stderr, not in the JSON lines (without --scenes they are)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage")
    r = run(scripted, ["video", "--scenes", "--dry-run", "--json", str(bad), videos[0]])
    assert r.returncode == 5
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert recs[0]["input"] == str(bad) and recs[0]["exit_code"] == 3
    assert all(rec["input"].startswith(videos[0]) for rec in recs[1:]) and len(recs) > 1


# ---- 2. --from - with a file name that is not UTF-8 (pre-existing, not today's) --------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="byte file names")
def test_from_stdin_finds_a_name_that_is_not_utf8(scripted, tmp_path):
    # was (before 2026-11-30 too): stdin is decoded with errors="replace", so caf\xe9.png becomes caf\ufffd.png:
    # "file not found", printed with a raw U+FFFD instead of the escaped \xe9 the README promises
    name = os.fsencode(tmp_path) + b"/caf\xe9.png"
    make_image(Path(os.fsdecode(name)))
    p = subprocess.run(KVL + ["caption", "--json", "--from", "-"], input=name + b"\n", capture_output=True,
                       env=kvl_env(scripted), timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["error"] is None


@pytest.mark.parametrize("sep", ["\x0c", "\x0b", "\x1c", "\x85", "\u2028"])
def test_from_splits_on_newlines_only(scripted, tmp_path, sep):
    # was (before 2026-11-30 too): read_list uses str.splitlines(), which also splits on \f, \v, \x1c-\x1e,
    # \x85, U+2028/2029: a legal file name a<sep>b.png becomes two missing inputs "…/a" and "b.png"
    img = make_image(tmp_path / f"a{sep}b.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{img}\n", encoding="utf-8")
    r = run(scripted, ["caption", "--json", "--from", str(listing)])
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["input"] for x in r.stdout.splitlines()] == [str(img)]
