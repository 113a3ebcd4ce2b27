"""The disk cache: image embeddings and evaluated prompt prefixes, size-capped, least recently used out.

Two kinds of entry live under ``<cache>/`` (``kvl cache info`` prints the folder):

* ``embeddings/``: what the vision encoder made of one image: keyed by the image's pixels, the
  projector file and the image's token count, so asking about the same image again skips the
  encoder (tens of seconds on a small CPU).
* ``prompts/``: llama.cpp's evaluated state of a prompt prefix (system prompt, user prefix and
  images, up to the last image): keyed by the model and projector files, llama-cpp-python's
  version and every token and image of the prefix, so a second question about the same images
  only reads the question.

Every key names its inputs' identities (file path, size and modification time for the model
files), so a re-pulled model, a different token budget or other pixels never match. Entries are
written to a temporary name and renamed. Each entry's header carries its lengths and a checksum of
its key, meta and payload: an entry whose bytes were overwritten, cut short or copied under another
key's name is deleted and counts as a miss, never served. After each write the oldest-used entries
go until the cache fits its cap (``KVL_CACHE_SIZE``, default 4 GB; ``0`` turns the cache off).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .errors import DiskError

KINDS = ("embeddings", "prompts")
DEFAULT_CAP = 4 * 1000**3
# version 2 entries carry a checksum; a version 1 entry has another magic and so is a miss
_MAGIC = {"embeddings": b"KVLEMB2\n", "prompts": b"KVLKV02\n"}
# magic, meta length, payload length, CRC-32 of key + meta + payload. CRC-32 rather than a
# cryptographic hash: it guards against damage, not against someone who can write the cache
# anyway. Measured on a 100 MB prompt state: CRC-32 41 ms, SHA-256 70 ms (with SHA-NI; several
# times that without), BLAKE2b 140 ms, against 124 ms for reading the entry at all
_HEADER = struct.Struct("<8sIQI")
_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


class DamagedEntry(Exception):
    """An entry whose bytes do not match its header: served to nobody, deleted."""


def checksum(key: str, meta: bytes, payload: bytes | memoryview) -> int:
    """CRC-32 of the key, the meta and the payload: a copy under another key's name fails it too."""
    return zlib.crc32(payload, zlib.crc32(meta, zlib.crc32(key.encode("utf-8"))))


def read_entry(path: Path, magic: bytes, key: str) -> tuple[bytes, bytes]:
    """(meta, payload) of one entry file. Raises OSError (unreadable) or DamagedEntry."""
    with path.open("rb") as f:
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size or not head.startswith(magic):
            raise DamagedEntry("bad magic or short header")
        _, n_meta, n_payload, crc = _HEADER.unpack(head)
        if os.fstat(f.fileno()).st_size != _HEADER.size + n_meta + n_payload:
            raise DamagedEntry("length does not match the header")
        meta = f.read(n_meta)
        payload = f.read(n_payload)
    if len(meta) != n_meta or len(payload) != n_payload or checksum(key, meta, payload) != crc:
        raise DamagedEntry("checksum mismatch")
    return meta, payload


def write_entry(path: Path, magic: bytes, key: str, meta: bytes, payload: bytes | memoryview) -> None:
    """Write to a temporary name beside ``path`` and rename: readers see the old entry or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_HEADER.pack(magic, len(meta), len(payload), checksum(key, meta, payload)))
            f.write(meta)
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_size(text: str) -> int:
    """``500M``, ``4G``, ``1.5GB``, ``0`` → bytes. Raises ValueError."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"not a size: {text!r} (try 4G or 500M)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def cap_from_env() -> int:
    value = os.environ.get("KVL_CACHE_SIZE")
    return parse_size(value) if value else DEFAULT_CAP


def file_identity(path: Path) -> str:
    """Path, size and modification time: a replaced file is a different file."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def make_key(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


@dataclass
class KindStats:
    entries: int
    bytes: int


class DiskCache:
    """Blobs by key in ``root/<kind>/``, with a header; LRU by modification time."""

    def __init__(self, root: Path | None = None, cap: int | None = None) -> None:
        self.root = root or paths.cache_dir()
        self.cap = cap_from_env() if cap is None else cap
        self.hits = {k: 0 for k in KINDS}
        self.misses = {k: 0 for k in KINDS}
        self.damaged = {k: 0 for k in KINDS}  # of the misses, entries found damaged and deleted

    @property
    def enabled(self) -> bool:
        return self.cap > 0

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.bin"

    def get(self, kind: str, key: str) -> tuple[bytes, bytes] | None:
        """(meta, payload) or None. A hit refreshes the entry's place in the LRU order; a damaged
        entry (wrong magic, cut short, checksum mismatch) is a miss and is deleted."""
        if not self.enabled:
            return None
        path = self._path(kind, key)
        try:
            entry = read_entry(path, _MAGIC[kind], key)
        except (OSError, DamagedEntry) as exc:
            if isinstance(exc, DamagedEntry):
                self.damaged[kind] += 1
                with contextlib.suppress(OSError):  # a read-only cache still answers, uncached
                    path.unlink(missing_ok=True)
            self.misses[kind] += 1
            return None
        now = time.time()
        try:
            os.utime(path, (now, now))
        except OSError:
            pass
        self.hits[kind] += 1
        return entry

    def has(self, kind: str, key: str) -> bool:
        """Whether an entry exists (not read, not checked, LRU order untouched)."""
        return self.enabled and self._path(kind, key).is_file()

    def put(self, kind: str, key: str, meta: bytes, payload: bytes | memoryview) -> bool:
        """Store atomically, then trim to the cap. False when the cache is off or the disk refuses."""
        if not self.enabled or len(payload) > self.cap:
            return False
        try:
            write_entry(self._path(kind, key), _MAGIC[kind], key, meta, payload)
        except OSError:
            return False  # a full or read-only disk must not fail the answer
        self.trim()
        return True

    def _entries(self, kind: str | None = None,
                 errors: list[OSError] | None = None) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every entry file; folders that cannot be listed go to ``errors``."""
        out = []
        for k in (kind,) if kind else KINDS:
            for sub in _listing(self.root / k, errors):
                if not sub.is_dir():
                    continue
                for entry in _listing(Path(sub.path), errors):
                    if not entry.name.endswith(".bin") or not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def trim(self) -> int:
        """Remove least recently used entries until the total fits the cap; return bytes freed."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, p in entries:
            if total <= self.cap:
                break
            p.unlink(missing_ok=True)
            total -= size
            freed += size
        return freed

    def stats(self) -> dict[str, KindStats]:
        out = {}
        for kind in KINDS:
            entries = self._entries(kind)
            out[kind] = KindStats(len(entries), sum(size for _, size, _ in entries))
        return out

    def clear(self, kind: str | None = None) -> KindStats:
        """Delete every entry (of one kind); what was removed. Raises DiskError when some could not be."""
        errors: list[OSError] = []
        entries = self._entries(kind, errors)
        gone = KindStats(0, 0)
        for _, size, p in entries:
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:
                errors.append(exc)
                continue
            gone.entries += 1
            gone.bytes += size
        if errors:
            first = errors[0]
            raise DiskError(f"could not clear the cache: {first.filename or self.root}: {first.strerror or first} "
                            f"({len(errors)} failed; {gone.entries} of {len(entries)} entries removed)",
                            hint=f"check that you may write to {self.root}, or delete that folder by hand "
                                 "(kvl makes it again)")
        return gone


def _listing(folder: Path, errors: list[OSError] | None) -> list[os.DirEntry[str]]:
    """The folder's entries; none if it does not exist; other failures recorded in ``errors``."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except FileNotFoundError:
        return []
    except OSError as exc:
        if errors is not None:
            errors.append(exc)
        return []
