"""The library face (``kvl_cli.open``): the README's example as written, and each call on the real
engine with the toy pairs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kvl_cli
from kvl_cli.engine.types import DoneEvent, FinishReason, PhaseEvent, TextEvent
from kvl_cli.errors import ExitCode
from kvl_cli.run.videos import VideoArgs
from kvl_cli.synthetic import SCRIPTED_ANSWER, SCRIPTED_THINKING
from tests.conftest import REPO, Pair, make_image


def python_block(markdown: Path) -> str:
    """The first ```python block of ``markdown``."""
    match = re.search(r"```python\n(.*?)```", markdown.read_text(encoding="utf-8"), re.S)
    assert match, f"no python example in {markdown}"
    return match.group(1)


def test_the_readme_example_runs_as_written(scripted: Pair, tmp_path: Path) -> None:
    """The README's Python lines, unchanged, in a fresh process, in a folder holding the files they name."""
    code = python_block(REPO / "README.md")
    assert code == python_block(REPO / "docs" / "python.md")  # one example, the same on both pages
    shutil.copy(scripted.model, tmp_path / "model.gguf")
    shutil.copy(scripted.mmproj, tmp_path / "mmproj.gguf")
    make_image(tmp_path / "photo.jpg")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"photo.jpg {SCRIPTED_ANSWER}"
    assert lines[1].startswith("missing.jpg failed: missing.jpg: file not found")
    answer, data, generated = lines[2].split()
    assert answer in ("yes", "no") and data == answer and int(generated) > 0
    streamed = lines[3:-1]
    assert "".join(x.split(" ", 1)[1] for x in streamed if x.startswith("thinking ")).strip() == SCRIPTED_THINKING
    assert "".join(x.split(" ", 1)[1] for x in streamed if x.startswith("answer ")).strip() == SCRIPTED_ANSWER
    assert lines[-1] == SCRIPTED_ANSWER  # ocr
    assert "Traceback" not in r.stderr


def test_caption_and_ocr_give_an_answer_per_image_in_order(scripted: Pair, tmp_path: Path) -> None:
    a, b = make_image(tmp_path / "a.png"), make_image(tmp_path / "b.png", color=(0, 0, 200))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with kvl_cli.open(scripted.model, scripted.mmproj, threads=1) as kvl:
        answers = kvl.caption([a, tmp_path / "bad.jpg", b], detail="long", seed=1)
        assert [x.input for x in answers] == [str(a), str(tmp_path / "bad.jpg"), str(b)]
        assert [x.ok for x in answers] == [True, False, True]
        assert answers[0].answer == SCRIPTED_ANSWER and answers[0].thinking == SCRIPTED_THINKING
        assert answers[1].error is not None and answers[1].error.exit_code is ExitCode.INPUT
        assert answers[2].meta["detail"] == "long" and answers[2].meta["task"] == "caption"
        assert answers[0].result is not None and answers[0].result.finish_reason is FinishReason.STOP
        engine = kvl._engine
        ocr = kvl.ocr([a], format="markdown")
        assert ocr[0].answer == SCRIPTED_ANSWER and ocr[0].meta["format"] == "markdown"
        assert kvl._engine is not engine  # OCR's larger image budget: the engine was loaded again
    assert kvl._engine is None  # the block's end freed it


def test_ask_with_a_schema_gives_its_data(random_pair: Pair, tmp_path: Path) -> None:
    photo = make_image(tmp_path / "p.png")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    with kvl_cli.open(random_pair.model, random_pair.mmproj, threads=1) as kvl:
        a = kvl.ask([photo], "Is it fine?", schema=schema, temperature=0, no_think=True, max_tokens=64)
    assert a.ok, a.error
    assert isinstance(a.data, dict) and isinstance(a.data["ok"], bool)
    assert json.loads(a.answer) == a.data


def test_ask_streams_events_and_refuses_a_missing_image(scripted: Pair, tmp_path: Path) -> None:
    photo = make_image(tmp_path / "p.png")
    with kvl_cli.open(scripted.model, scripted.mmproj, threads=1) as kvl:
        events = list(kvl.ask([photo], "What?", stream=True))
        with pytest.raises(kvl_cli.KvlError) as exc:
            list(kvl.ask([tmp_path / "nope.png"], "What?", stream=True))
    assert any(isinstance(e, PhaseEvent) for e in events)
    assert "".join(e.text for e in events if isinstance(e, TextEvent) and e.section.value == "answer") \
        == SCRIPTED_ANSWER
    assert isinstance(events[-1], DoneEvent) and events[-1].result.answer == SCRIPTED_ANSWER
    assert "file not found" in str(exc.value)


def test_unknown_options_are_refused(scripted: Pair, tmp_path: Path) -> None:
    with kvl_cli.open(scripted.model, scripted.mmproj) as kvl, pytest.raises(TypeError, match="temprature"):
        kvl.caption([make_image(tmp_path / "p.png")], temprature=0.2)


def test_video_summary_and_scenes(scripted: Pair, tmp_path: Path) -> None:
    from tests.clips import write_clips

    clip = write_clips(tmp_path)["brightness"]  # three shots: two cuts
    with kvl_cli.open(scripted.model, scripted.mmproj, threads=1) as kvl:
        summary = kvl.video(clip, args=VideoArgs(max_frames=3))
        scenes = kvl.video(clip, scenes=True, parallel=1)
    assert isinstance(summary, kvl_cli.Answer) and summary.answer == SCRIPTED_ANSWER
    assert len(summary.meta["frames"]) == 3
    assert isinstance(scenes, list) and [s["scene"] for s in scenes] == [1, 2, 3]
    assert all(s["caption"] == SCRIPTED_ANSWER and s["file"] == str(clip) for s in scenes)
    assert scenes[0]["start"] == 0 and scenes[-1]["end"] == pytest.approx(6.0, abs=0.1)


def test_ask_about_a_video(scripted: Pair, tmp_path: Path) -> None:
    from tests.clips import write_clips

    clip = write_clips(tmp_path)["hue"]
    with kvl_cli.open(scripted.model, scripted.mmproj, threads=1) as kvl:
        a = kvl.ask([clip], "What happens?")
    assert isinstance(a, kvl_cli.Answer) and a.ok and a.answer == SCRIPTED_ANSWER
    assert a.meta["task"] == "ask" and a.meta["question"] == "What happens?" and len(a.meta["frames"]) == 16
