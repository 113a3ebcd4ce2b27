"""Names piped on stdin are a list of inputs, whatever bytes they hold; an image piped is the image."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import Pair, make_image


def test_names_that_are_not_utf8_are_read_as_names(kvl, scripted: Pair, tmp_path: Path,
                                                  monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    make_image(tmp_path / "a.png")
    make_image(Path(os.fsdecode(b"c\xffd.png")), color=(0, 0, 200))
    r = kvl("caption", "--json", *scripted.args(), "--no-server", stdin=b"a.png\nc\xffd.png\n")
    assert r.code == 0, r.err
    records = [json.loads(line) for line in r.out.splitlines()]
    assert [rec["input"] for rec in records] == ["a.png", os.fsdecode(b"c\xffd.png")]
    assert all(rec["error"] is None for rec in records)


def test_a_list_and_an_image_on_stdin_are_told_apart(kvl, scripted: Pair, tmp_path: Path) -> None:
    photo = make_image(tmp_path / "p.png")
    r = kvl("caption", "--json", *scripted.args(), "--no-server", stdin=photo.read_bytes())
    assert r.code == 0, r.err
    assert json.loads(r.out)["input"] == "-"
    names = f"# photos\n{photo}\n\nBMW.png\n".encode()  # a name may start like an image's magic bytes
    r = kvl("caption", "--json", *scripted.args(), "--no-server", stdin=names)
    assert r.code == 5
    assert [json.loads(line)["input"] for line in r.out.splitlines()] == [str(photo), "BMW.png"]
    assert "BMW.png: file not found" in r.err
