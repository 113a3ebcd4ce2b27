"""kvl index and kvl search against hostile input: names that collide across folders, JSON Lines
under a .json name, times that are not times, FIFOs and devices in a folder, missing paths,
read-only and full disks, an --index that is a folder, oversized flags."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kvl_cli.index import build, open_index, search

from .conftest import kvl_env
from .kvlrun import KVL, records
from .terminal import in_terminal


def write_jsonl(path: Path, recs: list[dict], extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + extra)
    return path


def image(name: str, answer: str, task: str = "caption", **more: object) -> dict:
    return {"input": name, "task": task, "model": "toy", "answer": answer, "error": None, **more}


def hits(kvl, *args: object) -> list[dict]:
    r = kvl("search", "--json", *args)
    assert r.code == 0, r.err
    return records(r.out)


def test_one_relative_name_in_two_folders_is_two_files(kvl, tmp_path):
    write_jsonl(tmp_path / "trip" / "caps.jsonl", [image("photos/a.jpg", "a red kayak")])
    write_jsonl(tmp_path / "home" / "caps.jsonl", [image("photos/a.jpg", "a red sofa")])
    side = tmp_path / "cards" / "b.json"  # a sidecar beside its image: the record names it as it was given
    side.parent.mkdir()
    side.write_text(json.dumps(image("some/where/b.jpg", "a red card")))
    r = kvl("index", tmp_path / "trip", tmp_path / "home", side)
    assert r.code == 0 and "3 new records" in r.err, r.err
    assert sorted(h["file"] for h in hits(kvl, "red")) == [
        str(tmp_path / "cards" / "b.jpg"), str(tmp_path / "home" / "photos" / "a.jpg"),
        str(tmp_path / "trip" / "photos" / "a.jpg")]
    # stdin: against the current folder; absolute names and URLs as they are
    r = kvl("index", "-", stdin=(json.dumps(image("x.jpg", "a red x")) + "\n"
                                 + json.dumps(image("https://example.org/y.jpg", "a red y")) + "\n").encode())
    assert r.code == 0
    assert {h["file"] for h in hits(kvl, "red x")} == {os.path.join(os.getcwd(), "x.jpg")}
    assert {h["file"] for h in hits(kvl, "red y")} == {"https://example.org/y.jpg"}
    assert "\nx.jpg  (caption)\n" in "\n" + kvl("search", "red x").out  # shown from the current folder
    assert kvl("index", write_jsonl(tmp_path / "t" / "r.jsonl", [image("~/z.jpg", "a red z")])).code == 0
    assert {h["file"] for h in hits(kvl, "red z")} == {str(Path.home() / "z.jpg")}


def test_json_lines_under_a_json_name_are_read_by_lines_and_a_bom_is_no_damage(kvl, tmp_path):
    recs = [image(f"photos/p{i}.jpg", f"a lantern number {i}") for i in range(3)]
    write_jsonl(tmp_path / "caps.json", recs)
    (tmp_path / "caps.json").write_text("\n\n" + (tmp_path / "caps.json").read_text())  # blank lines first
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(image("q.jpg", "a lantern with a bom")).encode()
                                         + b"\n")
    (tmp_path / "pretty.json").write_text(json.dumps({"not": "kvl's"}, indent=2))  # JSON, not kvl's: passed over
    r = kvl("index", tmp_path)
    assert r.code == 0, r.err
    assert "4 new records" in r.err and "1 .json file not kvl's passed over" in r.err
    assert sorted(h["file"] for h in hits(kvl, "lantern")) == [  # each line's input against the file's folder
        *(str(tmp_path / "photos" / f"p{i}.jpg") for i in range(3)), str(tmp_path / "q.jpg")]
    # a damaged line among them is one damaged line, not a damaged file
    write_jsonl(tmp_path / "more" / "caps.json", recs[:1], extra="{cut\n" + json.dumps(image("z.jpg", "a lantern z")))
    r = kvl("index", tmp_path / "more")
    assert r.code == 5 and f"1 damaged line skipped (the first: {tmp_path / 'more' / 'caps.json'}:2)" in r.err
    assert str(tmp_path / "more" / "z.jpg") in {h["file"] for h in hits(kvl, "lantern")}


@pytest.mark.parametrize("bad", ['"start": NaN', '"start": Infinity', '"end": -Infinity', '"start": 1e400',
                                 '"start": -5', '"end": 100000000000000000000000000000000',
                                 '"page": 100000000000000000000000000000000', '"scene": -1e300'])
def test_times_and_numbers_that_are_not_are_damage(kvl, tmp_path, bad):
    good = json.dumps(image("v.mp4", "a harbour at night", start=1.0, end=2.5))
    src = tmp_path / "s.jsonl"
    src.write_text('{"file": "w.mp4", "scene": 1, "caption": "a harbour in fog", ' + bad + "}\n" + good + "\n")
    r = kvl("index", src)
    assert r.code == 5 and f"1 damaged line skipped (the first: {src}:1)" in r.err and "Traceback" not in r.err
    [hit] = hits(kvl, "harbour")
    assert (hit["file"], hit["start"], hit["end"]) == (str(tmp_path / "v.mp4"), 1.0, 2.5)


def test_lone_surrogates_are_indexed_not_a_crash(kvl, tmp_path):
    src = tmp_path / "s.jsonl"
    src.write_text('{"input": "a\\udc80.jpg", "answer": "a harbour \\ud800 crane", "task": "caption"}\n')
    assert kvl("index", src).code == 0
    [hit] = hits(kvl, "crane")
    assert hit["text"] == "a harbour \ufffd crane" and hit["file"] == str(tmp_path / "a\\x80.jpg")  # as kvl shows it


def test_times_an_older_index_holds_are_shown_not_a_crash(kvl, tmp_path):
    index = tmp_path / "i.sqlite"
    build([str(write_jsonl(tmp_path / "r.jsonl", [image("v.mp4", "a harbour", start=1.0, end=2.0)]))], index,
          sys.stderr)
    with sqlite3.connect(index) as conn:  # as no kvl writes it now: Infinity, and a time past any clock
        conn.execute("UPDATE docs SET start = 9e999, \"end\" = 1e300")
    r = kvl("search", "--index", index, "harbour")
    assert r.code == 0 and f"{tmp_path / 'v.mp4'} @ ?–?" in r.out
    [hit] = hits(kvl, "--index", index, "harbour")
    assert hit["start"] is None and hit["end"] is None


def test_fifos_and_links_to_devices_in_a_folder_are_passed_over(tmp_path):
    folder = tmp_path / "recs"
    write_jsonl(folder / "a.jsonl", [image("a.jpg", "a lighthouse")])
    os.mkfifo(folder / "b.jsonl")  # nobody writes it: reading it would wait forever
    (folder / "c.jsonl").symlink_to("/dev/zero")  # never ends
    (folder / "d.json").symlink_to("/dev/zero")
    index = tmp_path / "i.sqlite"
    r = subprocess.run([*KVL, "index", "--index", str(index), str(folder)], capture_output=True, text=True,
                       env=kvl_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "1 new record" in r.stderr and "3 not plain files (FIFOs, devices) passed over" in r.stderr
    r = subprocess.run([*KVL, "index", "--index", str(index), str(folder / "c.jsonl")], capture_output=True,
                       text=True, env=kvl_env(), timeout=120)  # named: one line saying so
    assert r.returncode == 3 and f"kvl: error: {folder / 'c.jsonl'}: not a file" in r.stderr  # nothing else named


def test_a_named_fifo_is_read_once(tmp_path):
    fifo = tmp_path / "recs.json"  # `kvl index <(…)`: a pipe, JSON Lines under any name
    os.mkfifo(fifo)
    index = tmp_path / "i.sqlite"
    proc = subprocess.Popen([*KVL, "index", "--index", str(index), str(fifo)], stderr=subprocess.PIPE, text=True,
                            env=kvl_env())
    with open(fifo, "w") as f:
        f.write("".join(json.dumps(image(f"{i}.jpg", f"a ferry {i}")) + "\n" for i in range(3)))
    assert proc.wait(120) == 0
    assert "3 new records" in (proc.stderr.read() if proc.stderr else "")


def test_a_missing_path_is_said_and_the_others_indexed(kvl, tmp_path, isolated):
    good = write_jsonl(tmp_path / "good.jsonl", [image("a.jpg", "a lighthouse")])
    r = kvl("index", tmp_path / "gone.jsonl", good, tmp_path / "also-gone")
    assert r.code == 5
    assert f"kvl: error: {tmp_path / 'gone.jsonl'}: not found" in r.err
    assert f"kvl: error: {tmp_path / 'also-gone'}: not found" in r.err and "1 new record" in r.err
    assert [h["file"] for h in hits(kvl, "lighthouse")] == [str(tmp_path / "a.jpg")]
    index = tmp_path / "new.sqlite"
    r = kvl("index", "--index", index, tmp_path / "gone.jsonl")  # nothing there at all: nothing made
    assert r.code == 3 and "not found" in r.err and not index.exists()


def test_an_index_that_is_a_folder_or_empty_is_a_usage_error(kvl, tmp_path, isolated):
    src = write_jsonl(tmp_path / "r.jsonl", [image("a.jpg", "a lighthouse")])
    for args in (["index", "--index", tmp_path, src], ["search", "--index", tmp_path, "lighthouse"]):
        r = kvl(*args)
        assert r.code == 2 and "is a folder" in r.err and "Traceback" not in r.err
        assert len(r.err.strip().splitlines()) == 1
    for args in (["index", "--index", "", src], ["search", "--index", " ", "lighthouse"]):  # --index "$UNSET"
        r = kvl(*args)
        assert r.code == 2 and "--index is empty" in r.err
    assert not (isolated / "kvl" / "index.sqlite").exists()  # never the default one instead


@pytest.fixture
def read_only(tmp_path: Path):
    """``make(folder)``: the folder made read-only (a read-only bind mount as root, else its mode)."""
    mounted: list[Path] = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            return
        if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode:
            pytest.skip("cannot mount read-only here (root without mount)")
        mounted.append(folder)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True)
        if os.access(folder, os.W_OK) and _writable(folder):
            pytest.skip("the read-only mount is writable here")

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    for folder in tmp_path.rglob("*"):
        if folder.is_dir():
            folder.chmod(0o755)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


def test_a_read_only_index_is_searched_and_not_written(kvl, tmp_path, read_only):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    index = shelf / "lib.sqlite"
    src = write_jsonl(tmp_path / "r.jsonl", [image("a.jpg", "a lighthouse")])
    assert kvl("index", "--index", index, src).code == 0
    read_only(shelf)
    assert [h["file"] for h in hits(kvl, "--index", index, "lighthouse")] == [str(tmp_path / "a.jpg")]
    more = write_jsonl(tmp_path / "more.jsonl", [image("b.jpg", "a harbour")])
    r = kvl("index", "--index", index, more)
    assert r.code == 7 and r.err.startswith("kvl: error: ") and "internal error" not in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and "--index FILE in a folder you can write" in r.err
    r = kvl("index", "--index", shelf / "new.sqlite", more)
    assert r.code == 7 and not (shelf / "new.sqlite").exists()


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 1 MiB tmpfs (root only: skipped where it cannot be mounted)."""
    where = tmp_path / "fs"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_disk_is_exit_7_and_leaves_no_empty_index(kvl, tmp_path, small_fs):
    tiny_fs = small_fs
    src = write_jsonl(tmp_path / "r.jsonl", [image(f"{i}.jpg", f"a lighthouse number {i} " + "word " * 50)
                                             for i in range(2000)])
    filler = tiny_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # the disk full to the last block
        while os.write(fd, b"\0" * 1024):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    index = tiny_fs / "i.sqlite"
    r = kvl("index", "--index", index, src)
    assert r.code == 7 and "internal error" not in r.err and "not a kvl index" not in r.err, r.err
    assert "full" in r.err and not index.exists()
    filler.unlink()  # room for the index's first pages, not for all its records
    r = kvl("index", "--index", index, src)
    assert r.code == 7 and "full" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    conn = open_index(index)  # what was committed is a whole index
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(search(conn, "lighthouse", limit=10_000)) < 2000
    conn.close()


def test_flags_past_their_bounds_are_usage_errors(kvl, tmp_path):
    assert kvl("index", write_jsonl(tmp_path / "r.jsonl", [image("a.jpg", "a lighthouse")])).code == 0
    r = kvl("search", "--path", "*" * 100_000, "lighthouse")
    assert r.code == 2 and "--path is 100,000 characters long" in r.err
    r = kvl("search", "--limit", "10001", "lighthouse")
    assert r.code == 2 and "10000" in r.err.replace(",", "")
    assert "1 to 10,000" in kvl("search", "--help").out


def test_a_dumb_terminal_gets_no_bold(kvl, tmp_path):
    index = tmp_path / "i.sqlite"
    assert kvl("index", "--index", index, write_jsonl(tmp_path / "r.jsonl", [image("a.jpg", "a red kayak")])).code == 0
    code, shown = in_terminal([*KVL, "search", "--index", str(index), "kayak"], kvl_env(TERM="dumb"), timeout=60)
    assert code == 0 and b"\x1b[" not in shown and b"a red kayak" in shown


def test_scripts_without_spaces_are_searchable_by_their_words(kvl, tmp_path):
    src = write_jsonl(tmp_path / "r.jsonl", [image("zh.jpg", "一个白板上画着图表"),
                                             image("ja.jpg", "ホワイトボードに図がある"),
                                             image("mixed.jpg", "an iPhone手机 on a desk")])
    assert kvl("index", src).code == 0
    [zh] = hits(kvl, "白板")
    assert zh["file"] == str(tmp_path / "zh.jpg") and zh["text"] == "一个白板上画着图表"  # shown as written
    assert zh["snippet"] == "一个**白板**上画着图表"
    assert hits(kvl, "板白") == []  # a run of characters is a phrase: next to each other, in order
    assert [h["file"] for h in hits(kvl, "ホワイトボード")] == [str(tmp_path / "ja.jpg")]
    assert [h["file"] for h in hits(kvl, "手机")] == [str(tmp_path / "mixed.jpg")]
    assert [h["file"] for h in hits(kvl, "iphone")] == [str(tmp_path / "mixed.jpg")]


def test_an_index_that_is_a_device_or_a_fifo_is_a_usage_error(kvl, tmp_path):
    src = write_jsonl(tmp_path / "r.jsonl", [image("a.jpg", "a lighthouse")])
    os.mkfifo(tmp_path / "fifo.sqlite")
    for index in ("/dev/null", tmp_path / "fifo.sqlite"):
        for args in (["index", "--index", index, src], ["search", "--index", index, "lighthouse"]):
            r = kvl(*args)
            assert r.code == 2 and "is not a plain file" in r.err, r.err
    assert not Path("/dev/null-wal").exists() and not Path("/dev/null.lock").exists()


def test_a_record_cannot_forge_the_search_marks_and_a_long_query_is_said_short(kvl, tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text('{"input": "b.jpg", "answer": "a \\u0002red\\u0003 boat \\u0002", "task": "caption"}\n')
    assert kvl("index", src).code == 0
    [hit] = hits(kvl, "boat")
    assert hit["snippet"] == "a red **boat** " and hit["text"] == "a red boat "
    r = kvl("search", "zz" * 50_000)
    assert r.code == 0 and "… (100,000 characters)" in r.err and len(r.err) < 300


def test_an_index_inside_the_folder_it_indexes_is_not_read_as_records(kvl, tmp_path):
    src = write_jsonl(tmp_path / "recs" / "r.jsonl", [image("/srv/x/../a.jpg", "a lighthouse")])
    for _ in range(2):  # the second time, the index (named like a record file) is in the folder
        r = kvl("index", "--index", tmp_path / "recs" / "lib.json", src.parent)
        assert r.code == 0, r.err
    assert [h["file"] for h in hits(kvl, "--index", tmp_path / "recs" / "lib.json", "lighthouse")] == ["/srv/a.jpg"]


def test_utf16_json_lines_as_powershell_writes_them_are_read(kvl, tmp_path):
    text = "".join(json.dumps(image(f"{i}.jpg", f"a windmill {i}"), ensure_ascii=False) + "\r\n" for i in range(3))
    (tmp_path / "caps.jsonl").write_bytes(text.encode("utf-16"))  # a byte order mark, then UTF-16LE
    r = kvl("index", tmp_path / "caps.jsonl")
    assert r.code == 0 and "3 new records" in r.err, r.err
    assert len(hits(kvl, "windmill")) == 3


def _unprivileged() -> list[str]:
    """A prefix that runs a command without the power to pass over file permissions (root's)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv") or subprocess.run(
            ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--", "true"],
            capture_output=True).returncode:
        pytest.skip("root, and setpriv cannot drop the capabilities that pass over permissions")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_a_folder_that_cannot_be_listed_is_said_and_the_rest_indexed(tmp_path):
    write_jsonl(tmp_path / "recs" / "a.jsonl", [image("a.jpg", "a lighthouse")])
    write_jsonl(tmp_path / "recs" / "locked" / "b.jsonl", [image("b.jpg", "a lighthouse keeper")])
    (tmp_path / "recs" / "locked").chmod(0)
    try:
        r = subprocess.run([*_unprivileged(), *KVL, "index", "--index", str(tmp_path / "i.sqlite"),
                            str(tmp_path / "recs")], capture_output=True, text=True, env=kvl_env(), timeout=120)
    finally:
        (tmp_path / "recs" / "locked").chmod(0o755)
    assert r.returncode == 5, r.stderr
    assert f"kvl: error: {tmp_path / 'recs' / 'locked'}: cannot read this folder: Permission denied" in r.stderr
    assert "1 new record" in r.stderr


def test_an_index_another_program_holds_locked_is_said_so(tmp_path, monkeypatch):
    from kvl_cli.errors import DiskError
    from kvl_cli.index import db

    index = tmp_path / "i.sqlite"
    build([str(write_jsonl(tmp_path / "a.jsonl", [image("a.jpg", "a lighthouse")]))], index, sys.stderr)
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(index, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a program other than kvl writing it (a sqlite3 shell left open)
    try:
        with pytest.raises(DiskError, match="another process holds it locked"):
            build([str(write_jsonl(tmp_path / "b.jsonl", [image("b.jpg", "a harbour")]))], index, sys.stderr)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_damaged_index_is_one_line_not_a_traceback(kvl, tmp_path):
    index = tmp_path / "i.sqlite"
    src = write_jsonl(tmp_path / "r.jsonl", [image(f"{i}.jpg", f"a lighthouse number {i} " + "word " * 30)
                                             for i in range(3000)])
    assert kvl("index", "--index", index, src).code == 0
    data = bytearray(index.read_bytes())
    data[8192:len(data) - 4096] = os.urandom(len(data) - 4096 - 8192)  # every page but the first two
    index.write_bytes(bytes(data))
    for args in (["search", "--index", index, "lighthouse"],
                 ["index", "--index", index, write_jsonl(tmp_path / "more.jsonl", [image("z.jpg", "a lighthouse")])]):
        r = kvl(*args)
        assert r.code == 3 and "damaged" in r.err and "Traceback" not in r.err and "internal error" not in r.err, r.err
        assert len(r.err.strip().splitlines()) == 1


def test_a_nul_in_a_query_from_the_library_is_a_space(tmp_path):
    index = tmp_path / "i.sqlite"
    build([str(write_jsonl(tmp_path / "r.jsonl", [image("a.jpg", "a whiteboard NEAR the door")]))], index, sys.stderr)
    conn = open_index(index)
    try:
        assert [h.file for h in search(conn, 'door\x00"NEAR')] == [str(tmp_path / "a.jpg")]
        assert search(conn, "white\x00board") == []  # two words, neither of them in it
    finally:
        conn.close()


def test_bytes_that_are_not_utf8_in_the_arguments_are_no_crash(tmp_path):
    index = tmp_path / "i.sqlite"
    src = tmp_path / "r.jsonl"
    src.write_text('{"input": "caf\\udcff.jpg", "answer": "a caf\\udcff sign", "task": "caption"}\n')
    build([str(src)], index, sys.stderr)
    for args in ([b"caf\xff"], [b"--task", b"\xfe", b"sign"]):
        r = subprocess.run([*(a.encode() for a in KVL), b"search", b"--index", bytes(index), *args],
                           capture_output=True, env=kvl_env(), timeout=120)
        assert r.returncode == 0 and b"internal error" not in r.stderr, r.stderr
    r = subprocess.run([*(a.encode() for a in KVL), b"search", b"--index", bytes(index), b"--json", b"--path",
                        b"*caf\xff.jpg", b"sign"], capture_output=True, env=kvl_env(), timeout=120)  # the same bytes
    assert [h["file"] for h in records(r.stdout.decode())] == [str(tmp_path / "caf\\xff.jpg")]


def test_record_files_whose_names_are_not_utf8_are_indexed(tmp_path):
    folder = os.fsencode(tmp_path) + b"/d\xfe"
    os.mkdir(folder)
    with open(folder + b"/r\xff.jsonl", "w") as f:
        f.write(json.dumps(image("a.jpg", "a red kayak")) + "\n")
    index = tmp_path / "i.sqlite"
    for _ in range(2):
        r = subprocess.run([*KVL, "index", "--index", str(index), str(tmp_path)], capture_output=True, text=True,
                           env=kvl_env(), timeout=120)
        assert r.returncode == 0 and "internal error" not in r.stderr, r.stderr
    assert "1 unchanged (not read)" in r.stderr  # remembered under its name
    conn = open_index(index)
    assert [h.file for h in search(conn, "kayak")] == [f"{tmp_path}/d\\xfe/a.jpg"]
    conn.close()


def test_stdin_records_when_the_current_folder_is_gone(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    index = tmp_path / "i.sqlite"
    line = json.dumps(image("a.jpg", "a red kayak"))
    script = (f"cd {gone} && rmdir {gone} && printf '%s\\n' '{line}' | {' '.join(KVL)} index --index {index} - "
              f"&& {' '.join(KVL)} search --index {index} kayak")
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=kvl_env(), timeout=120)
    assert r.returncode == 0 and "1 new record" in r.stderr and "damaged" not in r.stderr, r.stderr
    assert r.stdout.startswith("a.jpg  (caption)\n")


def test_a_tree_of_sidecars_goes_in_one_transaction_and_is_remembered(tmp_path):
    folder = tmp_path / "photos"
    for i in range(300):
        side = folder / f"d{i % 7}" / f"p{i}.json"
        side.parent.mkdir(parents=True, exist_ok=True)
        side.write_text(json.dumps(image(f"p{i}.jpg", f"a lighthouse number {i}")))
    index = tmp_path / "i.sqlite"
    commits: list[int] = []
    tally = build([str(folder)], index, sys.stderr, progress=lambda t: commits.append(t.added))
    assert tally.added == 300 and commits == [300]  # one transaction, not one per file
    again = build([str(folder)], index, sys.stderr)
    assert again.unchanged_files == 300 and again.added == 0  # each file remembered with its records


def test_a_record_names_its_file_or_its_input(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text('{"input": "a.jpg", "file": 5, "answer": "a kite"}\n'
                   '{"input": "b.jpg", "file": "", "answer": "a kite"}\n'
                   '{"input": "c.jpg", "file": null, "answer": "a kite"}\n'
                   '{"file": "v.mp4", "scene": 1, "caption": "a kite"}\n'
                   '{"input": "", "answer": "a kite"}\n')
    tally = build([str(src)], tmp_path / "i.sqlite", sys.stderr)
    assert tally.added == 4 and tally.damage.count == 1  # the last one names nothing
    conn = open_index(tmp_path / "i.sqlite")
    names = [str(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.jpg", "v.mp4")]
    assert sorted(h.file for h in search(conn, "kite")) == names
    conn.close()


def test_a_records_task_cannot_drive_the_terminal(kvl, tmp_path):
    index = tmp_path / "i.sqlite"
    src = write_jsonl(tmp_path / "r.jsonl", [image("a.jpg", "a red kayak", task="\x1b]0;owned\x07\x1b[2J")])
    assert kvl("index", "--index", index, src).code == 0
    code, shown = in_terminal([*KVL, "search", "--index", str(index), "kayak"], kvl_env(), timeout=60)
    assert code == 0 and b"\x1b]0;" not in shown and b"\x1b[2J" not in shown and b"\\x1b]0;owned" in shown


def test_two_writers_of_one_index_never_collide(tmp_path):
    from kvl_cli.index.db import connect
    from kvl_cli.index.store import Indexer, to_doc

    index = tmp_path / "i.sqlite"
    build([str(write_jsonl(tmp_path / "seed.jsonl", [image("0.jpg", "a lighthouse")]))], index, sys.stderr)
    first, second = Indexer(connect(index, create=True)), Indexer(connect(index, create=True))
    docs = [[to_doc(image(f"{w}-{i}.jpg", f"a lighthouse {w} {i}"), f"{w}{i}", "s", None) for i in range(50)]
            for w in ("a", "b")]
    first.write([d for d in docs[0] if d is not None])  # both opened before either wrote (a second name
    second.write([d for d in docs[1] if d is not None])  # for the index: another lock file, once)
    first.conn.close()
    second.conn.close()
    conn = open_index(index)
    assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == 101
    assert len(search(conn, "lighthouse", limit=1000)) == 101
    conn.close()
    link = tmp_path / "link.sqlite"
    link.symlink_to(index)
    from filelock import FileLock

    with FileLock(f"{index}.lock"):  # the same lock, whichever name the index is given by
        waiting = subprocess.Popen([*KVL, "index", "--index", str(link), str(tmp_path / "seed.jsonl")],
                                   stderr=subprocess.PIPE, text=True, env=kvl_env())
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(3)  # it waits for the lock held under the index's own name
    assert waiting.wait(60) == 0
