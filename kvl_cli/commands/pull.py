from __future__ import annotations

from pathlib import Path

from ..catalog import resolve
from ..render import Renderer


def ensure_model(model: str | None, mmproj: str | None, renderer: Renderer) -> tuple[Path, Path, str]:
    return resolve(model, mmproj)
