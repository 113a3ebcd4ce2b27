"""The config file, environment flags, the Environment object and the ordered emitter (#10)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kvl_cli.engine.reasoning import Section
from kvl_cli.engine.types import FinishReason, Phase, PhaseEvent, Result, TextEvent, Timings, Tokens
from kvl_cli.environment import Environment, env_flag, parse_flag
from kvl_cli.errors import InputError, UsageError
from kvl_cli.run.ordered import OrderedEmitter


def write_config(home: Path, text: str) -> Path:
    path = home / "kvl" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one(out: str) -> dict:
    (line,) = [x for x in out.splitlines() if x.strip()]
    return json.loads(line)


# ---- the config file: flag > environment > config > built-in ---------------------------------------


def test_config_sets_defaults_globally_and_per_command(kvl, scripted, images, isolated):
    write_config(isolated, 'temperature = 0.25\nimage-max-tokens = 64\n\n[caption]\ndetail = "short"\n')
    rec = one(kvl("caption", images["jpg"], *scripted.args(), "--json").out)
    assert rec["detail"] == "short" and rec["temperature"] == 0.25 and rec["image_max_tokens"] == 64
    # a flag beats the file
    rec = one(kvl("caption", images["jpg"], *scripted.args(), "--json", "--detail", "long",
                  "--temperature", "0.5").out)
    assert rec["detail"] == "long" and rec["temperature"] == 0.5
    # the [caption] table is for caption only; the global temperature still applies to ocr
    rec = one(kvl("ocr", images["jpg"], *scripted.args(), "--json").out)
    assert rec["temperature"] == 0.25 and "detail" not in rec


def test_environment_beats_config_and_flag_beats_environment(kvl, scripted, random_pair, images, isolated,
                                                             monkeypatch):
    write_config(isolated, f'model = "{random_pair.model}"\nmmproj = "{random_pair.mmproj}"\n')
    rec = one(kvl("caption", images["jpg"], "--json", "--max-tokens", "3").out)
    assert rec["model"] == random_pair.model.name  # from the file
    monkeypatch.setenv("KVL_MODEL", str(scripted.model))
    monkeypatch.setenv("KVL_MMPROJ", str(scripted.mmproj))
    rec = one(kvl("caption", images["jpg"], "--json").out)
    assert rec["model"] == scripted.model.name and rec["answer"] == "An answer."  # the environment wins
    rec = one(kvl("caption", images["jpg"], "--json", "--max-tokens", "3", *random_pair.args()).out)
    assert rec["model"] == random_pair.model.name  # the flag wins


@pytest.mark.parametrize("text, words", [
    ("threads = 'many'\n", ["threads", "'many'"]),
    ("[caption]\nfrobnicate = 1\n", ["[caption] frobnicate", "no such option"]),
    ("frobnicate = 1\n", ["frobnicate", "no kvl command"]),
    ("[captoin]\ndetail = 'short'\n", ["[captoin]", "not a kvl command"]),
    ("[caption]\ndetail = 'huge'\n", ["[caption] detail", "'huge'"]),
    ("temperature = [\n", ["not valid TOML"]),
])
def test_a_bad_config_file_is_one_error_naming_the_key(kvl, scripted, images, isolated, text, words):
    path = write_config(isolated, text)
    r = kvl("caption", images["jpg"], *scripted.args())
    assert r.code == 2 and r.out == ""
    (line,) = r.err.splitlines()
    assert line.startswith(f"kvl: error: {path}") and all(w in line for w in words), line
    assert "Traceback" not in r.err


def test_doctor_shows_where_settings_come_from(kvl, isolated, monkeypatch):
    path = write_config(isolated, "threads = 3\n[ocr]\nformat = 'markdown'\n")
    monkeypatch.setenv("KVL_REPACK", "TRUE")
    rep = json.loads(kvl("doctor", "--json").out)
    assert rep["repack"] is True and rep["paths"]["config"] == str(path)
    got = {(s["key"], s["command"]): (s["value"], s["source"]) for s in rep["settings"]}
    assert got[("threads", "*")] == (3, f"config {path}")
    assert got[("format", "ocr")] == ("markdown", f"config {path}")
    assert got[("repack", "*")] == ("TRUE", "env KVL_REPACK")


# ---- one parser for yes/no environment variables ------------------------------------------------------


@pytest.mark.parametrize("value, want", [("1", True), ("TRUE", True), ("yes", True), ("On", True),
                                         ("0", False), ("false", False), ("NO", False), ("off", False), ("", False)])
def test_flags_parse_the_same_everywhere(value, want, monkeypatch):
    assert parse_flag("KVL_X", value) is want
    monkeypatch.setenv("KVL_X", value)
    assert env_flag("KVL_X") is want


def test_a_flag_that_is_neither_yes_nor_no_is_a_usage_error(kvl, scripted, images, monkeypatch):
    with pytest.raises(UsageError, match="KVL_X"):
        parse_flag("KVL_X", "maybe")
    monkeypatch.setenv("KVL_REPACK", "maybe")
    r = kvl("caption", images["jpg"], *scripted.args())
    assert r.code == 2 and "KVL_REPACK='maybe' is not a yes/no value" in r.err


def test_repack_env_agrees_with_doctor(kvl, monkeypatch):
    for value, want in (("TRUE", True), ("off", False)):
        monkeypatch.setenv("KVL_REPACK", value)
        assert json.loads(kvl("doctor", "--json").out)["repack"] is want


# ---- the Environment: streams passed down, stdin read once ----------------------------------------------


def test_stdin_is_read_once_whoever_asks():
    env = Environment(stdin=io.BytesIO(b"what is this?\n"), stdin_isatty=False)
    assert env.read_stdin_text() == "what is this?\n"
    assert env.read_stdin() == b"what is this?\n"  # the second reader gets the same bytes


def test_question_from_stdin_through_the_environment(kvl, scripted, images):
    r = kvl("ask", images["jpg"], *scripted.args(), "--json", stdin=b"How many?\n")
    assert r.code == 0, r.err
    assert one(r.out)["question"] == "How many?"


# ---- the ordered emitter -----------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple] = []

    def begin(self, pos: int) -> None:
        self.log.append(("begin", pos))

    def event(self, pos: int, ev) -> None:  # type: ignore[no-untyped-def]
        self.log.append(("event", pos, getattr(ev, "text", None)))

    def progress(self, pos: int, ev) -> None:  # type: ignore[no-untyped-def]
        self.log.append(("progress", pos))

    def done(self, pos: int, outcome) -> None:  # type: ignore[no-untyped-def]
        self.log.append(("done", pos, type(outcome).__name__))


def result() -> Result:
    return Result("a", "", FinishReason.STOP, Tokens(), Timings(), [])


def test_emitter_streams_the_head_and_replays_the_rest_in_order():
    rec = Recorder()
    em = OrderedEmitter(rec)
    em.event(0, TextEvent(Section.ANSWER, "x"))  # the head: live
    em.event(1, TextEvent(Section.ANSWER, "y"))  # buffered
    em.event(2, PhaseEvent(Phase.ENCODE))  # not the head: progress only
    em.settle(2, InputError("broken"))  # finished out of order: waits
    em.settle(1, result())
    assert rec.log == [("begin", 0), ("event", 0, "x"), ("progress", 2)]
    em.settle(0, result())
    assert rec.log[3:] == [("done", 0, "Result"), ("begin", 1), ("event", 1, "y"), ("done", 1, "Result"),
                           ("done", 2, "InputError")]


def test_emitter_skips_and_flushes_what_finished():
    rec = Recorder()
    em = OrderedEmitter(rec)
    em.settle(0, None)  # nothing to write (a scene without frames)
    em.event(1, TextEvent(Section.ANSWER, "live"))
    em.settle(3, result())  # 2 never finishes (interrupted)
    em.flush()
    assert rec.log == [("begin", 1), ("event", 1, "live"), ("begin", 3), ("done", 3, "Result")]
