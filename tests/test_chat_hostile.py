"""kvl chat against a hostile user: signals in a pipe, /save onto files it must not clobber, damaged
or hostile --resume files, Ctrl-C while media loads."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from kvl_cli.engine import stop
from kvl_cli.synthetic import SCRIPTED_ANSWER

from .conftest import kvl_env
from .kvlrun import records

KVL = [sys.executable, "-m", "kvl_cli", "chat"]
TALKATIVE = ["--no-think", "--temperature", "0", "--max-tokens", "3000", "--image-max-tokens", "16"]
SIGNALS = [(signal.SIGTERM, 143, "kvl: terminated"), (signal.SIGINT, 130, "kvl: interrupted")]


@pytest.fixture(autouse=True)
def fresh_stop():  # type: ignore[no-untyped-def]
    stop.reset()
    yield
    stop.reset()


def chat(kvl, pair, lines: list[str], *args: str):  # type: ignore[no-untyped-def]
    return kvl("chat", *args, *pair.args(), stdin=("\n".join(lines) + "\n").encode())


def popen(pair, *args: str) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    return subprocess.Popen([*KVL, *args, *pair.args()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=kvl_env(pair))


def finish(proc: subprocess.Popen[bytes], t0: float) -> tuple[int, str, str]:
    """Its exit code and what it wrote after the signal; stdin stays open (a chat still waiting fails)."""
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"kvl chat went on after the signal: {err.decode()[-500:]}") from None
    assert time.monotonic() - t0 < 10  # a toy model: the stop is at once
    return proc.returncode, out.decode(), err.decode()


# ---- signals in a pipe: the chat ends with the signal's code, what was said kept ----------------------


@pytest.mark.parametrize(("sig", "code", "line"), SIGNALS, ids=["TERM", "INT"])
def test_a_signal_mid_answer_in_a_pipe_ends_the_chat(random_pair, images, sig, code, line):
    proc = popen(random_pair, str(images["jpg"]), *TALKATIVE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"Tell me everything.\nAnd then?\n")
    proc.stdin.flush()
    said = proc.stdout.read(8)  # the first answer is streaming
    t0 = time.monotonic()
    proc.send_signal(sig)
    code_, out, err = finish(proc, t0)
    assert code_ == code, err
    assert err.endswith(line + "\n")
    assert "stopped; what was said is kept" not in err  # not taken as a stopped answer with the chat going on
    assert len(said + out.encode()) < 3000  # the second question was never answered


@pytest.mark.parametrize(("sig", "code", "line"), SIGNALS, ids=["TERM", "INT"])
def test_a_signal_while_the_chat_waits_for_a_line_ends_it(scripted, images, sig, code, line):
    proc = popen(scripted, str(images["jpg"]), "--json")
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"What is it?\n")
    proc.stdin.flush()
    first = json.loads(proc.stdout.readline())  # answered; now it waits for the next line
    assert first["answer"] == SCRIPTED_ANSWER
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(sig)
    code_, out, err = finish(proc, t0)
    assert code_ == code, err
    assert err.endswith(line + "\n") and out == ""


# ---- /save: never over a file that is not a saved conversation ------------------------------------------


def test_save_never_writes_over_an_image_or_another_file(kvl, scripted, images, tmp_path):
    photo, notes = images["jpg"], tmp_path / "notes.txt"
    picture = photo.read_bytes()
    notes.write_text("my notes\n")
    saved, md = tmp_path / "talk.json", tmp_path / "talk.md"
    r = chat(kvl, scripted, ["What is it?", f"/save {photo}", f"/save {notes}", f"/save {tmp_path}", "/save /dev/full",
                             f"/save {saved}", f"/save {md}", "And then?", f"/save {saved}", f"/save {md}"],
             str(photo))
    assert r.code == 0, r.err
    assert photo.read_bytes() == picture and notes.read_text() == "my notes\n"  # both untouched
    errors = [line for line in r.err.splitlines() if line.startswith("kvl: error:")]
    assert errors == [
        f"kvl: error: {photo}: exists and is not a conversation kvl saved: not written over "
        "(give /save a new name, or remove the file first)",
        f"kvl: error: {notes}: exists and is not a conversation kvl saved: not written over "
        "(give /save a new name, or remove the file first)",
        f"kvl: error: {tmp_path}: not a file: not written over (give /save a file name)",
        "kvl: error: /dev/full: not a file: not written over (give /save a file name)",
    ]
    # a conversation kvl saved is written over: the second /save has both turns
    assert [t["question"] for t in json.loads(saved.read_text())["turns"]] == ["What is it?", "And then?"]
    assert md.read_text().count("## Turn") == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("talk")) == ["talk.json", "talk.md"]


# ---- --resume of damaged or hostile files ------------------------------------------------------------------


def write_json(path, data) -> str:  # type: ignore[no-untyped-def]
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_resume_of_wrong_types_leaves_the_damaged_parts_out(kvl, scripted, tmp_path):
    saved = write_json(tmp_path / "odd.json", {
        "kvl_chat": 1, "system": 5, "think_budget": "lots", "pending": {"a": 1},
        "turns": [{"question": ["a"], "answer": {"x": 1}}, 7, None,
                  {"question": "Kept?", "answer": "Yes.", "thinking": 3, "media": "x", "finish_reason": None}]})
    r = kvl("chat", "--resume", saved, "--json", *scripted.args(), stdin=b"And then?\n")
    assert r.code == 0, r.err
    assert "internal error" not in r.err
    warnings = [line for line in r.err.splitlines() if line.startswith("kvl: warning:")]
    assert warnings == [
        f"kvl: warning: {saved}: system: not text, left out",
        f"kvl: warning: {saved}: think_budget 'lots': not on (-1), off (0) or a number of tokens, left out",
        f"kvl: warning: {saved}: turns 1, 2, 3 left out: not a question and its answer",
    ]
    (rec,) = records(r.out)
    assert rec["turn"] == 2 and rec["answer"] == SCRIPTED_ANSWER and rec["thinking"]  # the file's budget left out


@pytest.mark.parametrize("budget", [-7, 1.5, True])
def test_resume_of_a_think_budget_that_is_no_budget_leaves_it_out(kvl, scripted, tmp_path, budget):
    saved = write_json(tmp_path / "b.json", {"kvl_chat": 1, "think_budget": budget, "turns": []})
    r = kvl("chat", "--resume", saved, "--json", *scripted.args(), stdin=b"Hi?\n")
    assert r.code == 0, r.err
    assert f"think_budget {budget!r}: not on (-1), off (0) or a number of tokens, left out" in r.err
    (rec,) = records(r.out)
    assert rec["thinking"] and rec["tokens"]["thinking"] == 5  # the command line's budget (none)


def test_resume_of_deep_nesting_or_a_huge_file_is_exit_3(kvl, scripted, tmp_path):
    deep = write_json(tmp_path / "deep.json", "[" * 100000 + "]" * 100000)
    r = kvl("chat", "--resume", deep, *scripted.args(), stdin=b"Hi?\n")
    assert r.code == 3 and f"{deep}: not a saved conversation" in r.err and "internal error" not in r.err
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(80 * 1000**2)  # sparse: no disk used; read whole, it would be 80 MB in memory
    r = kvl("chat", "--resume", str(huge), *scripted.args(), stdin=b"Hi?\n")
    assert r.code == 3 and f"{huge}: oversized: more than 64 MB" in r.err


def test_resume_finds_relative_media_next_to_the_saved_file(kvl, scripted, tmp_path, monkeypatch):
    from .conftest import make_image

    talk = tmp_path / "talk"
    talk.mkdir()
    make_image(talk / "photo.png")
    (tmp_path / "elsewhere").mkdir()
    make_image(tmp_path / "elsewhere" / "photo.png", size=(300, 200))  # another photo of the same name
    monkeypatch.chdir(talk)
    assert chat(kvl, scripted, ["What is it?", "/save talk.json"], "photo.png").code == 0
    assert json.loads((talk / "talk.json").read_text())["turns"][0]["media"][0]["source"] == str(talk / "photo.png")
    hand = write_json(talk / "hand.json", {"kvl_chat": 1, "turns": [
        {"question": "Q", "answer": "A", "media": [{"source": "photo.png", "kind": "image"}]}]})
    monkeypatch.chdir(tmp_path / "elsewhere")
    for saved in (talk / "talk.json", hand):
        r = kvl("chat", "--resume", str(saved), "--json", *scripted.args(), stdin=b"And then?\n")
        assert r.code == 0 and "warning" not in r.err, r.err
        (rec,) = records(r.out)
        assert rec["image_tokens"] == [12]  # the 96x64 photo next to the file, not the 300x200 one here


# ---- slash commands: errors name the command typed ------------------------------------------------------


def test_schema_and_choices_errors_name_the_slash_command(kvl, scripted, images, tmp_path):
    r = chat(kvl, scripted, ["/schema {bad", f"/schema {tmp_path / 'none.json'}", "/choices ,,", "/choices a",
                             "/drop", "/think", "Still there?"], str(images["jpg"]), "--json")
    assert r.code == 0, r.err
    errors = [line for line in r.err.splitlines() if line.startswith("kvl: error:")]
    assert len(errors) == 6 and not any("--schema" in e or "--choices" in e for e in errors), errors
    assert errors[0].startswith("kvl: error: /schema: not JSON")
    assert errors[1].startswith(f"kvl: error: /schema {tmp_path / 'none.json'}: cannot read it")
    assert errors[2] == "kvl: error: /choices ',,': give at least two choices (e.g. /choices yes,no)"
    assert errors[4] == "kvl: error: /drop needs the number of a media item (/drop N, N as /add numbered it)"
    assert errors[5] == "kvl: error: /think needs on, off or a number (/think on, /think off or /think 256)"
    (rec,) = records(r.out)
    assert rec["answer"] == SCRIPTED_ANSWER


def test_a_document_over_the_context_names_no_flag_that_chat_lacks(kvl, scripted, images, tmp_path):
    from .pdfs import mixed_pages, write_pdf

    doc = write_pdf(tmp_path / "long.pdf", mixed_pages() * 10)
    r = chat(kvl, scripted, [f"/add {doc}", "Still there?"], str(images["jpg"]), "--json", "--ctx", "1024")
    assert r.code == 0, r.err
    (error,) = [line for line in r.err.splitlines() if line.startswith("kvl: error:")]
    said = re.fullmatch(r"kvl: error: 30 pages do not fit --ctx 1024 even at 8 image tokens a page; (\d+) pages would "
                        r"\(start kvl chat with a larger --ctx, or split the document\)", error)
    assert said and 0 < int(said[1]) < 30, error
    (rec,) = records(r.out)
    assert rec["image_tokens"] == [12]


def test_resume_with_another_model_says_so(kvl, scripted, random_pair, images, tmp_path):
    saved = tmp_path / "talk.json"
    assert chat(kvl, scripted, ["What is it?", f"/save {saved}"], str(images["jpg"])).code == 0
    assert json.loads(saved.read_text())["model"] == scripted.model.name
    r = kvl("chat", "--resume", str(saved), "--json", "--max-tokens", "8", *random_pair.args(), stdin=b"And then?\n")
    assert r.code == 0, r.err
    assert (f"kvl: warning: {saved}: its answers came from {scripted.model.name}; {random_pair.model.name} "
            "goes on with it") in r.err
    r = kvl("chat", "--resume", str(saved), "--json", *scripted.args(), stdin=b"And then?\n")
    assert r.code == 0 and "warning" not in r.err, r.err


def test_sigterm_mid_answer_through_a_running_server_ends_the_chat(random_pair, images, tmp_path):
    from .serve_util import start_server, wait_for

    srv = start_server(random_pair, tmp_path / "srv", "--image-max-tokens", "2048")
    try:
        env = kvl_env(random_pair, KVL_HOME=str(srv.home / "kvl"))
        proc = subprocess.Popen([*KVL, str(images["jpg"]), *TALKATIVE, *random_pair.args()], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"Tell me everything.\nAnd then?\n")
        proc.stdin.flush()
        said = proc.stdout.read(8)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code, out, err = finish(proc, t0)
        assert code == 143 and err.endswith("kvl: terminated\n"), err
        assert len(said + out.encode()) < 3000
        assert wait_for(lambda: srv.log_text().count("POST /v1/chat/completions") == 1, 10)  # the server answered
    finally:
        srv.stop()


def test_add_takes_a_path_as_a_terminal_drops_it_quoted_or_escaped(kvl, scripted, tmp_path):
    from .conftest import make_image

    photo = make_image(tmp_path / "my photo.png")
    escaped = str(photo).replace(" ", "\\ ")
    r = chat(kvl, scripted, [f"/add '{photo}'", f'/add "{photo}"', f"/add {escaped}", f"/add {photo}", "What?"],
             "--json")
    assert r.code == 0 and "error" not in r.err, r.err
    (rec,) = records(r.out)
    assert rec["media"] == [str(photo)] * 4 and rec["image_tokens"] == [12] * 4


def test_a_piped_line_over_a_megabyte_is_left_out_without_reading_it_whole(kvl, scripted, images):
    stdin = b"/think off\n" + b"\0" * (3 * 1000**2) + b"\nWhat is it?\n"  # kvl chat < /dev/zero, cut short
    r = kvl("chat", str(images["jpg"]), "--json", *scripted.args(), stdin=stdin)
    assert r.code == 0, r.err[-300:]
    errors = [line for line in r.err.splitlines() if line.startswith("kvl: error:")]
    assert errors == ["kvl: error: line 2: longer than 1 MB: left out (a question is one line of text)"]
    (rec,) = records(r.out)
    assert rec["question"] == "What is it?" and rec["turn"] == 1


def test_a_failed_turn_has_its_record_too(kvl, scripted, images):
    question = "why " * 600  # does not fit --ctx 512 even with every earlier turn dropped
    r = chat(kvl, scripted, [question, "Still there?"], str(images["jpg"]), "--json", "--ctx", "512")
    failed, answered = records(r.out)
    assert failed["input"] == "turn 1" and failed["exit_code"] == 8, failed
    assert (failed["turn"], failed["question"], failed["media"]) == (1, question.strip(), [str(images["jpg"])])
    assert answered["turn"] == 2 and answered["answer"] == SCRIPTED_ANSWER
