"""Output under hostile conditions: a full disk, /dev/full, a closed pipe, resuming a cut file,
shards of differently spelled names, and untrusted text on a terminal (escaped) or in a pipe (exact)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from dataclasses import replace

import pytest

from kvl_cli.engine.reasoning import Section
from kvl_cli.engine.types import TextEvent
from kvl_cli.environment import Environment
from kvl_cli.errors import InputError
from kvl_cli.media.images import InputRef
from kvl_cli.render import JsonRenderer, LiveRenderer, OutputOptions, PlainRenderer
from kvl_cli.run.batch import in_shard, input_key, select
from kvl_cli.safetext import escape_controls, json_safe, one_line

from .conftest import kvl_env
from .kvlrun import DISK_FULL, KVL, LONG, kvl_proc
from .terminal import RESULT, FakeTTY, in_terminal

HOSTILE = "a\x1b]0;pwned\x07b\x1b[2J\x9b31m\u202eevil\x7f\tok\r\n"
SGR = re.compile("\x1b\\[[0-9;]*m")


# ---- a full disk, /dev/full --------------------------------------------------------------------


@pytest.mark.parametrize("mode", [["--json"], []], ids=["json", "text"])
def test_dev_full_is_exit_7_with_one_line(scripted, photos, mode):
    inputs = photos(3)
    with open("/dev/full", "w") as full:
        r = kvl_proc(scripted, ["caption", *mode, *inputs], stdout=full)
    assert r.returncode == 7
    assert r.stderr == DISK_FULL


def test_dev_full_for_a_command_that_echoes():
    with open("/dev/full", "w") as full:
        r = subprocess.run(KVL + ["models", "--json"], stdout=full, stderr=subprocess.PIPE, text=True,
                           env=kvl_env(), timeout=60)
    assert r.returncode == 7
    assert r.stderr == DISK_FULL


@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
def test_full_filesystem_keeps_whole_lines_and_skip_done_resumes(random_pair, photos, tiny_fs, unbuffered):
    inputs = photos(24)
    # PYTHONUNBUFFERED: Python's own text stream would drop what a short write left over, silently
    out = tiny_fs / "out.jsonl"
    with out.open("w") as f:
        r = kvl_proc(random_pair, ["caption", "--json", *LONG, *inputs], stdout=f,
                     env=kvl_env(random_pair, PYTHONUNBUFFERED=unbuffered))
    assert r.returncode == 7
    assert r.stderr == DISK_FULL
    *whole, cut = out.read_bytes().split(b"\n")
    assert cut == b""  # the part of the record that reached the disk was cut off again
    recs = [json.loads(line) for line in whole]  # every line before the failure is a whole record
    assert 0 < len(recs) < len(inputs)
    assert [rec["input"] for rec in recs] == inputs[:len(recs)] and all(rec["error"] is None for rec in recs)

    # room again: the same command with --skip-done, appended to the same file
    subprocess.run(["mount", "-o", "remount,size=4m", "tmpfs", str(tiny_fs)], check=True)
    with out.open("a") as f:
        r = kvl_proc(random_pair, ["caption", "--json", "--skip-done", str(out), *LONG, *inputs], stdout=f)
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"kvl: skipping {len(recs)} already done in {out}; {len(inputs) - len(recs)} to run\n"
    lines = out.read_text().split("\n")
    assert lines[-1] == ""  # ends with a newline
    assert [json.loads(line)["input"] for line in lines[:-1]] == inputs  # each input once, in order


def test_skip_done_starts_a_new_line_after_a_cut_one(scripted, photos, tmp_path):
    inputs = photos(3)
    out = tmp_path / "out.jsonl"
    first = kvl_proc(scripted, ["caption", "--json", inputs[0]]).stdout
    out.write_text(first + '{"input": "' + inputs[1] + '", "answ')  # killed while writing the second
    with out.open("a") as f:
        r = kvl_proc(scripted, ["caption", "--json", "--skip-done", str(out), *inputs], stdout=f)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines[1] == '{"input": "' + inputs[1] + '", "answ'
    assert [json.loads(x)["input"] for x in lines[:1] + lines[2:]] == inputs


def test_skip_done_writes_no_newline_into_a_pipe_or_a_whole_file(scripted, photos, tmp_path):
    inputs = photos(2)
    out = tmp_path / "out.jsonl"
    out.write_text(kvl_proc(scripted, ["caption", "--json", inputs[0]]).stdout)
    r = kvl_proc(scripted, ["caption", "--json", "--skip-done", str(out), *inputs])
    assert r.returncode == 0 and r.stdout.startswith('{"input": "' + inputs[1])
    with out.open("a") as f:
        kvl_proc(scripted, ["caption", "--json", "--skip-done", str(out), *inputs], stdout=f)
    assert [json.loads(x)["input"] for x in out.read_text().splitlines()] == inputs


# ---- a closed stdout ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [["--json"], []], ids=["json", "text"])
def test_closed_stdout_stops_quietly_with_141(random_pair, photos, mode):
    inputs = photos(24)
    # more output than a pipe holds: kvl is still writing when the reader goes away
    proc = subprocess.Popen(KVL + ["caption", *mode, *LONG, *inputs], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=kvl_env(random_pair))
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # `| head -n 1`
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert err == b""
    assert first.startswith(b'{"input": "' + inputs[0].encode() if mode else b"==> " + inputs[0].encode())


# ---- shards and names ----------------------------------------------------------------------------


def test_a_file_lands_in_one_shard_however_it_is_spelled():
    spellings = ["fx/res/a.png", "./fx/res/a.png", "fx//res/./a.png", "fx/other/../res/a.png"]
    for n in (2, 3, 5, 8):
        shards = {k for k in range(1, n + 1) for name in spellings if in_shard(name, (k, n))}
        assert len(shards) == 1
    assert input_key("https://x.org//a/../b.png") == "https://x.org//a/../b.png"  # URLs as given
    assert input_key("-") == "-"


def test_skip_done_matches_a_differently_spelled_path(tmp_path):
    done = tmp_path / "done.jsonl"
    done.write_text(json.dumps({"input": "./fx/a.png", "finish_reason": "stop", "error": None}) + "\n")
    kept, n_done, _ = select([InputRef("fx/a.png"), InputRef("fx/b.png")], skip_done=str(done), shard=None)
    assert n_done == 1 and [r.label for r in kept] == ["fx/b.png"]


# ---- untrusted text on a terminal --------------------------------------------------------------------


def test_escaping_rules():
    assert escape_controls(HOSTILE) == "a\\x1b]0;pwned\\x07b\\x1b[2J\\x9b31m\\u202eevil\\x7f\tok\r\n"
    assert one_line("bad\nname\t.png\r") == "bad\\nname\\t.png\\r"
    assert one_line("caf\udcc3.png") == "caf\\xc3.png"  # a name's undecodable byte
    assert escape_controls("plain text, ünïcödé, עברית\n") == "plain text, ünïcödé, עברית\n"
    encoded = json_safe(json.dumps({"a": HOSTILE + "\udcff\u2028"}, ensure_ascii=False))
    assert json.loads(encoded) == {"a": HOSTILE + "\udcff\u2028"}
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u202e]", encoded) and len(encoded.splitlines()) == 1


def _answer(renderer, text: str = HOSTILE) -> None:
    renderer.begin("a.png", 1, 1)
    renderer.event(TextEvent(Section.THINKING, text))
    renderer.event(TextEvent(Section.ANSWER, text))
    renderer.end("a.png", replace(RESULT, answer=text, thinking=text), {})
    renderer.close()


def test_plain_output_is_exact_in_a_pipe_and_escaped_on_a_terminal():
    out, err = io.StringIO(), io.StringIO()
    _answer(PlainRenderer(OutputOptions(show_thinking=True), Environment(stdout=out, stderr=err)))
    assert out.getvalue() == HOSTILE + "\n"  # byte-exact
    assert err.getvalue() == "thinking:\n" + HOSTILE + "\n"  # stderr is not a terminal either
    out, err = FakeTTY(), FakeTTY()
    _answer(PlainRenderer(OutputOptions(show_thinking=True), Environment(stdout=out, stderr=err, no_color=True)))
    assert out.getvalue() == escape_controls(HOSTILE) + "\n"
    assert err.getvalue() == "thinking:\n" + escape_controls(HOSTILE) + "\n"


def test_live_view_escapes_and_no_color_means_no_attributes():
    out = FakeTTY()
    _answer(LiveRenderer(OutputOptions(), Environment(stdout=out, stderr=io.StringIO(), no_color=True)))
    text = out.getvalue()
    assert "\\x1b]0;pwned\\x07b" in text and "\\u202eevil" in text
    assert "\x07" not in text and "\x9b" not in text and "\u202e" not in text and "\x1b]" not in text
    assert not SGR.findall(text)  # no colour, no bold, no dim
    out = FakeTTY()
    _answer(LiveRenderer(OutputOptions(), Environment(stdout=out, stderr=io.StringIO(), no_color=False)))
    assert SGR.findall(out.getvalue())  # the same view with colour has them


def test_json_records_are_safe_and_the_same_value():
    out = io.StringIO()
    _answer(JsonRenderer(OutputOptions(json=True), Environment(stdout=out, stderr=io.StringIO())))
    line = out.getvalue()
    assert line.count("\n") == 1 and not re.search("[\x00-\x1f\x7f-\x9f\u202e]", line[:-1])
    assert json.loads(line)["answer"] == HOSTILE


def test_an_error_naming_a_file_is_one_escaped_line(kvl, scripted, tmp_path):
    name = str(tmp_path / "bad\nname\x1b]0;x\x07.png")
    r = kvl("caption", name, *scripted.args())
    assert r.code == 3
    assert r.err == f"kvl: error: {one_line(name)}: file not found (check the path)\n"
    assert r.out == ""


def test_a_usage_error_quoting_a_control_character_is_escaped(kvl):
    r = kvl("caption", "--detail", "x\x1b[2Jy", "a.png")
    assert r.code == 2
    assert r.err.splitlines()[-1] == ("Error: Invalid value for '--detail': 'x\\x1b[2Jy' is not one of "
                                      "'short', 'normal', 'long'.")
    assert "\x1b" not in r.err


def test_the_models_control_bytes_reach_a_pipe_exactly_and_a_terminal_escaped(random_pair, photos):
    (photo,) = photos(1)
    raw = subprocess.run(KVL + ["caption", *LONG, photo], capture_output=True, env=kvl_env(random_pair),
                         timeout=120)
    assert raw.returncode == 0
    answer = raw.stdout.decode("utf-8")
    assert re.search("[\x00-\x08\x0b-\x1f\x7f]", answer)  # the toy model does emit control bytes
    from kvl_cli.cli import main

    out, err = FakeTTY(), io.StringIO()
    env = Environment(stdout=out, stderr=err, stdin=io.BytesIO(b""), stdin_isatty=True, no_color=True)
    with pytest.raises(SystemExit) as exc:
        main(["caption", *LONG, *random_pair.args(), photo], env=env)
    assert exc.value.code == 0, err.getvalue()
    shown = out.getvalue()  # the live view: the answer as Markdown, cursor movements around it
    for ch in set(re.findall("[\x00-\x08\x0b-\x1f\x7f]", answer)):
        assert ch not in shown and escape_controls(ch) in shown


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize("no_color", [True, False], ids=["NO_COLOR", "colour"])
def test_no_color_on_a_real_terminal(scripted, photos, no_color):
    (photo,) = photos(1)
    env = kvl_env(scripted, COLUMNS="100", TERM="xterm-256color")
    if no_color:
        env["NO_COLOR"] = "1"
    code, written = in_terminal(KVL + ["caption", "--verbose", photo], env, 120)
    assert code == 0
    text = written.decode("utf-8", errors="replace")
    assert "thought for" in text
    assert bool(SGR.findall(text)) is not no_color


def test_escape_in_messages_the_renderer_prints():
    err = io.StringIO()
    r = PlainRenderer(OutputOptions(), Environment(stdout=io.StringIO(), stderr=err))
    r.error("x", InputError("a\nb\x1b[1m.png: not an image", hint="give an image"))
    r.warn("w\x1b]0;t\x07")
    assert err.getvalue() == ("kvl: error: a\\nb\\x1b[1m.png: not an image (give an image)\n"
                              "kvl: warning: w\\x1b]0;t\\x07\n")
