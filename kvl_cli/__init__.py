"""kvl: local visual reasoning with Kimi-VL-A3B-Thinking through llama-cpp-python.

The command line is one client of this library::

    import kvl_cli

    with kvl_cli.open(model="model.gguf", mmproj="mmproj.gguf") as kvl:
        for a in kvl.caption(["photo.jpg"], detail="short"):
            print(a.input, a.answer)
        print(kvl.ask(["photo.jpg"], "Is it a cat?", choices=["yes", "no"]).answer)

``open`` gives a session (``api.Library``): ``caption``, ``ocr``, ``ask`` (``stream=True`` for the
events of one answer) and ``video``. Below it, ``Engine`` answers ``Request``s as streams of events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "open": "kvl_cli.api",
    "Answer": "kvl_cli.api",
    "Library": "kvl_cli.api",
    "Session": "kvl_cli.session",
    "KvlError": "kvl_cli.errors",
    "Engine": "kvl_cli.engine.engine",
    "DoneEvent": "kvl_cli.engine.types",
    "PhaseEvent": "kvl_cli.engine.types",
    "TextEvent": "kvl_cli.engine.types",
    "EngineConfig": "kvl_cli.engine.types",
    "GenerationSettings": "kvl_cli.engine.types",
    "ImageInput": "kvl_cli.engine.types",
    "Request": "kvl_cli.engine.types",
    "Result": "kvl_cli.engine.types",
    "ReasoningSplitter": "kvl_cli.engine.reasoning",
}

if TYPE_CHECKING:  # pragma: no cover
    from .api import Answer, Library, open  # noqa: F401
    from .engine.engine import Engine  # noqa: F401
    from .engine.reasoning import ReasoningSplitter  # noqa: F401
    from .engine.types import (  # noqa: F401
        DoneEvent,
        EngineConfig,
        GenerationSettings,
        ImageInput,
        PhaseEvent,
        Request,
        Result,
        TextEvent,
    )
    from .errors import KvlError  # noqa: F401
    from .session import Session  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import on first use: the engine loads a native library, which ``kvl --help`` should not wait for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY)
