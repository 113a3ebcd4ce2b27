"""#14, the CLI with a running server: caption, ocr and ask answer through a recorded ``kvl serve`` of
the same model (nothing loads), --no-server runs in-process, another model is not served by it;
kvl doctor lists it; kvl serve --stop stops it."""

from __future__ import annotations

import json

import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER, SCRIPTED_THINKING

from .conftest import make_image
from .serve_util import alive, start_server, wait_for


@pytest.fixture(scope="module")
def server(scripted, tmp_path_factory):  # type: ignore[no-untyped-def]
    srv = start_server(scripted, tmp_path_factory.mktemp("cli"), "--api-key", "k3y", "--image-max-tokens", "2048")
    yield srv
    srv.stop()


@pytest.fixture
def served(server, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KVL_HOME", str(server.home / "kvl"))
    return server


def posts(server) -> int:  # type: ignore[no-untyped-def]
    return server.log_text().count('"POST /v1/chat/completions HTTP/1.1" 200')


def test_ask_answers_through_the_server(kvl, served, scripted, tmp_path):
    img = make_image(tmp_path / "a.png")
    before = posts(served)
    r = kvl("ask", img, "What is it?", *scripted.args(), "--json")
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["server"] == served.url and rec["answer"] == SCRIPTED_ANSWER and rec["thinking"] == SCRIPTED_THINKING
    assert rec["load_s"] == 0 and rec["tokens"]["generated"] == 8 and rec["image_tokens"]
    assert set(rec["timings"]) >= {"encode_s", "prefill_s", "generate_s"}
    # the access-log line is written once the response has ended, which the client may see first
    assert wait_for(lambda: posts(served) == before + 1, 5), served.log_text()


def test_the_same_answer_in_process(kvl, served, scripted, tmp_path):
    img = make_image(tmp_path / "a.png")
    remote = json.loads(kvl("ask", img, "Why?", *scripted.args(), "--json", "--temperature", "0").out)
    local = json.loads(kvl("ask", img, "Why?", *scripted.args(), "--json", "--temperature", "0", "--no-server").out)
    assert "server" not in local
    for key in ("answer", "thinking", "tokens", "image_tokens", "finish_reason"):
        assert remote[key] == local[key], key


def test_text_output_and_a_batch_in_order(kvl, served, scripted, tmp_path):
    imgs = [make_image(tmp_path / f"{i}.png", size=(64 + 28 * i, 64)) for i in range(3)]
    r = kvl("caption", *imgs, *scripted.args(), "--json", "-P", "2")
    assert r.code == 0, r.err
    recs = [json.loads(line) for line in r.out.splitlines()]
    assert [rec["input"] for rec in recs] == [str(p) for p in imgs]
    assert all(rec["answer"] == SCRIPTED_ANSWER and rec["server"] == served.url for rec in recs)
    r = kvl("ocr", imgs[0], *scripted.args())  # ocr's 2048-token budget fits this server's
    assert r.code == 0 and r.out == SCRIPTED_ANSWER + "\n"


def test_choices_through_the_server(kvl, served, scripted, tmp_path):
    img = make_image(tmp_path / "a.png")
    r = kvl("ask", img, "Which?", *scripted.args(), "--choices", "yes,no", "--temperature", "0", "--json")
    rec = json.loads(r.out)
    assert r.code == 0 and rec["server"] == served.url and rec["answer"] in ("yes", "no")


def test_a_bad_image_fails_the_same_way(kvl, served, scripted, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    r = kvl("ask", bad, "What?", *scripted.args())
    assert r.code == 3


def test_another_model_is_not_served(kvl, served, random_pair, tmp_path):
    img = make_image(tmp_path / "a.png")
    r = kvl("ask", img, "What?", *random_pair.args(), "--json", "--max-tokens", "4")
    assert r.code == 0, r.err
    assert "server" not in json.loads(r.out)


def test_doctor_shows_the_server(kvl, served):
    r = kvl("doctor", "--json")
    (srv,) = json.loads(r.out)["servers"]
    assert srv["url"] == served.url and srv["status"] == "ok" and srv["auth"] is True
    assert served.url in kvl("doctor").out.replace("\n", "")


def test_serve_stop(kvl, scripted, tmp_path, monkeypatch):
    srv = start_server(scripted, tmp_path / "stopme")
    monkeypatch.setenv("KVL_HOME", str(srv.home / "kvl"))
    r = kvl("serve", "--stop", "--port", str(srv.port))
    assert r.code == 0 and f"stopped {srv.url}" in r.err
    assert srv.proc.wait(10) == 0
    assert not list((srv.home / "kvl" / "run").glob("server-*.json"))
    assert wait_for(lambda: not alive(srv.proc.pid), 5)
    assert "no server is running" in kvl("serve", "--stop").err


def test_a_port_in_use_is_exit_2(kvl, served, scripted):
    r = kvl("serve", *scripted.args(), "--port", str(served.port))
    assert r.code == 2 and "cannot listen" in r.err
