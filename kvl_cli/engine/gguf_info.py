"""Read a GGUF file's header without loading it, so bad model files fail in milliseconds.

The key/value section is parsed and the tensor table checked; tensor data is never touched.
Large arrays (the tokenizer's 160k strings) are skipped, not decoded.

The header is read in a bounded way: every count and length it claims is checked against what
the file can hold before anything is read or allocated for it, so a damaged or hostile file is
refused here with a sentence, not by llama.cpp trying to allocate what the header says.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # what llama.cpp reads (1 had 32-bit counts; later ones are unknown to it)
_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAY_MAX = 64  # arrays longer than this are skipped (value None), only their length kept
_KEEP_STRING_MAX = 1 << 20  # longer string values are skipped (value None), never decoded
_KEY_MAX = 65535  # the GGUF spec's limit on key length
_NAME_MAX = 63  # llama.cpp's GGML_MAX_NAME (64) less the terminating NUL
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_COUNT = 1 << 20  # tensors or keys in one file: real models have a few thousand and a few dozen
_MAX_ELEMENTS = 1 << 40  # per tensor; the largest real tensors hold a few 1e9
_MIN_KV = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR = 8 + 4 + 4 + 8  # name length, n_dims, type, offset
_PLAUSIBLE_BYTES = 1 << 40  # a header that claims more than this is damaged, not merely cut off
_MIN_BITS_PER_WEIGHT = 1.0  # below ggml's most compact type (Q1_0, 1.125): bounds types this table lacks
# ggml type id -> (elements per block, bytes per block)
GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
}
_REMOVED_TYPES = (4, 5, 31, 32, 33, 36, 37, 38)  # ids ggml retired: llama.cpp refuses them
_TYPE_LIMIT = 64  # ggml has 42 type ids; ids up to here are taken as newer types, bounded generically


@dataclass
class GGUFInfo:
    path: Path
    version: int
    n_tensors: int
    metadata: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def is_projector(self) -> bool:
        return self.architecture == "clip"

    @property
    def projector_type(self) -> str | None:
        value = self.metadata.get("clip.projector_type") or self.metadata.get("clip.vision.projector_type")
        return value if isinstance(value, str) else None

    @property
    def text_embedding_length(self) -> int | None:
        arch = self.architecture
        return _integer(self.metadata.get(f"{arch}.embedding_length")) if arch else None

    @property
    def projection_dim(self) -> int | None:
        return _integer(self.metadata.get("clip.vision.projection_dim"))

    @property
    def context_length(self) -> int | None:
        arch = self.architecture
        return _integer(self.metadata.get(f"{arch}.context_length")) if arch else None

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else None


def _integer(value: Any) -> int | None:
    """An integer field, or None when the header stores something else there (llama.cpp then says so)."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def damaged(path: Path, detail: str) -> ModelError:
    return ModelError(f"{path} is damaged or not a GGUF model: {detail}",
                      hint="download or convert it again")


def truncated(path: Path, detail: str = "the GGUF header ends early") -> ModelError:
    return ModelError(f"{path} is truncated or damaged: {detail}",
                      hint="a download may be incomplete: pull it again")


def beyond_end(path: Path, detail: str, claimed: int) -> ModelError:
    """A claim that runs past the file's end: a cut-off download when it is plausible, damage when not."""
    return damaged(path, detail) if claimed > _PLAUSIBLE_BYTES else truncated(path, detail)


class _Cursor:
    """Reads the mapped file front to back; refuses any length that runs past its end."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    @property
    def left(self) -> int:
        return self.size - self.pos

    def skip(self, n: int) -> None:
        if n > self.left:
            raise truncated(self.path)
        self.pos += n

    def take(self, n: int) -> bytes:
        start = self.pos
        self.skip(n)
        return self.buf[start:self.pos]

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def length(self, what: str, item_size: int = 1) -> int:
        """A u64 count of items of at least ``item_size`` bytes, checked against the bytes left."""
        n = self.unpack("<Q")
        if n * item_size > self.left:
            unit = "bytes" if item_size == 1 else "items"
            raise beyond_end(self.path, f"{what} claims {n:,} {unit}, more than the {self.left:,} bytes "
                                        "left in the file", n * item_size)
        return int(n)

    def key(self) -> str:
        n = self.length("a key")
        if n > _KEY_MAX:
            raise damaged(self.path, f"a key of {n:,} bytes (GGUF keys are at most {_KEY_MAX})")
        return self.take(n).decode("utf-8", errors="replace")

    def string(self) -> str | None:
        """A string value; one longer than _KEEP_STRING_MAX is skipped (None), never copied."""
        n = self.length("a string")
        if n > _KEEP_STRING_MAX:
            self.skip(n)
            return None
        return self.take(n).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        """Skip ``count`` strings (the tokenizer's 160k): a tight loop, no copies."""
        buf, pos, end = self.buf, self.pos, self.size
        length = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > end:
                raise truncated(self.path)
            pos += 8 + length(buf, pos)[0]
        if pos > end:
            raise truncated(self.path)
        self.pos = pos

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        raise damaged(self.path, f"unknown GGUF value type {vtype}")


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Parse the header of ``path``; raise ModelError with a clear sentence if it is not GGUF."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}", hint="check the path, or run `kvl pull`") from None
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not a GGUF file", hint="give the path of the .gguf file")
    if size < 24:
        raise ModelError(f"{path} is not a GGUF file ({size} bytes)", hint="give a .gguf model file")
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _read_header(_Cursor(buf, path))
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}", hint="check the file's permissions") from None


def _read_header(cur: _Cursor) -> GGUFInfo:
    if cur.take(4) != GGUF_MAGIC:
        raise ModelError(f"{cur.path} is not a GGUF file", hint="give a .gguf model file (llama.cpp format)")
    version = cur.unpack("<I")
    if version not in GGUF_VERSIONS:
        raise damaged(cur.path, f"GGUF version {version}, which llama.cpp does not read")
    n_tensors = cur.unpack("<Q")
    n_kv = cur.unpack("<Q")
    if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
        raise damaged(cur.path, f"the header claims {n_tensors:,} tensors and {n_kv:,} keys (no model has "
                                f"more than {_MAX_COUNT:,} of either)")
    claimed = n_tensors * _MIN_TENSOR + n_kv * _MIN_KV
    if claimed > cur.left:
        raise beyond_end(cur.path, f"the header claims {n_tensors:,} tensors and {n_kv:,} keys, more than "
                                   f"the file's {cur.size:,} bytes can hold", claimed)
    info = GGUFInfo(path=cur.path, version=version, n_tensors=n_tensors)
    for _ in range(n_kv):
        _read_entry(cur, info)
    _check_tensors(cur, n_tensors, _alignment(info))
    return info


def _read_entry(cur: _Cursor, info: GGUFInfo) -> None:
    key = cur.key()
    vtype = cur.unpack("<I")
    if vtype != _ARRAY:
        info.metadata[key] = cur.value(vtype)
        return
    itype = cur.unpack("<I")
    if itype == _STRING:
        count = info.array_lengths[key] = cur.length(repr(key), 8)
        if count <= _KEEP_ARRAY_MAX:
            info.metadata[key] = [cur.string() for _ in range(count)]
        else:
            cur.skip_strings(count)
    elif itype in _SCALARS:
        width = struct.calcsize(_SCALARS[itype])
        count = info.array_lengths[key] = cur.length(repr(key), width)
        if count <= _KEEP_ARRAY_MAX:
            info.metadata[key] = [cur.value(itype) for _ in range(count)]
        else:
            cur.skip(width * count)
    elif itype == _ARRAY:
        raise damaged(cur.path, f"{key!r} is an array of arrays, which llama.cpp does not read")
    else:
        raise damaged(cur.path, f"unknown GGUF value type {itype} in {key!r}")


def _alignment(info: GGUFInfo) -> int:
    value = info.metadata.get("general.alignment", 32)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value & (value - 1):
        raise damaged(info.path, f"general.alignment is {value!r}, not a power of two")
    return value


def _check_tensors(cur: _Cursor, n_tensors: int, alignment: int) -> None:
    """Walk the tensor table: every tensor's shape must be sane and its data must lie inside the file.
    Only the furthest end is kept, so memory does not grow with the count."""
    name, end = "", 0
    for _ in range(n_tensors):
        tensor, offset, nbytes = _tensor_span(cur)
        if offset + nbytes > end:
            name, end = tensor, offset + nbytes
    data_size = cur.size - -(-cur.pos // alignment) * alignment
    if end > data_size:
        raise beyond_end(cur.path, f"tensor {name}'s data ends {end - data_size:,} bytes past the end of the file",
                         end)


def _tensor_span(cur: _Cursor) -> tuple[str, int, int]:
    """One tensor's (name, data offset, data bytes), after checking its shape and type."""
    n = cur.length("a tensor name")
    if n > _NAME_MAX:
        raise damaged(cur.path, f"a tensor name of {n:,} bytes (llama.cpp allows {_NAME_MAX})")
    name = repr(cur.take(n).decode("utf-8", errors="replace"))  # quoted: a name may hold a newline
    n_dims = cur.unpack("<I")
    if n_dims > _MAX_DIMS:
        raise damaged(cur.path, f"tensor {name} has {n_dims:,} dimensions (at most {_MAX_DIMS})")
    dims = [cur.unpack("<q") for _ in range(n_dims)]
    ggml_type = cur.unpack("<I")
    offset = cur.unpack("<Q")
    return name, offset, _tensor_bytes(cur, name, dims, ggml_type)


def _tensor_bytes(cur: _Cursor, name: str, dims: list[int], ggml_type: int) -> int:
    """The data size the tensor claims; a shape beyond any real model, or beyond the file, is refused."""
    elements = 1
    for d in dims:
        if d < 0:
            raise damaged(cur.path, f"tensor {name} has a negative dimension ({d})")
        elements *= d
    if elements > _MAX_ELEMENTS or elements * _MIN_BITS_PER_WEIGHT / 8 > cur.size:
        raise damaged(cur.path, f"tensor {name} claims {elements:,} elements, more than the file's "
                                f"{cur.size:,} bytes can hold")
    if ggml_type in _REMOVED_TYPES or ggml_type >= _TYPE_LIMIT:
        raise damaged(cur.path, f"tensor {name} has an invalid type ({ggml_type})")
    if ggml_type not in GGML_BLOCKS:  # a type newer than this table: the compactest bound only
        return int(elements * _MIN_BITS_PER_WEIGHT / 8)
    block, block_bytes = GGML_BLOCKS[ggml_type]
    if dims and dims[0] % block:
        raise damaged(cur.path, f"tensor {name}'s rows ({dims[0]}) are not whole blocks of {block}")
    return elements // block * block_bytes
