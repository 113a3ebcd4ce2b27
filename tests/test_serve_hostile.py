"""#22, ``kvl serve`` against hostile clients and hostile URLs, on a real server on loopback (the
scripted toy model): slow image sources with departed clients do not stop other requests; a slow
source ends in 4xx at its deadline; a FIFO is refused at once; the folder-swap race reads nothing
outside --allow-files and never answers 5xx; deep JSON, a NUL, a lone surrogate, a reply that is not
HTTP and a redirect to ftp:// are 4xx (and the ftp:// target is never connected to); a query-string
key never reaches the log; a hang-up during the upload is logged 499; a queued client that leaves
leaves the queue; ``n`` > 1 is ``unsupported_parameter``; no traceback on stderr; SIGTERM ends the
server within seconds with slow fetches in flight. Every source is a thread on 127.0.0.1."""

from __future__ import annotations

import ctypes
import ctypes.util
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER

from .conftest import make_image
from .serve_util import ENDLESS, Served, chat, get, image_message, open_stream, png_uri, start_server, wait_for
from .test_serve_fetch import Source, answer, trickle

DEADLINE = 6  # --fetch-timeout for these servers
HI = {"messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("hostile-files")
    allowed, outside = root / "allowed", root / "outside"
    (allowed / "sub").mkdir(parents=True)
    (outside / "sub").mkdir(parents=True)
    make_image(allowed / "in.png")
    make_image(allowed / "sub" / "in.png", size=(32, 32))
    make_image(outside / "sub" / "in.png", size=(256, 256))  # more image tokens: a read outside shows
    make_image(outside / "secret.png")
    (allowed / "link.png").symlink_to(outside / "secret.png")
    (allowed / "swap").symlink_to(outside / "sub")
    os.mkfifo(allowed / "fifo.png")
    return {"root": root, "allowed": allowed, "outside": outside}


@pytest.fixture(scope="module")
def server(scripted, tmp_path_factory, files) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    srv = start_server(scripted, tmp_path_factory.mktemp("hostile"), "--allow-files", str(files["allowed"]),
                       "--fetch-timeout", str(DEADLINE), "--fetch-concurrency", "2", "--parallel", "1",
                       "--queue", "2")
    yield srv
    assert srv.stop() == 0, srv.log_text()
    log = srv.log_text()
    assert "Traceback" not in log and "internal error" not in log, log


@pytest.fixture
def slow() -> Iterator[Source]:
    src = Source(trickle(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n", every=1.0))
    yield src
    src.close()


def image(url: str) -> dict[str, object]:
    return {"messages": [image_message("What is it?", url)]}


def leave_after(port: int, body: dict[str, object], seconds: float) -> None:
    """Send a request, then hang up before its answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    time.sleep(seconds)
    sock.close()


def test_slow_sources_whose_clients_left_do_not_stop_other_requests(server, slow):
    for _ in range(6):
        threading.Thread(target=leave_after, args=(server.port, image(slow.url + "/a.png"), 0.5), daemon=True).start()
    time.sleep(1.0)
    t0 = time.monotonic()
    status, _, body = chat(server.port, HI, timeout=15)
    assert status == 200 and body["choices"][0]["message"]["content"] == SCRIPTED_ANSWER
    status, _, body = chat(server.port, image(png_uri()), timeout=15)
    assert status == 200 and body["kvl"]["image_tokens"]
    assert time.monotonic() - t0 < 10
    assert wait_for(lambda: slow.accepted >= 2, 5)  # the departed clients' fetches were abandoned, not queued
    assert get(server.port, "/health")[1]["queued"] == 0


def test_a_slow_source_ends_in_4xx_at_the_deadline(server, slow):
    t0 = time.monotonic()
    status, _, body = chat(server.port, image(slow.url + "/a.png"), timeout=DEADLINE + 20)
    assert status == 400 and body["error"]["code"] == "invalid_image"
    assert DEADLINE - 1 <= time.monotonic() - t0 <= DEADLINE + 5


def test_a_fifo_is_refused_at_once(server, files):
    t0 = time.monotonic()
    status, _, body = chat(server.port, image((files["allowed"] / "fifo.png").as_uri()), timeout=10)
    assert status == 400 and "not a regular file" in body["error"]["message"]
    assert time.monotonic() - t0 < 3


def test_the_403_names_the_requested_path_not_the_target(server, files):
    status, _, body = chat(server.port, image((files["allowed"] / "link.png").as_uri()))
    assert status == 403 and body["error"]["code"] == "file_not_allowed"
    assert str(files["allowed"] / "link.png") in body["error"]["message"]
    assert str(files["outside"]) not in body["error"]["message"]


def _exchange() -> object:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        pytest.skip("no renameat2 in this C library")
    return renameat2


@pytest.mark.skipif(not os.uname().sysname == "Linux", reason="renameat2(RENAME_EXCHANGE) is Linux's")
def test_swapping_a_folder_for_a_link_mid_request_reads_nothing_outside(server, files):
    renameat2 = _exchange()
    sub, swap = bytes(files["allowed"] / "sub"), bytes(files["allowed"] / "swap")
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, sub, at_fdcwd, swap, rename_exchange) != 0:  # type: ignore[operator]
        pytest.skip(f"RENAME_EXCHANGE not supported here (errno {ctypes.get_errno()})")
    renameat2(at_fdcwd, sub, at_fdcwd, swap, rename_exchange)  # type: ignore[operator]
    inside_tokens = chat(server.port, image((files["allowed"] / "sub" / "in.png").as_uri()))[2]["kvl"]["image_tokens"]
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            renameat2(at_fdcwd, sub, at_fdcwd, swap, rename_exchange)  # type: ignore[operator]

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        with ThreadPoolExecutor(2) as pool:  # within this server's queue (2), whatever the engine has taken
            results = list(pool.map(lambda _: chat(server.port, image((files["allowed"] / "sub" / "in.png").as_uri()),
                                                   timeout=30), range(100)))
    finally:
        stop.set()
        thread.join(5)
    if (files["allowed"] / "sub").is_symlink():
        renameat2(at_fdcwd, sub, at_fdcwd, swap, rename_exchange)  # type: ignore[operator]
    statuses = [status for status, _, _ in results]
    outside = [body for status, _, body in results if status == 200 and body["kvl"]["image_tokens"] != inside_tokens]
    assert not outside, outside
    assert all(s in (200, 403) for s in statuses), [body for s, _, body in results if s not in (200, 403)]
    assert 200 in statuses and 403 in statuses  # both sides of the swap were met


@pytest.mark.parametrize("body", [
    b"[" * 5000 + b"]" * 5000,
    b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
])
def test_bad_bodies_are_400(server, body):
    status, _, answer_ = chat(server.port, body)
    assert status == 400 and answer_["error"]["type"] == "invalid_request_error", answer_


def test_a_schema_nested_too_deep_is_400(server):
    deep = json.loads('{"items": ' * 600 + "{}" + "}" * 600)
    status, _, body = chat(server.port, {**HI, "response_format": {"type": "json_schema", "json_schema": {
        "name": "deep", "schema": deep}}})
    assert status == 400 and body["error"]["code"] == "invalid_schema", body


def test_a_grammar_llama_cpp_cannot_parse_is_400_and_stays_off_stderr(server):
    status, _, body = chat(server.port, {**HI, "kvl": {"grammar": 'root ::= ( "\x1b[2J" OWNED'}})
    assert status == 400 and body["error"]["code"] == "invalid_grammar", body
    status, _, body = chat(server.port, HI)
    assert status == 200
    log = server.log_text()
    assert "OWNED" not in log and "\x1b" not in log and "error parsing grammar" not in log, log


def test_bad_file_urls_are_400(server, files):
    base = files["allowed"].as_uri()
    for url in (base + "/in.png%00.txt", base + "/%ff%fe.png", "file:///%00", base + "/\udcff.png", "file://[::1/x",
                base, base + "/", base + "/sub"):
        status, _, body = chat(server.port, image(url))
        assert status in (400, 403) and body["error"]["code"] in ("invalid_image", "invalid_request",
                                                                  "file_not_allowed"), (url, body)


def test_a_reply_that_is_not_http_and_an_ftp_redirect_are_400(server):
    target = Source(answer("200 OK", b"x"))
    sources = [Source(lambda c: c.sendall(b"\x1b[2J\x1b]0;owned\x07SSH-2.0-OpenSSH_9.6\r\n" * 50)),
               Source(answer("302 Found", headers=f"Location: ftp://127.0.0.1:{target.port}/x.png\r\n")),
               Source(answer("200 OK", b"<html>not an image</html>"))]
    try:
        messages = set()
        for src in sources:
            status, _, body = chat(server.port, image(src.url + "/x.png"))
            assert status == 400 and body["error"]["code"] == "invalid_image", body
            messages.add(body["error"]["message"].replace(src.url, "URL"))
        assert len(messages) == 1, messages
        assert target.accepted == 0
    finally:
        for src in (*sources, target):
            src.close()
    assert "\x1b" not in server.log_text()


def test_a_key_in_the_query_string_is_not_logged(server):
    get(server.port, "/v1/models?api_key=sk-very-secret&token=tok-secret")
    status, _, _ = chat(server.port, {**HI, "max_tokens": 2}, headers={"X-Ignored": "1"})
    assert status == 200
    assert wait_for(lambda: "/v1/models?..." in server.log_text(), 5)
    assert "very-secret" not in server.log_text() and "tok-secret" not in server.log_text()


def test_n_above_1_is_an_unsupported_parameter(server):
    status, _, body = chat(server.port, {**HI, "n": 2})
    assert status == 400 and body["error"]["code"] == "unsupported_parameter" and body["error"]["param"] == "n"


def test_a_hang_up_during_the_upload_is_499(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n" + b'{"messages": [' + b" " * 1000)
    time.sleep(0.3)
    sock.close()
    assert wait_for(lambda: '"POST /v1/chat/completions HTTP/1.1" 499' in server.log_text(), 5), server.log_text()


def test_a_queued_client_that_leaves_leaves_the_queue(server):
    conn, resp = open_stream(server.port, {**HI, "max_tokens": 100_000, "kvl": ENDLESS})  # takes the one sequence
    try:
        assert resp.status == 200
        for _ in range(2):  # fills the queue (2), then both clients go
            threading.Thread(target=leave_after, args=(server.port, HI, 1.0), daemon=True).start()
        assert wait_for(lambda: get(server.port, "/health")[1]["queued"] == 2, 5)
        assert wait_for(lambda: get(server.port, "/health")[1]["queued"] == 0, 5)
        waiting = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        waiting.request("POST", "/v1/chat/completions", body=json.dumps(HI),
                        headers={"Content-Type": "application/json"})
        assert wait_for(lambda: get(server.port, "/health")[1]["queued"] == 1, 5)  # room again: no 503
        waiting.close()
    finally:
        conn.close()
    assert wait_for(lambda: get(server.port, "/health")[1]["running"] == 0, 10)


def test_the_public_policy_refuses_loopback_urls(scripted, tmp_path):
    image_src = Source(answer("200 OK", make_image(tmp_path / "a.png").read_bytes()))
    srv = start_server(scripted, tmp_path / "public", "--fetch-urls", "public")
    try:
        for url in (image_src.url + "/a.png", f"http://localhost:{image_src.port}/a.png"):
            status, _, body = chat(srv.port, image(url))
            assert status == 403 and body["error"]["code"] == "url_not_allowed", body
        assert image_src.accepted == 0
        assert "image URLs: public" in srv.log_text()
    finally:
        image_src.close()
        assert srv.stop() == 0


def test_sigterm_ends_the_server_within_seconds_with_slow_fetches_in_flight(scripted, tmp_path, slow):
    srv = start_server(scripted, tmp_path / "term", "--fetch-concurrency", "2")  # the 30 s default deadline
    with ThreadPoolExecutor(5) as pool:
        waiting = [pool.submit(chat, srv.port, image(slow.url + f"/{k}.png"), timeout=40) for k in range(4)]
        streaming = pool.submit(_stream_until_closed, srv.port)
        assert wait_for(lambda: slow.accepted >= 2, 10)
        time.sleep(0.5)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(20)
        took = time.monotonic() - t0
        results = [f.result(timeout=10) for f in waiting]
        streaming.result(timeout=10)
    assert code == 0 and took < 10, (code, took)
    assert all(status == 503 and body["error"]["code"] == "unavailable" for status, _, body in results), results
    log = srv.log_text()
    assert "Traceback" not in log and "graceful shutdown exceeded" not in log, log


def _stream_until_closed(port: int) -> None:
    conn, resp = open_stream(port, {**HI, "max_tokens": 100_000, "kvl": ENDLESS})
    try:
        for _ in resp:
            pass
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
