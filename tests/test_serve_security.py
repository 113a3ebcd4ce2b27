"""#14, security: loopback by default; --api-key enforced (401); bodies and images over the cap refused
with 413 before they are decoded; file:// only inside --allow-files; http(s) images with the CLI's cap."""

from __future__ import annotations

import base64
import http.client
import http.server
import os
import threading
from pathlib import Path

import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER

from .conftest import make_image
from .serve_util import chat, get, image_message, listening_address, png_uri, start_server

CAP = 300_000  # KVL_MAX_INPUT_BYTES for these servers


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("files")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    make_image(allowed / "in.png")
    make_image(outside / "secret.png")
    (allowed / "link.png").symlink_to(outside / "secret.png")
    (allowed / "big.bin").write_bytes(os.urandom(CAP + 1000))
    return {"allowed": allowed, "in": allowed / "in.png", "secret": outside / "secret.png",
            "link": allowed / "link.png", "big": allowed / "big.bin"}


@pytest.fixture(scope="module")
def server(scripted, tmp_path_factory, files):  # type: ignore[no-untyped-def]
    srv = start_server(scripted, tmp_path_factory.mktemp("secure"), "--api-key", "s3cret", "--allow-files",
                       str(files["allowed"]), env={"KVL_MAX_INPUT_BYTES": str(CAP)})
    yield srv
    assert srv.stop() == 0, srv.log_text()


KEY = {"Authorization": "Bearer s3cret"}
HI = {"messages": [{"role": "user", "content": "Hi"}]}


def test_loopback_by_default(server):
    assert listening_address(server.port) == "127.0.0.1"


def test_the_api_key_is_required(server):
    status, _, body = chat(server.port, HI)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert chat(server.port, HI, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert get(server.port, "/v1/models")[0] == 401
    assert get(server.port, "/health")[0] == 200  # says only whether the model is ready
    status, _, body = chat(server.port, HI, headers=KEY)
    assert status == 200 and body["choices"][0]["message"]["content"] == SCRIPTED_ANSWER


def test_the_openai_sdk_with_and_without_the_key(server):
    openai = pytest.importorskip("openai")
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="m", messages=HI["messages"])
    good = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
    assert good.chat.completions.create(model="m", messages=HI["messages"]).choices[0].message.content


def test_a_body_over_the_cap_is_413_from_its_length(server):
    body = b'{"messages": "' + b"x" * (CAP * 4 // 3 + 1_100_000) + b'"}'
    status, _, answer = chat(server.port, body, headers=KEY)
    assert status == 413 and answer["error"]["code"] == "request_too_large"


def test_a_chunked_body_over_the_cap_is_413_as_it_arrives(server):
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"x" * 100_000

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=chunks(), headers={**KEY, "Transfer-Encoding": "chunked"},
                     encode_chunked=True)
        assert conn.getresponse().status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused and closed before all of it was sent: that is the point
    finally:
        conn.close()


def test_an_image_over_the_cap_is_413_before_decoding(server):
    uri = "data:image/png;base64," + base64.b64encode(os.urandom(CAP + 10)).decode()
    status, _, body = chat(server.port, {"messages": [image_message("x", uri)]}, headers=KEY)
    assert status == 413 and body["error"]["code"] == "image_too_large"
    assert "messages[0].content[0]" in body["error"]["message"]


def test_file_urls_only_inside_allow_files(server, files):
    ok = chat(server.port, {"messages": [image_message("x", files["in"].as_uri())]}, headers=KEY)
    assert ok[0] == 200 and ok[2]["choices"][0]["message"]["content"] == SCRIPTED_ANSWER
    for path in (files["secret"], files["link"], files["allowed"] / ".." / "outside" / "secret.png"):
        status, _, body = chat(server.port, {"messages": [image_message("x", "file://" + str(path))]}, headers=KEY)
        assert status == 403 and body["error"]["code"] == "file_not_allowed", path
    status, _, body = chat(server.port, {"messages": [image_message("x", files["big"].as_uri())]}, headers=KEY)
    assert status == 413


def test_file_urls_are_off_without_allow_files(scripted, tmp_path):
    srv = start_server(scripted, tmp_path / "nofiles")
    try:
        img = make_image(tmp_path / "a.png")
        status, _, body = chat(srv.port, {"messages": [image_message("x", img.as_uri())]})
        assert status == 403 and "--allow-files" in body["error"]["message"]
        assert listening_address(srv.port) == "127.0.0.1"
    finally:
        srv.stop()


class _Images(http.server.BaseHTTPRequestHandler):
    payloads: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 - the handler's name
        data = self.payloads.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args: object) -> None:
        pass


def test_http_images_with_the_clis_cap(server, tmp_path):
    _Images.payloads = {"/ok.png": make_image(tmp_path / "ok.png").read_bytes(), "/big.png": os.urandom(CAP + 1)}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        status, _, body = chat(server.port, {"messages": [image_message("x", base + "/ok.png")]}, headers=KEY)
        assert status == 200 and body["kvl"]["image_tokens"]
        status, _, body = chat(server.port, {"messages": [image_message("x", base + "/big.png")]}, headers=KEY)
        assert status == 413
        status, _, body = chat(server.port, {"messages": [image_message("x", base + "/missing.png")]}, headers=KEY)
        assert status == 400 and body["error"]["code"] == "invalid_image"
    finally:
        httpd.shutdown()


def test_no_stack_trace_reaches_a_client(server):
    status, _, body = chat(server.port, {"messages": [image_message("x", png_uri())], "seed": "x"}, headers=KEY)
    assert status == 400 and "Traceback" not in str(body)
    assert "Traceback" not in server.log_text()
