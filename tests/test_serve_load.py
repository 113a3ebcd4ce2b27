"""#14 under load, bounded in count and time: 16 clients at once get complete, correct answers; a
client that hangs up mid-stream frees its sequence at once; a flood beyond the queue gets 503 with
Retry-After and the server stays up."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER, SCRIPTED_THINKING

from .serve_util import ENDLESS, chat, image_message, open_stream, png_uri, running, start_server, wait_for

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(scripted, tmp_path_factory):  # type: ignore[no-untyped-def]
    srv = start_server(scripted, tmp_path_factory.mktemp("load"), "--parallel", "4", "--queue", "16", "--ctx", "4096")
    yield srv
    assert srv.stop() == 0, srv.log_text()


def ask(url: str, k: int) -> tuple[str, str, str]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [image_message(f"Question {k}?", png_uri((64 + 28 * (k % 4), 64), (k * 15 % 256, 40, 40)))]
    if k % 2:
        resp = client.chat.completions.create(model="m", messages=messages)
        msg = resp.choices[0].message
        return msg.reasoning_content, msg.content, resp.choices[0].finish_reason
    thinking, content, finish = "", "", ""
    for chunk in client.chat.completions.create(model="m", messages=messages, stream=True):
        for c in chunk.choices:
            thinking += getattr(c.delta, "reasoning_content", None) or ""
            content += c.delta.content or ""
            finish = c.finish_reason or finish
    return thinking, content, finish


def test_sixteen_clients_at_once(server):
    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda k: ask(server.url, k), range(16)))
    assert answers == [(SCRIPTED_THINKING, SCRIPTED_ANSWER, "stop")] * 16
    assert time.monotonic() - t0 < 120
    assert wait_for(lambda: running(server.port) == 0, 5)


def test_a_client_that_hangs_up_frees_its_sequence(server):
    conn, resp = open_stream(server.port, {"messages": [{"role": "user", "content": "Go"}], "max_tokens": 100_000,
                                           "kvl": ENDLESS})
    assert resp.status == 200
    content = 0
    for line in resp:
        if b'"content":"a"' in line:
            content += 1
        if content >= 10:
            break
    assert running(server.port) == 1
    conn.sock.shutdown(2)  # hang up mid-stream
    conn.close()
    t0 = time.monotonic()
    assert wait_for(lambda: running(server.port) == 0, 3), "the sequence was not freed"
    freed_s = time.monotonic() - t0
    assert freed_s < 2
    assert wait_for(lambda: '"POST /v1/chat/completions HTTP/1.1" 499' in server.log_text(), 3)
    status, _, body = chat(server.port, {"messages": [{"role": "user", "content": "Hi"}]})  # still serving
    assert status == 200 and body["choices"][0]["message"]["content"] == SCRIPTED_ANSWER


def test_a_flood_beyond_the_queue_gets_503_and_the_server_stays_up(scripted, tmp_path):
    srv = start_server(scripted, tmp_path / "flood", "--parallel", "1", "--queue", "2", "--ctx", "4096")
    try:
        outcomes: list[tuple[int, str | None]] = []
        conns: list[http.client.HTTPConnection] = []
        lock = threading.Lock()

        def one() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            with lock:
                conns.append(conn)
            body = {"messages": [{"role": "user", "content": "Go"}], "max_tokens": 100_000, "stream": True,
                    "kvl": ENDLESS}
            try:
                conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                with lock:
                    outcomes.append((resp.status, resp.getheader("Retry-After")))
            except OSError:
                pass  # one we hung up on while it waited

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        assert wait_for(lambda: len(outcomes) >= 6, 30), outcomes  # 1 running (200) + 5 refused; 2 wait
        refused = [o for o in outcomes if o[0] == 503]
        assert len(refused) == 5 and all(r[1] and int(r[1]) >= 1 for r in refused)
        assert sum(o[0] == 200 for o in outcomes) == 1
        for conn in conns:  # everyone hangs up: the running one and the two waiting
            if conn.sock is not None:
                conn.sock.shutdown(2)
        for t in threads:
            t.join(10)
        assert wait_for(lambda: running(srv.port) == 0, 5)
        status, _, body = chat(srv.port, {"messages": [{"role": "user", "content": "Hi"}]})
        assert status == 200 and body["choices"][0]["message"]["content"] == SCRIPTED_ANSWER
        assert "Traceback" not in srv.log_text()
    finally:
        assert srv.stop() == 0, srv.log_text()
