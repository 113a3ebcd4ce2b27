"""Errors in OpenAI's shape, with the HTTP status each kind of failure gets, and back again.

``{"error": {"message", "type", "param", "code"}}``: what OpenAI's SDKs parse into their exception
classes (400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError,
413/422 APIStatusError, 503 InternalServerError with retries). kvl's own errors map by kind; the
CLI's client maps ``code`` back to the same ``KvlError`` class (same exit code as in-process).
"""

from __future__ import annotations

from typing import Any

from ..errors import ContextError, DiskError, EngineError, InputError, KvlError, ModelError, UsageError
from ..schema import AnswerError


class ApiError(Exception):
    """An answer that is an error: status, OpenAI error type, kvl's code, extra headers."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def too_large(message: str, code: str = "request_too_large") -> ApiError:
    return ApiError(413, message, code=code)


def busy(retry_after: int, message: str = "the server is busy: its queue is full") -> ApiError:
    return ApiError(503, f"{message}; retry in {retry_after} s", type="server_error", code="server_busy",
                    headers={"Retry-After": str(retry_after)})


def internal(message: str = "internal error (see the server's log)") -> ApiError:
    return ApiError(500, message, type="server_error", code="internal_error")


# kvl's error kinds: (status, OpenAI type, code). The client maps a code back to its class.
_KINDS: list[tuple[type[KvlError], int, str, str]] = [
    (ContextError, 400, "invalid_request_error", "context_length_exceeded"),
    (AnswerError, 400, "invalid_request_error", "invalid_answer"),
    (UsageError, 400, "invalid_request_error", "invalid_request"),
    (ModelError, 500, "server_error", "model_error"),
    (DiskError, 500, "server_error", "disk_error"),
    (EngineError, 500, "server_error", "engine_error"),
]


def from_kvl(exc: KvlError) -> ApiError:
    """The answer for one of kvl's errors (the message keeps its hint: what to do)."""
    if isinstance(exc, InputError):
        if "oversized" in exc.message:
            return ApiError(413, str(exc), code="image_too_large")
        return ApiError(400, str(exc), code="invalid_image")
    for kind, status, type_, code in _KINDS:
        if isinstance(exc, kind):
            return ApiError(status, str(exc), type=type_, code=code)
    return internal(str(exc))


_CLASSES: dict[str, type[KvlError]] = {
    "invalid_image": InputError, "image_too_large": InputError, "request_too_large": InputError,
    "file_not_allowed": InputError, **{code: kind for kind, _, _, code in _KINDS},
}


def to_kvl(status: int, body: Any) -> KvlError:
    """The CLI's side: an error answer as the ``KvlError`` the same failure raises in-process."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return EngineError(f"kvl serve answered HTTP {status}", hint="see the server's log")
    message = str(err.get("message") or f"HTTP {status}")
    kind = _CLASSES.get(str(err.get("code")), EngineError)
    return kind(message)
