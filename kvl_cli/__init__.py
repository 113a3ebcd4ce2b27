"""kvl: local visual reasoning with Kimi-VL-A3B-Thinking through llama-cpp-python.

The command line is one client of this library::

    from kvl_cli import Engine, EngineConfig, GenerationSettings, Request
    from kvl_cli.media.images import InputRef, load_image

    with Engine(EngineConfig(model=Path("model.gguf"), mmproj=Path("mmproj.gguf"))) as engine:
        image = load_image(InputRef("photo.jpg", path=Path("photo.jpg")), max_tokens=1024)
        request = Request(user_text=engine.marker + "Describe this image.", images=[image])
        for event in engine.generate(request):
            ...  # PhaseEvent, TextEvent (thinking or answer delta), DoneEvent(result)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Engine": "kvl_cli.engine.engine",
    "EngineConfig": "kvl_cli.engine.types",
    "GenerationSettings": "kvl_cli.engine.types",
    "ImageInput": "kvl_cli.engine.types",
    "Request": "kvl_cli.engine.types",
    "Result": "kvl_cli.engine.types",
    "ReasoningSplitter": "kvl_cli.engine.reasoning",
}

if TYPE_CHECKING:  # pragma: no cover
    from .engine.engine import Engine  # noqa: F401
    from .engine.reasoning import ReasoningSplitter  # noqa: F401
    from .engine.types import EngineConfig, GenerationSettings, ImageInput, Request, Result  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import on first use: the engine loads a native library, which ``kvl --help`` should not wait for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY)
