"""One line per request in the Combined Log Format, plus the seconds it took:

    127.0.0.1 - - [29/Nov/2026:18:34:02 +0000] "POST /v1/chat/completions HTTP/1.1" 200 1873 "-" "curl/8.5" 0.412

written when the response ends (for a stream: its last event). A client that went away before its
answer was complete (or while it sent its body) is logged with status 499. Neither the body, nor
the API key, nor a query string (``?api_key=…`` is written ``?...``) is ever logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("kvl.serve.access")


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        seen: dict[str, Any] = {"status": 0, "bytes": 0, "complete": False}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
                seen["complete"] = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            status = seen["status"] if seen["complete"] or not seen["status"] else 499
            log.info(line(scope, status or 499, seen["bytes"], time.monotonic() - t0))


def line(scope: Scope, status: int, size: int, seconds: float) -> str:
    client = scope.get("client") or ("-", 0)
    headers = dict(scope.get("headers") or [])
    path = scope.get("path", "")
    target = f"{path}?..." if scope.get("query_string") else path  # a query may hold a key or a token
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
    referer = _quoted(headers.get(b"referer"))
    agent = _quoted(headers.get(b"user-agent"))
    request = f'{scope.get("method", "-")} {_clean(target)} HTTP/{scope.get("http_version", "1.1")}'
    return f'{client[0]} - - [{when}] "{request}" {status} {size or "-"} {referer} {agent} {seconds:.3f}'


def _quoted(value: bytes | None) -> str:
    return f'"{_clean(value.decode("latin-1"))}"' if value else '"-"'


def _clean(text: str) -> str:
    """No quote, backslash or control character from a client reaches the log line as is."""
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else f"\\x{ord(c):02x}" for c in text[:1000])
