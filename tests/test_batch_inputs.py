"""Choosing the inputs of a batch: paths from a file (--from) or from stdin, an image on stdin, resuming
with --skip-done, splitting with --shard."""

from __future__ import annotations

import json
from pathlib import Path

from kvl_cli.run.batch import in_shard

from .kvlrun import records


def test_inputs_from_a_file_and_from_stdin(kvl, scripted, photos, tmp_path):
    many = photos(6)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my photos\n{many[0]}\n\n{many[1]}\n")
    r = kvl("caption", "--from", listing, many[2], *scripted.args(), "--json")
    assert r.code == 0, r.err
    assert [x["input"] for x in records(r.out)] == [str(many[2]), str(many[0]), str(many[1])]
    r = kvl("caption", "--from", "-", *scripted.args(), "--json", stdin=f"{many[3]}\n{many[4]}\n".encode())
    assert [x["input"] for x in records(r.out)] == [str(many[3]), str(many[4])]
    r = kvl("caption", "--from", tmp_path / "nope.txt", *scripted.args())
    assert r.code == 3 and "--from" in r.err and "not found" in r.err


def test_skip_done_resumes_an_interrupted_batch(kvl, scripted, photos, tmp_path):
    many = photos(6)
    out = tmp_path / "out.jsonl"
    first = kvl("caption", *many[:2], *scripted.args(), "--json")
    # the earlier run was killed while writing its third line
    out.write_text(first.out + '{"input": "' + str(many[2]) + '", "answ')
    r = kvl("caption", *many, *scripted.args(), "--json", "--skip-done", out)
    assert r.code == 0, r.err
    assert [x["input"] for x in records(r.out)] == [str(p) for p in many[2:]]
    assert "skipping 2 already done" in r.err
    # failed inputs are not "done": they run again
    out.write_text(json.dumps({"input": str(many[0]), "error": "boom", "exit_code": 3}) + "\n")
    r = kvl("caption", many[0], *scripted.args(), "--json", "--skip-done", out)
    assert [x["input"] for x in records(r.out)] == [str(many[0])]
    # everything done: nothing to do, success
    done = tmp_path / "done.jsonl"
    done.write_text(kvl("caption", many[0], *scripted.args(), "--json").out)
    r = kvl("caption", many[0], *scripted.args(), "--json", "--skip-done", done)
    assert r.code == 0 and r.out == ""


def test_shards_cover_every_input_once(kvl, scripted, photos):
    many = photos(6)
    seen: list[str] = []
    for k in (1, 2, 3):
        r = kvl("caption", *many, *scripted.args(), "--json", "--shard", f"{k}/3")
        assert r.code == 0, r.err
        seen += [x["input"] for x in records(r.out)]
    assert sorted(seen) == sorted(str(p) for p in many)
    # the split depends on names only, not on their order
    assert [in_shard(str(p), (1, 3)) for p in many] == [in_shard(str(p), (1, 3)) for p in many[::-1]][::-1]
    for bad in ("0/3", "4/3", "x", "1/0"):
        r = kvl("caption", *many, *scripted.args(), "--shard", bad)
        assert r.code == 2 and "--shard" in r.err


def test_paths_or_an_image_on_stdin_without_arguments(kvl, scripted, photos):
    many = photos(6)
    r = kvl("caption", *scripted.args(), "--json", stdin=f"{many[0]}\n# skip me\n{many[1]}\n".encode())
    assert r.code == 0, r.err
    assert [x["input"] for x in records(r.out)] == [str(many[0]), str(many[1])]
    r = kvl("ocr", *scripted.args(), "--json", stdin=Path(many[2]).read_bytes())  # the image itself
    assert r.code == 0, r.err
    assert [x["input"] for x in records(r.out)] == ["-"]
