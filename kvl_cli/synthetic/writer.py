"""GGUF writing shared by the toy and full-size writers: open, typed metadata, finish."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


def open_writer(path: Path, arch: str):  # type: ignore[no-untyped-def]
    import gguf

    return gguf.GGUFWriter(str(path), arch)


def add_metadata(w: Any, entries: Iterable[tuple[str, Any]]) -> None:
    """Add keys in order, each typed by its Python value: bool, uint32, float32, string or array."""
    for key, value in entries:
        if isinstance(value, bool):  # before int: bool is an int
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)


def finish(w: Any) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
