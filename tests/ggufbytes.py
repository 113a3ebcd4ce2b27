"""Hand-built GGUF bytes for header tests: every count and length can be told to lie."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_FORMATS = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
                  U64: "<Q", I64: "<q", F64: "<d"}


def gguf_string(text: str | bytes, claimed: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if claimed is None else claimed) + raw


def kv_scalar(key: str, vtype: int, value: object) -> bytes:
    return gguf_string(key) + struct.pack("<I", vtype) + struct.pack(SCALAR_FORMATS[vtype], value)


def kv_string(key: str, value: str, claimed: int | None = None) -> bytes:
    return gguf_string(key) + struct.pack("<I", STRING) + gguf_string(value, claimed)


def kv_array(key: str, itype: int, items: list, claimed: int | None = None) -> bytes:
    head = gguf_string(key) + struct.pack("<IIQ", ARRAY, itype, len(items) if claimed is None else claimed)
    if itype == STRING:
        return head + b"".join(gguf_string(s) for s in items)
    return head + b"".join(struct.pack(SCALAR_FORMATS[itype], v) for v in items)


def tensor_info(name: str, dims: list[int], ggml_type: int = 0, offset: int = 0, n_dims: int | None = None) -> bytes:
    return (gguf_string(name) + struct.pack("<I", len(dims) if n_dims is None else n_dims)
            + b"".join(struct.pack("<q", d) for d in dims) + struct.pack("<IQ", ggml_type, offset))


@dataclass
class Gguf:
    """A GGUF file: header, keys, tensor table, padding and data; ``n_*`` override the true counts."""

    kvs: list[bytes] = field(default_factory=list)
    tensors: list[bytes] = field(default_factory=list)
    data: bytes = b""
    version: int = 3
    n_kv: int | None = None
    n_tensors: int | None = None
    magic: bytes = b"GGUF"

    def to_bytes(self) -> bytes:
        head = self.magic + struct.pack("<IQQ", self.version,
                                        len(self.tensors) if self.n_tensors is None else self.n_tensors,
                                        len(self.kvs) if self.n_kv is None else self.n_kv)
        body = head + b"".join(self.kvs) + b"".join(self.tensors)
        return body + b"\0" * (-len(body) % 32) + self.data


def minimal_model(**overrides: object) -> Gguf:
    """A valid little text model header: one f32 tensor of 8 values."""
    g = Gguf(kvs=[kv_string("general.architecture", "llama"), kv_scalar("llama.embedding_length", U32, 8)],
             tensors=[tensor_info("w", [8])], data=b"\0" * 32)
    for k, v in overrides.items():
        setattr(g, k, v)
    return g
