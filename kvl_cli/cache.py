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
written to a temporary name and renamed; a damaged entry is deleted and counts as a miss. After
each write the oldest-used entries go until the cache fits its cap (``KVL_CACHE_SIZE``, default
4 GB; ``0`` turns the cache off).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import paths

KINDS = ("embeddings", "prompts")
DEFAULT_CAP = 4 * 1000**3
_MAGIC = {"embeddings": b"KVLEMB1\n", "prompts": b"KVLKV01\n"}
_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


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

    @property
    def enabled(self) -> bool:
        return self.cap > 0

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.bin"

    def get(self, kind: str, key: str) -> tuple[bytes, bytes] | None:
        """(meta, payload) or None. A hit refreshes the entry's place in the LRU order."""
        if not self.enabled:
            return None
        path = self._path(kind, key)
        try:
            blob = path.read_bytes()
        except OSError:
            self.misses[kind] += 1
            return None
        magic = _MAGIC[kind]
        try:
            if not blob.startswith(magic):
                raise ValueError("bad magic")
            (n_meta,) = struct.unpack_from("<I", blob, len(magic))
            start = len(magic) + 4
            meta = blob[start:start + n_meta]
            (n_payload,) = struct.unpack_from("<Q", blob, start + n_meta)
            payload = blob[start + n_meta + 8:]
            if len(payload) != n_payload:
                raise ValueError("truncated")
        except (ValueError, struct.error):
            path.unlink(missing_ok=True)  # damaged: a miss, and gone
            self.misses[kind] += 1
            return None
        now = time.time()
        try:
            os.utime(path, (now, now))
        except OSError:
            pass
        self.hits[kind] += 1
        return meta, payload

    def has(self, kind: str, key: str) -> bool:
        """Whether an entry exists (not read, not checked, LRU order untouched)."""
        return self.enabled and self._path(kind, key).is_file()

    def put(self, kind: str, key: str, meta: bytes, payload: bytes | memoryview) -> bool:
        """Store atomically, then trim to the cap. False when the cache is off or the disk refuses."""
        if not self.enabled or len(payload) > self.cap:
            return False
        path = self._path(kind, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_MAGIC[kind])
                    f.write(struct.pack("<I", len(meta)))
                    f.write(meta)
                    f.write(struct.pack("<Q", len(payload)))
                    f.write(payload)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            return False  # a full or read-only disk must not fail the answer
        self.trim()
        return True

    def _entries(self, kind: str | None = None) -> list[tuple[float, int, Path]]:
        out = []
        for k in (kind,) if kind else KINDS:
            folder = self.root / k
            if not folder.is_dir():
                continue
            for p in folder.glob("*/*.bin"):
                try:
                    st = p.stat()
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, p))
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
        entries = self._entries(kind)
        for _, _, p in entries:
            p.unlink(missing_ok=True)
        return KindStats(len(entries), sum(size for _, size, _ in entries))
