"""A llama.cpp context whose evaluations stop when a stop is requested (see ``stop``)."""

from __future__ import annotations

from . import native, stop
from .handles import Batch, Context, Model
from .types import EngineConfig


class StoppableContext(Context):
    """A context whose evaluations (prompt and generation) stop when a stop is requested."""

    def __init__(self, model: Model, config: EngineConfig, n_seq: int, threads: int) -> None:
        super().__init__(model, config, n_seq, threads)
        callback = stop.abort_callback()
        if callback is not None:
            native.llama().llama_set_abort_callback(self.ptr, callback, stop.flag_pointer())

    def decode(self, batch: Batch) -> int:
        rc = super().decode(batch)
        if rc != 0:
            stop.raise_if_stopped()
        return rc
