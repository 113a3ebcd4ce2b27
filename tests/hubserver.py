"""A local HTTP server that answers like the Hugging Face hub, for pull tests.

Serves ``/{repo}/resolve/{rev}/{file}`` (HEAD with X-Repo-Commit / X-Linked-Etag / X-Linked-Size
and a 302 to a CDN path, GET with the same redirect), ``/cdn/{repo}/{file}`` with Range support,
and ``/api/models/{repo}/tree/{rev}``. Faults can be injected per file: cut the connection after
N bytes (once), serve other bytes, or answer 401; a delay before each file's bytes stretches a download.
``toy_hub`` serves the toy pair as the catalog entry ``toy-kimi-vl`` (a catalog folder written for it).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOY_REPO = "kvl-test/toy-GGUF"


@dataclass
class HubState:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    private: set[str] = field(default_factory=set)
    cut_after: dict[str, int] = field(default_factory=dict)  # file -> bytes sent before cutting (once)
    corrupt: set[str] = field(default_factory=set)  # files served with altered bytes (true sha advertised)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay_s: float = 0.0  # before the bytes of every GET of a file
    sizes: tuple[int, int] = (0, 0)  # toy_hub: the toy model's and projector's sizes

    def add(self, repo: str, name: str, data: bytes) -> str:
        self.repos.setdefault(repo, {})[name] = data
        return hashlib.sha256(data).hexdigest()

    def downloads(self, name: str, repo: str = TOY_REPO) -> int:
        """GETs of a file's bytes (the CDN's answer; not HEADs, not the hub's redirects)."""
        with self.lock:
            return sum(1 for q in self.requests if q.split(" Range=")[0] == f"GET /cdn/{repo}/{name}")


class Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code: int, message: str) -> None:
        kind = "RepoNotFound" if code == 401 else "EntryNotFound"
        self._send(code, json.dumps({"error": message}).encode(),
                   {"Content-Type": "application/json", "X-Error-Code": kind})

    def do_HEAD(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        st = self.state
        with st.lock:
            rng = self.headers.get("Range")
            st.requests.append(f"{self.command} {self.path}" + (f" Range={rng}" if rng else ""))
        path = self.path.split("?")[0]
        if m := re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
            return self._tree(m.group(1))
        if m := re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path):
            return self._resolve(m.group(1), m.group(3))
        if m := re.match(r"^/cdn/([^/]+/[^/]+)/(.+)$", path):
            return self._cdn(m.group(1), m.group(2))
        self._error(404, "not found")

    def _tree(self, repo: str) -> None:
        st = self.state
        if repo not in st.repos or repo in st.private:
            return self._error(401 if repo in st.private else 404, "Repository not found")
        items = [{"type": "file", "path": n, "size": len(d), "oid": "x" * 40,
                  "lfs": {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}}
                 for n, d in st.repos[repo].items()]
        self._send(200, json.dumps(items).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo: str, name: str) -> None:
        st = self.state
        if repo in st.private:
            return self._error(401, "Invalid credentials")
        if repo not in st.repos:
            return self._error(404, "Repository not found")
        if name not in st.repos[repo]:
            return self._error(404, "Entry not found")
        data = st.repos[repo][name]
        sha = hashlib.sha256(data).hexdigest()
        # like the hub: an absolute redirect to a CDN (huggingface_hub only follows relative ones itself)
        # (the hub answers on 127.0.0.1, its "CDN" on localhost: another host, as with the real one)
        cdn = f"http://localhost:{self.server.server_address[1]}/cdn/{repo}/{name}"
        self._send(302, b"", {"Location": cdn, "X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{sha}"',
                              "X-Linked-Size": str(len(data)), "ETag": f'"{sha}"'})

    def _cdn(self, repo: str, name: str) -> None:
        st = self.state
        data = st.repos[repo][name]
        if name in st.corrupt:
            data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        rng = self.headers.get("Range")
        start = int(rm.group(1)) if rng and (rm := re.match(r"bytes=(\d+)-", rng)) else 0
        body = data[start:]
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        with st.lock:
            cut = st.cut_after.pop(name) if name in st.cut_after and self.command == "GET" else None
        self.send_response(206 if start else 200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if st.delay_s:
            time.sleep(st.delay_s)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


def start(state: HubState) -> tuple[ThreadingHTTPServer, str]:
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def toy_hub(model: Path, mmproj: Path, catalog: Path) -> tuple[HubState, ThreadingHTTPServer, str]:
    """The toy pair served as the catalog entry ``toy-kimi-vl`` (the default; quants Q4_K_M, BIG:
    12 MB, over huggingface_hub's write chunk, and HUBSHA: no sizes or sha256 in the catalog), plus
    a private repository; ``catalog`` is the folder for KVL_CATALOG. Returns (state, server, URL)."""
    state = HubState()
    model_bytes, proj_bytes = model.read_bytes(), mmproj.read_bytes()
    sha_m = state.add(TOY_REPO, "toy-Q4_K_M.gguf", model_bytes)
    sha_p = state.add(TOY_REPO, "mmproj-toy-Q8_0.gguf", proj_bytes)
    state.add(TOY_REPO, "README.md", b"# toy\n")
    big = bytes(range(256)) * (12 * 2**20 // 256)  # over huggingface_hub's 10 MB write chunk
    sha_big = state.add(TOY_REPO, "big-Q4_K_M.gguf", big)
    state.repos["kvl-test/private-GGUF"] = {"x.gguf": b"x"}
    state.private.add("kvl-test/private-GGUF")
    state.sizes = (len(model_bytes), len(proj_bytes))
    catalog.mkdir(parents=True, exist_ok=True)
    (catalog / "toy.toml").write_text(f'''
name = "toy-kimi-vl"
description = "toy"
repo = "{TOY_REPO}"
revision = "{COMMIT}"
license = "MIT"
default = true
default_quant = "Q4_K_M"
[quants.Q4_K_M]
model = {{ file = "toy-Q4_K_M.gguf", size = {len(model_bytes)}, sha256 = "{sha_m}" }}
mmproj = {{ file = "mmproj-toy-Q8_0.gguf", size = {len(proj_bytes)}, sha256 = "{sha_p}" }}
[quants.BIG]
model = {{ file = "big-Q4_K_M.gguf", size = {len(big)}, sha256 = "{sha_big}" }}
mmproj = {{ file = "mmproj-toy-Q8_0.gguf", size = {len(proj_bytes)}, sha256 = "{sha_p}" }}
[quants.HUBSHA]
model = {{ file = "toy-Q4_K_M.gguf" }}
mmproj = {{ file = "mmproj-toy-Q8_0.gguf" }}
''')
    server, url = start(state)
    return state, server, url
