"""Cache entries that were damaged on disk are misses and go; `kvl cache clear` that cannot delete
fails with the disk exit code (team issue 12, items 2 and 5)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvl_cli.cache import DiskCache, read_entry

KEY = "ab" + "0" * 62
OTHER = "cd" + "1" * 62
META = struct.pack("<ii", 4, 16)
PAYLOAD = bytes(range(256)) * 4


@pytest.fixture
def cache(tmp_path: Path) -> DiskCache:
    c = DiskCache(root=tmp_path / "c", cap=10**6)
    assert c.put("embeddings", KEY, META, PAYLOAD)
    return c


def entry(c: DiskCache, key: str = KEY, kind: str = "embeddings") -> Path:
    return c.root / kind / key[:2] / f"{key}.bin"


def assert_miss_and_gone(c: DiskCache, key: str = KEY) -> None:
    assert c.get("embeddings", key) is None
    assert not entry(c, key).exists()
    assert c.misses["embeddings"] == 1 and c.damaged["embeddings"] == 1 and c.hits["embeddings"] == 0


def test_round_trip(cache):
    assert cache.get("embeddings", KEY) == (META, PAYLOAD)
    assert cache.hits["embeddings"] == 1 and cache.misses["embeddings"] == 0
    assert cache.get("prompts", KEY) is None and cache.misses["prompts"] == 1 and cache.damaged["prompts"] == 0


def test_payload_overwritten_with_the_header_intact_is_a_miss(cache):
    p = entry(cache)
    blob = bytearray(p.read_bytes())
    blob[-len(PAYLOAD):] = bytes(len(PAYLOAD))  # the issue: NULs over the payload, header and length kept
    p.write_bytes(bytes(blob))
    assert_miss_and_gone(cache)


@pytest.mark.parametrize("where", [-1, -len(PAYLOAD) // 2])
def test_one_flipped_payload_byte_is_a_miss(cache, where):
    p = entry(cache)
    blob = bytearray(p.read_bytes())
    blob[where] ^= 0x01
    p.write_bytes(bytes(blob))
    assert_miss_and_gone(cache)


def test_changed_meta_is_a_miss(cache):
    p = entry(cache)
    blob = p.read_bytes()
    at = blob.index(META)
    p.write_bytes(blob[:at] + struct.pack("<ii", 4, 17) + blob[at + len(META):])
    assert_miss_and_gone(cache)


@pytest.mark.parametrize("keep", [0, 5, 20, 30, -1])
def test_truncated_is_a_miss(cache, keep):
    p = entry(cache)
    blob = p.read_bytes()
    p.write_bytes(blob[:keep])
    assert_miss_and_gone(cache)


def test_trailing_bytes_are_a_miss(cache):
    p = entry(cache)
    p.write_bytes(p.read_bytes() + b"\0")
    assert_miss_and_gone(cache)


def test_old_format_and_wrong_magic_are_misses(cache):
    p = entry(cache)
    # a version-1 entry: magic, meta length, meta, payload length, payload; no checksum
    p.write_bytes(b"KVLEMB1\n" + struct.pack("<I", len(META)) + META + struct.pack("<Q", len(PAYLOAD)) + PAYLOAD)
    assert_miss_and_gone(cache)
    cache.put("embeddings", KEY, META, PAYLOAD)
    prompts = entry(cache, kind="prompts")
    prompts.parent.mkdir(parents=True)
    prompts.write_bytes(entry(cache).read_bytes())  # an embeddings entry where a prompt state should be
    assert cache.get("prompts", KEY) is None and not prompts.exists() and cache.damaged["prompts"] == 1


def test_an_entry_copied_under_another_key_is_a_miss(cache):
    other = entry(cache, OTHER)
    other.parent.mkdir(parents=True)
    other.write_bytes(entry(cache).read_bytes())
    assert cache.get("embeddings", OTHER) is None and not other.exists()
    assert cache.get("embeddings", KEY) == (META, PAYLOAD)


def test_read_entry_reports_damage(cache):
    from kvl_cli.cache import DamagedEntry

    p = entry(cache)
    assert read_entry(p, b"KVLEMB2\n", KEY) == (META, PAYLOAD)
    with pytest.raises(DamagedEntry):
        read_entry(p, b"KVLEMB2\n", OTHER)
    with pytest.raises(FileNotFoundError):
        read_entry(p.with_name("missing.bin"), b"KVLEMB2\n", KEY)


# ---- through the engine: the case ------------------------------------------------------------


def test_overwritten_embedding_gives_the_uncached_answer(kvl, random_pair, images, isolated):
    """Issue 12.5: a zeroed embedding payload used to answer 15 NUL characters, as a cache hit."""
    base = ("ask", images["jpg"], "q?", *random_pair.args(), "--temperature", "0", "--no-think",
            "--max-tokens", "12", "--json")
    want = json.loads(kvl(*base).out)["answer"]
    root = isolated / "kvl" / "cache"
    for p in (root / "prompts").glob("*/*.bin"):
        p.unlink()  # so the image goes through the embeddings cache
    (emb,) = (root / "embeddings").glob("*/*.bin")
    blob = bytearray(emb.read_bytes())
    n = len(blob) // 2
    blob[-n:] = bytes(n)
    emb.write_bytes(bytes(blob))
    r = kvl(*base)
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["answer"] == want and "\0" not in rec["answer"]
    assert rec["cached"] == {"images": 0, "prefix_tokens": 0}
    # the damaged entry was replaced by a good one: the next ask hits it
    (emb2,) = (root / "embeddings").glob("*/*.bin")
    assert emb2.read_bytes() != bytes(blob)


# ---- kvl cache clear that cannot delete ------------------------------------------------------------


def fill(kvl_home: Path) -> DiskCache:
    c = DiskCache(root=kvl_home / "kvl" / "cache", cap=10**6)
    c.put("embeddings", KEY, META, PAYLOAD)
    c.put("prompts", OTHER, META, PAYLOAD)
    return c


def assert_disk_error(r) -> None:  # type: ignore[no-untyped-def]
    assert r.code == 7, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvl: error: could not clear the cache:"), r.err
    assert "Traceback" not in r.err and "internal error" not in r.err
    assert r.out == ""


def test_clear_that_cannot_delete_exits_7(kvl, isolated, monkeypatch):
    c = fill(isolated)

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    r = kvl("cache", "clear")
    assert_disk_error(r)
    assert "Permission denied" in r.err and "2 failed; 0 of 2 entries removed" in r.err
    monkeypatch.undo()
    assert c.stats()["embeddings"].entries == 1  # nothing claimed, nothing lost


def test_clear_with_a_file_where_the_folder_should_be_exits_7(kvl, isolated):
    """A real failure that root cannot override: the kind's folder is a file."""
    c = fill(isolated)
    (c.root / "embeddings").rename(c.root / "moved")
    (c.root / "embeddings").write_bytes(b"not a folder")
    r = kvl("cache", "clear")
    assert_disk_error(r)
    assert "Not a directory" in r.err and "1 failed; 1 of 1 entries removed" in r.err
    assert c.stats()["prompts"].entries == 0  # what could go went


@contextlib.contextmanager
def undeletable(folder: Path) -> Iterator[None]:
    """Entries in ``folder`` cannot be deleted: chmod for a user, ``chattr +i`` for root (ext4 and the like)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i does not work: no real unwritable folder")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_clear_in_a_folder_that_refuses_deletes_exits_7(kvl, isolated):
    c = fill(isolated)
    with undeletable(entry(c).parent):
        r = kvl("cache", "clear", "--only", "embeddings")
    assert_disk_error(r)
    assert "Permission denied" in r.err or "Operation not permitted" in r.err
    assert c.stats()["embeddings"].entries == 1
