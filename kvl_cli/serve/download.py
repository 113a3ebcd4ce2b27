"""One image URL's download, on a thread of its own: the connection to an address the URL policy
allows (the very address checked, so DNS rebinding gets nowhere), http(s) only at every redirect, a
few redirects at most, the body within the cap; ``abort`` (from any thread: the deadline, the client
gone, the server stopping) shuts the socket down, so the download ends at its next socket call
however slowly the bytes were coming. ``fetch`` runs it with the deadline and the slots."""

from __future__ import annotations

import enum
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse

from ..limits import CHUNK

MAX_REDIRECTS = 3
REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "kvl-serve"


class FetchPolicy(enum.Enum):
    ALL = "all"
    PUBLIC = "public"
    NONE = "none"

    @classmethod
    def default_for(cls, host: str) -> FetchPolicy:
        """``all`` when only this machine can connect (a loopback ``--host``), else ``public``."""
        return cls.ALL if is_loopback(host) else cls.PUBLIC


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_public(address: str) -> bool:
    """A globally reachable unicast address (an IPv4 address inside IPv6 judged as itself)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is not None:
            ip = inner
    return ip.is_global and not ip.is_multicast


class Failed(Exception):
    """The fetch did not give the bytes of a reply (what happened is not told to the client)."""


class Oversized(Exception):
    """The reply is larger than the cap."""


class NotAllowed(Exception):
    """The URL policy refuses this address, before any connection."""


class Download:
    """One URL's fetch, run on its own thread; ``abort`` (any thread) ends it at its next socket call."""

    def __init__(self, url: str, policy: FetchPolicy, cap: int, deadline: float) -> None:
        self.url = url
        self.policy = policy
        self.cap = cap
        self.deadline = deadline  # time.monotonic()
        self.aborted = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            if self._sock is not None:
                try:
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)  # the raw fd, TLS or not
                except OSError:
                    pass

    def run(self) -> bytes:
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                parts = urllib.parse.urlsplit(url)
                ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
            except ValueError:  # a port that is not a number, a bracket left open
                ok = False
            if not ok:
                raise Failed("not an http(s) URL")
            status, location, body = self._get(parts)
            if status not in REDIRECTS:
                return body
            try:
                url = urllib.parse.urljoin(url, location)
            except ValueError:  # a Location that is not a URL
                raise Failed("a bad redirect") from None
        raise Failed("too many redirects")

    def _get(self, parts: urllib.parse.SplitResult) -> tuple[int, str, bytes]:
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        sock = self._connect(host, port)
        try:
            if parts.scheme == "https":
                sock = self._register(ssl.create_default_context().wrap_socket(sock, server_hostname=host))
            conn = http.client.HTTPConnection(host, port)
            conn.sock = sock
            target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*",
                                                 "Accept-Encoding": "identity", "Connection": "close"})
            resp = conn.getresponse()
            if resp.status in REDIRECTS:
                return resp.status, resp.getheader("Location") or "", b""
            if resp.status != 200:
                raise Failed(f"HTTP {resp.status}")
            return resp.status, "", self._body(resp)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise Failed(type(exc).__name__) from None
        finally:
            sock.close()

    def _body(self, resp: http.client.HTTPResponse) -> bytes:
        length = resp.getheader("Content-Length") or ""
        if length.isdigit() and int(length) > self.cap:
            raise Oversized()
        buf = bytearray()
        while chunk := resp.read(min(CHUNK, self.cap + 1 - len(buf))):
            buf += chunk
            if len(buf) > self.cap:
                raise Oversized()
            if self.aborted:
                raise Failed("aborted")
        if self.aborted:
            raise Failed("aborted")
        return bytes(buf)

    def _connect(self, host: str, port: int) -> socket.socket:
        """A connection to an address the policy allows (the very address checked)."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise Failed("no address") from exc
        if self.policy is FetchPolicy.PUBLIC and not all(is_public(str(info[4][0])) for info in infos):
            raise NotAllowed(host)
        for family, kind, proto, _, addr in infos:
            sock = self._register(socket.socket(family, kind, proto))
            try:
                sock.settimeout(max(0.01, self.left()))
                sock.connect(addr)
                return sock
            except OSError:
                sock.close()
            if self.aborted or self.left() <= 0:
                break
        raise Failed("no connection")

    def _register(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sock = sock
            if self.aborted:
                raise Failed("aborted")
        return sock
