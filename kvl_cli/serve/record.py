"""Running servers, as the CLI finds them: one JSON file per ``kvl serve`` in kvl's runtime folder.

``server-PORT.json`` (mode 0600, like a Jupyter connection file: it holds the API key, if any) says
where the server listens, its process id and the model files it loaded (path, size and mtime, so a
re-pulled model is a different model). A record whose process is gone is stale and is removed when
read. Standard library only: the CLI reads these without Starlette installed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..cache import file_identity

PREFIX = "server-"


@dataclass
class ServerRecord:
    pid: int
    host: str
    port: int
    model: str
    mmproj: str
    identity: list[str]  # file_identity of model and mmproj
    model_name: str
    image_max_tokens: int
    api_key: str | None = None
    started: float = 0.0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def connect_host(self) -> str:
        """Where a client on this machine connects (a server on every address is also on loopback)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)

    def serves(self, model: Path, mmproj: Path) -> bool:
        try:
            return self.identity == [file_identity(model), file_identity(mmproj)]
        except OSError:
            return False

    def path(self) -> Path:
        return paths.runtime_dir() / f"{PREFIX}{self.port}.json"


def write(rec: ServerRecord) -> Path:
    folder = paths.runtime_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = rec.path()
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(asdict(rec), f)
    os.replace(tmp, target)
    return target


def remove(rec: ServerRecord) -> None:
    """Remove the record if it is still this process's (a newer server may have taken the port)."""
    with contextlib.suppress(OSError, ValueError):
        current = _read(rec.path())
        if current is None or current.pid == rec.pid:
            rec.path().unlink(missing_ok=True)


def _read(path: Path) -> ServerRecord | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServerRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def alive(pid: int) -> bool:
    """The process exists and has not exited (an exited child not yet waited for is a zombie: gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal test is all there is
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def running() -> list[ServerRecord]:
    """Every recorded server whose process is alive (stale records are removed)."""
    folder = paths.runtime_dir()
    found: list[ServerRecord] = []
    for path in sorted(folder.glob(f"{PREFIX}*.json")) if folder.is_dir() else []:
        rec = _read(path)
        if rec is not None and alive(rec.pid):
            found.append(rec)
        elif rec is not None or time.time() - _mtime(path) > 60:  # a half-written file gets a minute
            path.unlink(missing_ok=True)
    return found


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def get(rec: ServerRecord, path: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET ``path`` from the server: (status, JSON body or None). OSError if it cannot be reached."""
    conn = http.client.HTTPConnection(rec.connect_host, rec.port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {rec.api_key}"} if rec.api_key else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, None


def health(rec: ServerRecord, timeout: float = 2.0) -> dict[str, Any] | None:
    """The server's /health (``status`` ok once the model is loaded); None if it does not answer."""
    try:
        _, body = get(rec, "/health", timeout)
    except (OSError, http.client.HTTPException):
        return None
    return body if isinstance(body, dict) else None


def stop(rec: ServerRecord, timeout: float = 30.0) -> bool:
    """SIGTERM the server and wait for it to exit; True if it did."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(rec.pid):
            remove(rec)
            return True
        time.sleep(0.1)
    return False
