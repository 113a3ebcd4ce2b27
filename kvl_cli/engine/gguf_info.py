"""Read a GGUF file's header without loading it, so bad model files fail in milliseconds.

Only the key/value section is parsed; tensor data is never touched. Large arrays (the
tokenizer's 160k strings) are skipped, not decoded.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError

GGUF_MAGIC = b"GGUF"
_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAY_MAX = 64  # arrays longer than this are skipped (value None), only their length kept


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
        value = self.metadata.get(f"{arch}.embedding_length") if arch else None
        return int(value) if value is not None else None

    @property
    def projection_dim(self) -> int | None:
        value = self.metadata.get("clip.vision.projection_dim")
        return int(value) if value is not None else None

    @property
    def context_length(self) -> int | None:
        arch = self.architecture
        value = self.metadata.get(f"{arch}.context_length") if arch else None
        return int(value) if value is not None else None

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else None


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise ModelError(
                f"{self.path} is truncated (the GGUF header ends early)",
                hint="the download may be incomplete: pull it again",
            )
        data = self.buf[self.pos:end]
        self.pos = end
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 24:
            raise ModelError(f"{self.path} has a corrupt GGUF header", hint="pull or convert it again")
        return self.take(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")  # read first: it moves pos
        self.pos += n

    def skip_strings(self, count: int) -> None:
        """Skip ``count`` strings (the tokenizer's 160k): a tight loop, no copies."""
        buf, pos, end = self.buf, self.pos, len(self.buf)
        length = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > end:
                pos = end + 1  # truncated
                break
            pos += 8 + length(buf, pos)[0]
        if pos > end:
            raise ModelError(f"{self.path} is truncated (the GGUF header ends early)",
                             hint="the download may be incomplete: pull it again")
        self.pos = pos

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        raise ModelError(f"{self.path} has an unknown GGUF value type {vtype}", hint="is it a GGUF file?")


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
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, path)
        if cur.take(4) != GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file", hint="give a .gguf model file (llama.cpp format)")
        version = cur.unpack("<I")
        n_tensors = cur.unpack("<Q")
        n_kv = cur.unpack("<Q")
        info = GGUFInfo(path=path, version=version, n_tensors=n_tensors)
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.unpack("<I")
            if vtype != _ARRAY:
                info.metadata[key] = cur.value(vtype)
                continue
            itype = cur.unpack("<I")
            count = cur.unpack("<Q")
            info.array_lengths[key] = count
            if itype == _STRING:
                if count <= _KEEP_ARRAY_MAX:
                    info.metadata[key] = [cur.string() for _ in range(count)]
                else:
                    cur.skip_strings(count)
            elif itype in _SCALARS:
                width = struct.calcsize(_SCALARS[itype])
                if count <= _KEEP_ARRAY_MAX:
                    info.metadata[key] = [cur.value(itype) for _ in range(count)]
                else:
                    cur.take(width * count)
            else:
                raise ModelError(f"{path} has nested GGUF arrays this reader does not know", hint="is it a GGUF file?")
        return info
