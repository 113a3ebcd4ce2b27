"""Starting a real ``kvl serve`` (a subprocess, on a free loopback port) on the toy models, and small
HTTP helpers for the kvl serve tests. Every wait here is bounded."""

from __future__ import annotations

import base64
import http.client
import io
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvl_cli.serve.record import alive  # noqa: F401 - for the tests

from .conftest import Pair, kvl_env


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    home: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


def start_server(pair: Pair, home: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 90.0) -> Served:
    """``kvl serve`` on the pair, on any free port; returns once /health says ok."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / "serve.log"
    full_env = kvl_env(None, KVL_HOME=str(home / "kvl"), HOME=str(home), **(env or {}))
    cmd = [sys.executable, "-m", "kvl_cli", "serve", "--model", str(pair.model), "--mmproj", str(pair.mmproj),
           "--port", "0", *args]
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f, env=full_env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kvl serve exited with {proc.returncode}:\n{log.read_text()}")
        port = _recorded_port(home / "kvl" / "run", proc.pid)
        if port and get(port, "/health")[0] == 200:
            return Served(proc, port, home, log)
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"kvl serve did not get ready in {timeout} s:\n{log.read_text()}")


def _recorded_port(run: Path, pid: int) -> int | None:
    for path in run.glob("server-*.json") if run.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
        except ValueError:
            continue
        if rec.get("pid") == pid:
            return int(rec["port"])
    return None


def request(port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
            timeout: float = 60.0) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body or raw bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    except OSError:
        return 0, {}, None
    finally:
        conn.close()
    try:
        return resp.status, hdrs, json.loads(raw)
    except ValueError:
        return resp.status, hdrs, raw


def get(port: int, path: str) -> tuple[int, Any]:
    status, _, body = request(port, "GET", path, timeout=5)
    return status, body


def chat(port: int, body: dict[str, Any], **kw: Any) -> tuple[int, dict[str, str], Any]:
    return request(port, "POST", "/v1/chat/completions", body, **kw)


def png_uri(size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (200, 40, 40)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(text: str, *uris: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in uris]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


ENDLESS = {"think_budget": 0, "grammar": 'root ::= [ab] root'}  # an answer that never ends by itself


def open_stream(port: int, body: dict[str, Any]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}).encode(),
                 headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def wait_for(check: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return False


def running(port: int) -> int:
    status, body = get(port, "/health")
    return int(body["running"]) + int(body["queued"]) if status == 200 else -1


def listening_address(port: int) -> str | None:
    """The local address a TCP port listens on, from /proc/net/tcp (IPv4)."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        local, state = line.split()[1], line.split()[3]
        addr, hexport = local.split(":")
        if int(hexport, 16) == port and state == "0A":
            return ".".join(str(b) for b in reversed(bytes.fromhex(addr)))
    return None
