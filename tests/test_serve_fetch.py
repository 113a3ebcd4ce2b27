"""#22, image URLs fetched as hostile names (``kvl_cli.serve.fetch``), without a model: one deadline
for the whole fetch however slowly the bytes come, http(s) only at every redirect, the URL policy
checked on the very address connected to, one answer for every kind of failure, bounded slots, and
everything abandoned when the client leaves or the server stops. Every source is a thread on
127.0.0.1; every wait is bounded."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from kvl_cli.serve.errors import ApiError
from kvl_cli.serve.fetch import MAX_REDIRECTS, Fetcher, FetchLimits, FetchPolicy, is_loopback, is_public, shown

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 40


class Source:
    """A TCP server on 127.0.0.1 whose every connection is handled by ``reply(conn)``; counts them."""

    def __init__(self, reply: Callable[[socket.socket], None]) -> None:
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            conn.recv(65536)  # the request
            self.reply(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def source() -> Iterator[Callable[[Callable[[socket.socket], None]], Source]]:
    made: list[Source] = []

    def make(reply: Callable[[socket.socket], None]) -> Source:
        made.append(Source(reply))
        return made[-1]

    yield make
    for s in made:
        s.close()


def answer(status: str, body: bytes = b"", headers: str = "") -> Callable[[socket.socket], None]:
    def reply(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body)
    return reply


def trickle(head: bytes, every: float) -> Callable[[socket.socket], None]:
    """``head``, then one byte every ``every`` seconds, for ever (until the other side goes)."""
    def reply(conn: socket.socket) -> None:
        conn.sendall(head)
        for _ in range(10_000):
            time.sleep(every)
            conn.sendall(b"x")
    return reply


def fetch(url: str, *, deadline: float = 5.0, policy: FetchPolicy = FetchPolicy.ALL, cap: int = 10_000) -> bytes:
    fetcher = Fetcher(FetchLimits(policy=policy, deadline_s=deadline))
    return asyncio.run(fetcher.fetch(url, "w", cap))


def failure(url: str, **kw: object) -> ApiError:
    with pytest.raises(ApiError) as exc:
        fetch(url, **kw)  # type: ignore[arg-type]
    return exc.value


def fetch_threads() -> int:
    return sum(t.name == "kvl-fetch" for t in threading.enumerate())


def test_addresses_the_public_policy_refuses():
    for private in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.100.100.200",
                    "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "::",
                    "2002:7f00:1::", "fe80::1%lo"):
        assert not is_public(private), private
    for public in ("8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"):
        assert is_public(public), public


def test_the_default_policy_follows_the_listening_address():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        assert is_loopback(host) and FetchPolicy.default_for(host) is FetchPolicy.ALL
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert FetchPolicy.default_for(host) is FetchPolicy.PUBLIC


def test_a_plain_image_and_a_redirect_to_it(source):
    image = source(answer("200 OK", PNG))
    assert fetch(image.url + "/a.png") == PNG
    hop = source(answer("302 Found", headers=f"Location: {image.url}/a.png\r\n"))
    assert fetch(hop.url + "/start") == PNG


def test_a_trickling_body_ends_at_the_deadline(source):
    slow = source(trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", every=0.3))
    t0 = time.monotonic()
    err = failure(slow.url + "/slow.png", deadline=2.0)
    assert err.status == 400 and err.code == "invalid_image"
    assert time.monotonic() - t0 < 4.0
    assert wait(lambda: fetch_threads() == 0, 3.0)  # the thread ended with it


def test_trickling_headers_end_at_the_deadline(source):
    slow = source(trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ", every=0.3))
    t0 = time.monotonic()
    assert failure(slow.url, deadline=2.0).status == 400
    assert time.monotonic() - t0 < 4.0


def test_one_answer_for_refused_timed_out_not_http_http_errors_and_bad_redirects(source):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    ftp = source(answer("200 OK", PNG))
    cases = {
        "refused": f"http://127.0.0.1:{refused_port}/x.png",
        "silent": source(lambda conn: time.sleep(5)).url + "/x.png",
        "not http": source(lambda conn: conn.sendall(b"\x1b[31mSSH-2.0-OpenSSH\r\n\x1b]0;pwned\x07")).url + "/x.png",
        "404": source(answer("404 Not Found", b"nope")).url + "/x.png",
        "ftp redirect": source(answer("302 Found", headers=f"Location: ftp://127.0.0.1:{ftp.port}/x\r\n")).url,
        "file redirect": source(answer("301 Moved", headers="Location: file:///etc/passwd\r\n")).url,
        "bad redirect": source(answer("302 Found", headers="Location: http://[::1\r\n")).url,
        "no location": source(answer("302 Found")).url,
        "bad chunks": source(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")).url,
        "huge header": source(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200_000 + b"\r\n\r\n")).url,
    }
    messages = {}
    for name, url in cases.items():
        err = failure(url, deadline=1.5)
        assert err.status == 400 and err.code == "invalid_image", name
        messages[name] = err.message.replace(shown(url), "URL")
    assert len(set(messages.values())) == 1, messages
    assert "\x1b" not in str(messages)
    assert ftp.accepted == 0  # the ftp:// target was never connected to


def test_redirects_are_few(source):
    hops: list[Source] = []
    for _ in range(MAX_REDIRECTS + 1):
        target = hops[-1].url if hops else source(answer("200 OK", PNG)).url
        hops.append(source(answer("302 Found", headers=f"Location: {target}/\r\n")))
    assert failure(hops[-1].url).status == 400  # one redirect too many
    assert fetch(hops[-2].url) == PNG


def test_over_the_cap_is_413_from_its_length_or_as_it_comes(source):
    assert failure(source(answer("200 OK", b"x" * 20_000)).url, cap=10_000).status == 413
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"4000\r\n" + b"x" * 0x4000 + b"\r\n0\r\n\r\n"
    assert failure(source(lambda c: c.sendall(chunked)).url, cap=10_000).status == 413


def test_the_public_policy_refuses_private_addresses_before_connecting(source):
    image = source(answer("200 OK", PNG))
    for url in (image.url, f"http://localhost:{image.port}/", f"http://[::ffff:127.0.0.1]:{image.port}/"):
        err = failure(url, policy=FetchPolicy.PUBLIC)
        assert err.status == 403 and err.code == "url_not_allowed", url
    assert image.accepted == 0
    err = failure(image.url, policy=FetchPolicy.NONE)
    assert err.status == 403 and "--fetch-urls none" in err.message


def test_the_address_checked_is_the_address_connected_to(monkeypatch):
    """DNS rebinding: a name that resolves to a public address when checked and to a private one
    the next time gets the checked (public) address or nothing."""
    answers = iter(["93.184.215.14", "127.0.0.1", "127.0.0.1"])
    looked_up: list[str] = []
    dialled: list[object] = []

    def resolve(host, port, *a, **kw):  # type: ignore[no-untyped-def]
        addr = next(answers)
        looked_up.append(addr)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port))]

    def connect(self, address):  # type: ignore[no-untyped-def]
        dialled.append(address)
        raise OSError("network access blocked in tests")

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(socket.socket, "connect", connect)
    err = failure("http://rebind.example/x.png", policy=FetchPolicy.PUBLIC)
    assert err.status == 400
    assert looked_up == ["93.184.215.14"] and dialled == [("93.184.215.14", 80)]


def test_a_name_with_any_private_answer_is_refused(monkeypatch):
    def resolve(host, port, *a, **kw):  # type: ignore[no-untyped-def]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in ("93.184.215.14", "10.0.0.7")]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    assert failure("http://mixed.example/", policy=FetchPolicy.PUBLIC).status == 403


def test_a_client_that_leaves_abandons_its_fetch(source):
    slow = source(trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", every=0.2))

    async def leave() -> None:
        fetcher = Fetcher(FetchLimits(deadline_s=30))
        task = asyncio.ensure_future(fetcher.fetch(slow.url, "w", 10_000))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    t0 = time.monotonic()
    asyncio.run(leave())
    assert time.monotonic() - t0 < 2
    assert wait(lambda: fetch_threads() == 0, 3.0)


def test_slots_are_bounded_and_closing_abandons_every_fetch(source):
    slow = source(trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", every=0.2))

    async def flood() -> list[object]:
        fetcher = Fetcher(FetchLimits(deadline_s=30, concurrency=2))
        tasks = [asyncio.ensure_future(fetcher.fetch(slow.url, "w", 10_000)) for _ in range(6)]
        await asyncio.sleep(1.0)
        assert fetch_threads() == 2 and slow.accepted == 2  # the other four wait for a slot, on no thread
        fetcher.close()
        return await asyncio.gather(*tasks, return_exceptions=True)

    t0 = time.monotonic()
    results = asyncio.run(flood())
    assert time.monotonic() - t0 < 3
    assert all(isinstance(r, ApiError) and r.status == 503 and r.code == "unavailable" for r in results), results
    assert wait(lambda: fetch_threads() == 0, 3.0)


def test_messages_show_no_query_and_no_credentials():
    assert shown("http://user:pw@host:81/a.png?token=s3cret#f") == "http://host:81/a.png"
    assert "s3cret" not in failure("http://127.0.0.1:9/a.png?api_key=s3cret", deadline=1).message


def wait(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()
