"""Image URLs named by a request, fetched as hostile names.

* **One deadline** for the whole fetch (waiting for a slot, DNS, connect, headers, body, redirects):
  ``--fetch-timeout``, 30 s by default. It is kept by shutting the socket down from outside, so a
  source that trickles a byte every few seconds ends at the deadline like one that says nothing.
  The same happens when the request's client hangs up (its handler is cancelled) and when the
  server stops.
* **Bounded**: at most ``--fetch-concurrency`` fetches at once, each on a daemon thread of its own
  (never the threads other requests need; never one that holds the process at exit).
* **Only http and https**, at the URL and at each of at most ``MAX_REDIRECTS`` redirects.
* **A URL policy** (``--fetch-urls``): ``all``; ``public`` (refuse any name that resolves to a
  loopback, private, link-local, shared, multicast or reserved address, cloud metadata services
  included; the address checked is the one connected to, so a name that resolves differently the
  second time, DNS rebinding, gets nowhere); ``none``.
* **One answer for every failure** of a fetch that was made (refused, timed out, an HTTP error, a
  reply that is not HTTP, not an image), so the server is no port scanner; only a policy refusal
  (known before any connection) and an image over the size cap say more.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .download import MAX_REDIRECTS, Download, Failed, FetchPolicy, NotAllowed, Oversized, is_loopback, is_public
from .errors import ApiError

__all__ = ["MAX_REDIRECTS", "FetchLimits", "FetchPolicy", "Fetcher", "failed", "is_loopback", "is_public", "shown"]


@dataclass(frozen=True)
class FetchLimits:
    policy: FetchPolicy = FetchPolicy.ALL
    deadline_s: float = 30.0
    concurrency: int = 4


def shown(url: str) -> str:
    """A URL as messages show it: without user info, query or fragment (they may hold secrets)."""
    try:
        p = urllib.parse.urlsplit(url)
        host = p.hostname or ""
        port = f":{p.port}" if p.port else ""
    except ValueError:
        return "the URL"
    host = f"[{host}]" if ":" in host else host
    return f"{p.scheme}://{host}{port}{p.path}"[:300]


class Fetcher:
    """The server's fetches: the policy, the deadline, the slots; ``close`` abandons them all."""

    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self.closed = False
        self._active: set[Download] = set()
        self._slots: asyncio.Semaphore | None = None

    def close(self) -> None:
        """The server is stopping: every fetch in flight ends now, and no new one starts."""
        self.closed = True
        for download in list(self._active):
            download.abort()

    async def fetch(self, url: str, where: str, cap: int) -> bytes:
        """The URL's bytes; ApiError otherwise (403 by policy, 413 over ``cap``, 400 for the rest)."""
        if self.limits.policy is FetchPolicy.NONE:
            raise ApiError(403, f"{where}: this server fetches no URL (kvl serve --fetch-urls none); send the "
                           "image as a data: URI", type="permission_error", code="url_not_allowed", param=where)
        self._check_open()
        download = Download(url, self.limits.policy, cap, time.monotonic() + self.limits.deadline_s)
        if not await self._take_slot(download):
            raise self._failed(url, where)
        self._active.add(download)
        try:
            return await _within(_on_thread(download.run, self._slots_().release), download.left())
        except (asyncio.TimeoutError, Failed):
            self._check_open()
            raise self._failed(url, where) from None
        except NotAllowed:
            raise ApiError(403, f"{where}: {shown(url)} is not fetched: it resolves to an address that is not "
                           "public (this server fetches public addresses only: --fetch-urls)",
                           type="permission_error", code="url_not_allowed", param=where) from None
        except Oversized:
            raise ApiError(413, f"{where}: the image at {shown(url)} is over the server's limit "
                           "(KVL_MAX_INPUT_BYTES where the server runs)", code="image_too_large") from None
        finally:
            download.abort()
            self._active.discard(download)

    def _slots_(self) -> asyncio.Semaphore:
        self._slots = self._slots or asyncio.Semaphore(self.limits.concurrency)
        return self._slots

    async def _take_slot(self, download: Download) -> bool:
        """Wait for a free slot until the download's deadline (False then). A wait that is cancelled
        (its client left) never keeps a slot, even one handed to it at that very moment (which
        ``asyncio.wait_for`` would keep, swallowing the cancellation)."""
        slots = self._slots_()
        acquire = asyncio.ensure_future(slots.acquire())
        try:
            await asyncio.wait({acquire}, timeout=max(0.0, download.left()))
        except asyncio.CancelledError:
            _give_back(acquire, slots)
            raise
        if not acquire.done():
            _give_back(acquire, slots)
            return False
        if self.closed:
            slots.release()
            self._check_open()
        return True

    def _check_open(self) -> None:
        if self.closed:
            raise ApiError(503, "the server is stopping", type="server_error", code="unavailable")

    def _failed(self, url: str, where: str) -> ApiError:
        return failed(url, where, self.limits.deadline_s)


def failed(url: str, where: str, deadline_s: float) -> ApiError:
    """The one answer for a fetch that did not give an image, whatever the reason."""
    return ApiError(400, f"{where}: no image from {shown(url)}: it did not answer with one within {deadline_s:g} s "
                    "(a refused connection, a timeout, an HTTP error, a redirect that is not http(s) and an "
                    "answer that is not an image are not told apart)", code="invalid_image", param=where)


def _give_back(acquire: asyncio.Future[Any], slots: asyncio.Semaphore) -> None:
    """A slot wait given up: cancelled if it still waits (the semaphore passes a wake-up it got on),
    the slot released if it had one."""
    if acquire.done() and not acquire.cancelled():
        slots.release()
    else:
        acquire.cancel()


async def _within(future: asyncio.Future[bytes], seconds: float) -> bytes:
    """``future``'s result, or TimeoutError after ``seconds``; a cancellation always goes through."""
    try:
        done, _ = await asyncio.wait({future}, timeout=max(0.0, seconds))
    except asyncio.CancelledError:
        future.cancel()  # what the thread ends with goes nowhere
        raise
    if not done:
        future.cancel()
        raise asyncio.TimeoutError()
    return future.result()


def _on_thread(work: Callable[[], bytes], done: Callable[[], None]) -> asyncio.Future[bytes]:
    """``work()`` on a daemon thread of its own; ``done`` runs on the loop once the thread has ended
    (so a slot is held as long as its thread lives)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bytes] = loop.create_future()

    def settle(result: bytes | None, error: BaseException | None) -> None:
        done()
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or b"")

    def thread() -> None:
        result, error = None, None
        try:
            result = work()
        except BaseException as exc:  # noqa: B036 - handed to the awaiting side, whatever it is
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: the server is gone
            pass

    threading.Thread(target=thread, name="kvl-fetch", daemon=True).start()
    return future
