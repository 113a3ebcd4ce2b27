"""What ``--ray [ADDRESS]``, ``--output DIR``, ``--ray-cpus N`` and ``--workers MIN..MAX`` asked for
(checked by Click in ``commands.flags`` before anything starts)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RayOptions:
    address: str
    output: str | None
    cpus: int | None
    workers: tuple[int, int] | None
    skip_done: str | None = None  # kvl video's --skip-done DIR (caption and ocr have their own option)
