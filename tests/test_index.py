"""kvl index and kvl search: kvl's own records (scenes of a real video run, captions, .json sidecars,
Ray part folders) into a SQLite FTS5 index, incrementally, damaged lines counted, indexers taking
turns; hits ranked with their file, time range or page, snippets, filters, hostile queries."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from filelock import FileLock

from kvl_cli.index import build, open_index, search
from kvl_cli.index.db import IndexUnavailable, require_fts5
from kvl_cli.synthetic import SCRIPTED_ANSWER

from .clips import write_video
from .conftest import kvl_env
from .kvlrun import KVL, records
from .terminal import in_terminal


def write_jsonl(path: Path, recs: list[dict], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + extra)
    return path


def scene(file: str, n: int, start: float, end: float, caption: str) -> dict:
    return {"file": file, "scene": n, "start": start, "end": end, "caption": caption, "thinking": None}


def image(name: str, answer: str, task: str = "caption", **more: object) -> dict:
    return {"input": name, "task": task, "model": "toy", "answer": answer, "error": None, **more}


def hits(kvl, *args: str) -> list[dict]:
    r = kvl("search", "--json", *args)
    assert r.code == 0, r.err
    return records(r.out)


def test_scene_records_of_a_real_run_are_found_with_file_and_time(kvl, scripted, tmp_path, isolated):
    clip = write_video(tmp_path / "talk.mp4")
    r = kvl("video", "--scenes", "--format", "jsonl", clip, *scripted.args())
    assert r.code == 0, r.err
    scenes = write_jsonl(tmp_path / "scenes.jsonl", records(r.out))
    r = kvl("index", scenes)
    assert r.code == 0, r.err
    assert "3 new records" in r.err and str(isolated / "kvl" / "index.sqlite") in r.err  # kvl's data folder
    found = hits(kvl, "answer")
    assert sorted((h["file"], h["scene"], h["start"], h["end"]) for h in found) == [
        (str(clip), 1, 0.0, 2.0), (str(clip), 2, 2.0, 4.0), (str(clip), 3, 4.0, 6.0)]
    assert all(h["text"] == SCRIPTED_ANSWER and h["snippet"] == "An **answer**." for h in found)
    assert {h["task"] for h in found} == {"video"} and {"page", "score"} <= set(found[0])
    text = kvl("search", "answer").out
    assert f"{clip} @ 00:00:02–00:00:04  (video)\n  An answer.\n" in text  # no marks in a pipe


def test_captions_and_their_json_sidecars_are_one_entry_each(kvl, scripted, photos, tmp_path):
    many = photos(3)
    r = kvl("caption", *many, *scripted.args(), "--json", "--sidecar", "json")
    caps = write_jsonl(tmp_path / "caps.jsonl", records(r.out))
    (Path(many[0]).parent / "p00.png.json").write_text('{"title": "p00.png", "photoTakenTime": {}}')  # Takeout's
    r = kvl("index", caps, Path(many[0]).parent)  # the JSON Lines and the folder of .json sidecars
    assert r.code == 0, r.err
    assert "1 .json file not kvl's passed over" in r.err
    assert "3 new records" in r.err  # a sidecar's record is the same input's: it replaces the line (or is the same)
    found = hits(kvl, "answer", "--task", "caption")
    assert sorted(h["file"] for h in found) == many
    assert hits(kvl, "answer", "--task", "ocr") == []


def test_indexing_is_incremental(kvl, tmp_path):
    src = write_jsonl(tmp_path / "caps.jsonl", [image("a.jpg", "a red kayak on a lake"),
                                                image("b.jpg", "a whiteboard with a diagram")])
    assert "2 new records, 0 replaced, 0 already there" in kvl("index", src).err
    again = kvl("index", src)
    assert again.code == 0 and "1 unchanged (not read)" in again.err and "0 new records" in again.err
    # a later run appended to the file: one new record, one input captioned again (the later record replaces it)
    write_jsonl(src, [image("a.jpg", "a red kayak on a lake"), image("b.jpg", "a whiteboard with a diagram"),
                      image("c.jpg", "a green tent"), image("b.jpg", "a chalkboard with equations")])
    os.utime(src, (time.time() + 3600, time.time() + 3600))
    r = kvl("index", src)
    assert "1 new record, 1 replaced, 1 already there" in r.err
    assert hits(kvl, "whiteboard") == []
    assert [h["file"] for h in hits(kvl, "chalkboard")] == [str(tmp_path / "b.jpg")]  # whole: beside the records
    assert len(hits(kvl, "a")) == 3


def test_damaged_lines_are_skipped_and_counted(kvl, tmp_path):
    good = [image("a.jpg", "a lighthouse at dusk"), scene("v.mp4", 1, 0, 5, "a lighthouse in fog")]
    src = write_jsonl(tmp_path / "caps.jsonl", good[:1],
                      extra='{"input": "cut.jpg", "answ\nnot json\n[1, 2]\n{"no": "file"}\n' + "[" * 100_000 + "\n"
                      + json.dumps(good[1]) + "\n" + json.dumps({"input": "x.jpg", "error": "boom", "exit_code": 3})
                      + "\n")
    r = kvl("index", src)
    assert r.code == 5
    assert f"5 damaged lines skipped (the first: {src}:2)" in r.err and "1 record of failed inputs left out" in r.err
    assert sorted(h["file"] for h in hits(kvl, "lighthouse")) == [str(tmp_path / "a.jpg"), str(tmp_path / "v.mp4")]
    # a .json sidecar cut short (the run killed while writing it) is damage too
    folder = tmp_path / "sidecars"
    folder.mkdir()
    (folder / "b.json").write_text(json.dumps(image("b.jpg", "a lighthouse keeper")))
    (folder / "c.json").write_text(json.dumps(image("c.jpg", "a lighthouse"))[:30])
    r = kvl("index", folder)
    assert r.code == 5 and f"1 damaged line skipped (the first: {folder / 'c.json'})" in r.err
    assert str(folder / "b.jpg") in {h["file"] for h in hits(kvl, "keeper")}


def test_an_unreadable_file_is_counted_and_the_others_indexed(kvl, tmp_path):
    folder = tmp_path / "recs"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [image("a.jpg", "a lighthouse")])
    (folder / "b.jsonl").symlink_to(tmp_path / "gone.jsonl")
    r = kvl("index", folder)
    assert r.code == 5 and "1 damaged line skipped" in r.err and "b.jsonl" in r.err
    assert [h["file"] for h in hits(kvl, "lighthouse")] == [str(folder / "a.jpg")]


def test_ray_part_folders_and_stdin(kvl, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_jsonl(out / "part-1.jsonl", [scene("s3://b/v1.mp4", 1, 60.5, 72.9, "a dog on a beach")])
    write_jsonl(out / "part-2.jsonl", [image("s3://b/p.jpg", "a dog in snow")])
    (out / ".kvl-round").write_text("closed")
    write_jsonl(out / ".part-3.jsonl.tmp.jsonl", [image("half.jpg", "a dog half written")])
    assert kvl("index", out).code == 0
    found = hits(kvl, "dog")
    assert sorted(h["file"] for h in found) == ["s3://b/p.jpg", "s3://b/v1.mp4"]
    assert "s3://b/v1.mp4 @ 00:01:00–00:01:12  (video)" in kvl("search", "beach").out
    piped = json.dumps(image("doc.pdf", "INVOICE\n\nan invoice total\x1b[2J", task="ocr", page=3)) + "\n"
    assert kvl("index", "-", stdin=piped.encode()).code == 0
    assert "doc.pdf p. 3  (ocr)\n  INVOICE an invoice total\\x1b[2J\n" in kvl("search", "invoice").out
    assert hits(kvl, "invoice")[0]["page"] == 3


def test_search_ranks_filters_and_limits(kvl, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "r.jsonl", [
        image("talks/a.jpg", "a whiteboard"),
        image("talks/b.jpg", "a whiteboard and a whiteboard diagram on a whiteboard wall"),
        image("other/c.jpg", "someone near a whiteboard in a long sentence with many other words around it"),
        image("talks/d.jpg", "whiteboard markers in a cup on an office desk by the window", task="ocr"),
    ])
    assert kvl("index", src).code == 0
    found = hits(kvl, "whiteboard")
    found = [{**h, "file": os.path.relpath(h["file"], tmp_path)} for h in found]
    assert len(found) == 4 and found[0]["file"] == "talks/b.jpg"
    assert [h["score"] for h in found] == sorted(h["score"] for h in found)  # BM25: lower is better
    assert len(hits(kvl, "whiteboard", "--limit", "2")) == 2
    talks = str(tmp_path / "talks")
    assert {h["file"] for h in hits(kvl, "whiteboard", "--path", "talks/*")} == {f"{talks}/a.jpg", f"{talks}/b.jpg",
                                                                                 f"{talks}/d.jpg"}
    assert len(hits(kvl, "whiteboard", "--path", f"{talks}/*")) == 3  # a whole path's GLOB too
    assert hits(kvl, "whiteboard", "--path", "alks/*") == []  # a relative GLOB matches whole folder names
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    assert len(hits(kvl, "whiteboard", "--path", "../talks/*")) == 3  # from the current folder
    assert len(hits(kvl, "whiteboard", "--path", "./c.jpg")) == 1
    assert [h["file"] for h in hits(kvl, "whiteboard", "--task", "ocr")] == [f"{talks}/d.jpg"]
    assert [h["file"] for h in hits(kvl, '"whiteboard diagram"')] == [f"{talks}/b.jpg"]
    assert [h["file"] for h in hits(kvl, "diag*")] == [f"{talks}/b.jpg"]
    assert {h["file"] for h in hits(kvl, "diagram OR sentence")} == {f"{talks}/b.jpg", str(tmp_path / "other/c.jpg")}
    r = kvl("search", "zebra")
    assert r.code == 0 and r.out == "" and "no records match" in r.err


def test_a_very_common_word_is_ranked_among_its_newest_matches(tmp_path, monkeypatch):
    index = tmp_path / "i.sqlite"
    src = write_jsonl(tmp_path / "r.jsonl", [image("old.jpg", "kayak kayak kayak")] +
                      [image(f"new{i}.jpg", f"a kayak and {i} other things on a long shore") for i in range(5)])
    build([str(src)], index, sys.stderr)
    conn = open_index(index)
    assert search(conn, "kayak", limit=1)[0].file == str(tmp_path / "old.jpg")  # the best by BM25
    monkeypatch.setattr(importlib.import_module("kvl_cli.index.search"), "RANK_WINDOW", 5)
    found = [h.file for h in search(conn, "kayak", limit=10)]
    assert len(found) == 5 and str(tmp_path / "old.jpg") not in found  # past the window: the newest five are ranked
    conn.close()


@pytest.mark.parametrize("query", ['"', '"unclosed phrase', "NEAR(a b)", "a AND", "OR", "-x", "a:b", "^start",
                                   "(a", "a)", "*", "a*b", "col:whiteboard", "NOT", '""', "a + b", "{a b}"])
def test_queries_with_fts5_syntax_never_crash(kvl, tmp_path, query):
    assert kvl("index", write_jsonl(tmp_path / "r.jsonl", [image("a.jpg", "a whiteboard (NEAR) col:x")])).code == 0
    r = kvl("search", "--", query)
    assert r.code in (0, 2) and "Traceback" not in r.err and "internal error" not in r.err
    if r.code == 2:
        assert r.err.startswith("kvl: error: ") and len(r.err.strip().splitlines()) == 1


def test_search_errors(kvl, tmp_path):
    r = kvl("search", "x", "--index", tmp_path / "none.sqlite")
    assert r.code == 3 and "no index at" in r.err and "kvl index" in r.err
    (tmp_path / "other.sqlite").write_bytes(b"not a database at all" * 100)
    r = kvl("search", "x", "--index", tmp_path / "other.sqlite")
    assert r.code == 3 and "is not a kvl index" in r.err
    r = kvl("index", tmp_path / "missing.jsonl")
    assert r.code == 3 and "not found" in r.err


def test_matched_words_are_bold_on_a_terminal(kvl, tmp_path):
    index = tmp_path / "i.sqlite"
    assert kvl("index", "--index", index, write_jsonl(tmp_path / "r.jsonl", [image("a.jpg", "a red kayak")])).code == 0
    code, shown = in_terminal([*KVL, "search", "--index", str(index), "kayak"], kvl_env(), timeout=60)
    assert code == 0 and b"\x1b[1mkayak\x1b[0m" in shown
    code, shown = in_terminal([*KVL, "search", "--index", str(index), "kayak"], kvl_env(NO_COLOR="1"), timeout=60)
    assert code == 0 and b"\x1b[" not in shown and b"a red kayak" in shown


def test_two_indexers_take_turns(tmp_path):
    index = tmp_path / "i.sqlite"
    files = [write_jsonl(tmp_path / f"r{k}.jsonl", [image(f"{k}-{i}.jpg", f"photo number {i} of set {k}")
                                                    for i in range(3000)]) for k in range(2)]
    lock = FileLock(f"{index}.lock")
    with lock:  # an indexer at work: the next one waits for it, and says so
        waiting = subprocess.Popen([*KVL, "index", "--index", str(index), str(files[0])], stderr=subprocess.PIPE,
                                   text=True, env=kvl_env())
        time.sleep(1.5)
        assert waiting.poll() is None
    assert waiting.wait(60) == 0
    assert "waiting for another kvl index" in (waiting.stderr.read() if waiting.stderr else "")
    both = [subprocess.Popen([*KVL, "index", "--index", str(index), str(f)], stderr=subprocess.PIPE, text=True,
                             env=kvl_env()) for f in [files[1], files[1]]]
    assert [p.wait(60) for p in both] == [0, 0]
    conn = open_index(index)
    assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == 6000
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(search(conn, "set", limit=10_000)) == 6000
    conn.close()


def test_without_fts5_the_exit_is_4_with_what_to_install():
    class NoFts5:
        def execute(self, sql: str) -> None:
            raise sqlite.OperationalError("no such module: fts5")

        def close(self) -> None:
            pass

    import sqlite3 as sqlite

    fake = types.SimpleNamespace(connect=lambda _: NoFts5(), OperationalError=sqlite.OperationalError,
                                 sqlite_version="3.7.0")
    with pytest.raises(IndexUnavailable) as exc:
        require_fts5(fake)  # type: ignore[arg-type]
    assert exc.value.exit_code == 4 and "3.7.0" in str(exc.value) and "FTS5" in str(exc.value)
    require_fts5(sqlite)  # this Python's has it


def test_many_records_index_and_search_quickly(tmp_path):
    """A floor to catch what scales badly; the rates themselves are measured in benchmarks/index_bench.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.index_bench import queries, write_records

    paths = write_records(tmp_path / "recs", 50_000, files=2)
    t = time.perf_counter()
    tally = build([str(p) for p in paths], tmp_path / "i.sqlite", sys.stderr)
    rate = tally.added / (time.perf_counter() - t)
    assert tally.added == 50_000 and rate > 5_000, rate
    conn = open_index(tmp_path / "i.sqlite")
    took = []
    for q in queries(40):
        t = time.perf_counter()
        search(conn, q)
        took.append(time.perf_counter() - t)
    conn.close()
    assert sorted(took)[int(0.95 * len(took))] < 0.25, took
