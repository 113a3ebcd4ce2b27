"""Loading: the text model, one context and one projector per worker.

In a CPU-only build the projectors load while the text model does: libmtmd needs only the
model's vocabulary and sizes, which a vocabulary-only load gives in a fraction of a second, and
both loads are single-threaded (reading, mapping), so two cores do them side by side. That side
load can also encode the first request's images (``early``): when the model has to come from
disk (a cold start), the encoder's seconds hide behind the reading. GPU backends are left to
initialise one at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import KvlError
from . import native, stop
from .gguf_info import read_gguf_info
from .llama_handles import Batch, Context, Model, Owned, backend_init
from .mtmd_handles import Projector
from .types import EngineConfig

EarlyWork = Callable[[Projector, Model, int], None]  # (projector, vocabulary model, n_embd)


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


@dataclass
class Loaded:
    """Everything a load made; ``close`` frees it (contexts and projectors before the models)."""

    model: Model
    contexts: list[Context]
    projectors: list[Projector]
    threads: int  # per worker
    gpu: bool
    vocab_model: Model | None = None
    made: list[Owned] = field(default_factory=list)

    def close(self) -> None:
        free_all(self.made)


@dataclass
class _Plan:
    gpu_build: bool
    use_gpu: bool
    workers: int
    threads: int  # per worker


def _plan(config: EngineConfig) -> _Plan:
    gpu = native.gpu_offload_supported()
    use_gpu = gpu and config.n_gpu_layers != 0
    threads = config.n_threads or native.physical_cores()
    workers = max(1, min(config.lanes, threads)) if not use_gpu else 1
    return _Plan(gpu, use_gpu, workers, max(1, threads // workers))


def load(config: EngineConfig, early: EarlyWork | None = None) -> Loaded:
    """Load the model, contexts and projectors; ``early`` runs on the side load with the first
    projector (CPU builds with one worker only: with several, one worker's encoder has a share of
    the cores and the others would wait for it)."""
    native.install_log_router(config.verbose)
    backend_init()
    plan = _plan(config)
    made: list[Owned] = []
    with ThreadPoolExecutor(1, thread_name_prefix="kvl-load") as side:
        projectors: Future[list[Projector]] | None = None
        if not plan.gpu_build:
            projectors = side.submit(_side_load, config, plan, made, early if plan.workers == 1 else None)
        try:
            return _main_load(config, plan, made, projectors)
        except BaseException:
            if projectors is not None:  # let it finish: what it made is freed with the rest
                with contextlib.suppress(BaseException):
                    projectors.result()
            free_all(made)
            raise


def _main_load(config: EngineConfig, plan: _Plan, made: list[Owned],
               projectors: Future[list[Projector]] | None) -> Loaded:
    model = Model(config.model, gpu_layers=config.n_gpu_layers if plan.gpu_build else 0, repack=config.repack)
    made.insert(0, model)  # first in the list: freed last
    contexts: list[Context] = [_keep(made, StoppableContext(model, config, max(1, config.parallel), plan.threads))
                               for _ in range(plan.workers)]
    if projectors is not None:
        mctxs = projectors.result()
    else:
        mctxs = _projectors(config, model, plan, made)
    vocab = next((h for h in made if isinstance(h, Model) and h is not model), None)
    return Loaded(model, contexts, mctxs, plan.threads, plan.use_gpu, vocab, made)


def _side_load(config: EngineConfig, plan: _Plan, made: list[Owned], early: EarlyWork | None) -> list[Projector]:
    vocab = _keep(made, Model(config.model, vocab_only=True))
    mctxs = _projectors(config, vocab, plan, made)
    if early is not None:
        # a vocabulary-only model reports no sizes: the header has the width
        n_embd = vocab.n_embd or read_gguf_info(config.model).text_embedding_length
        if n_embd:
            with contextlib.suppress(KvlError):  # the request itself will say what is wrong
                early(mctxs[0], vocab, n_embd)
    return mctxs


def _projectors(config: EngineConfig, model: Model, plan: _Plan, made: list[Owned]) -> list[Projector]:
    return [_keep(made, Projector(config, model, threads=plan.threads, use_gpu=plan.use_gpu))
            for _ in range(plan.workers)]


H = TypeVar("H", bound=Owned)


def _keep(made: list[Owned], handle: H) -> H:
    made.append(handle)  # from either loading thread: list.append is atomic
    return handle


def free_all(made: list[Owned]) -> None:
    """Projectors and contexts first, then the vocabulary-only model, the main model last."""
    def order(h: Owned) -> int:
        return 0 if isinstance(h, (Projector, Context)) else 2 if h is made[0] and isinstance(h, Model) else 1

    for handle in sorted(made, key=order):
        handle.close()
    made.clear()
