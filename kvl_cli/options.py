"""The typed options of a run: the model, the generation, the output, a batch. Plain data, made by the
commands from their flags (``commands.flags``) or by a library caller; ``plan`` turns them into what
the engine and the renderer need."""

from __future__ import annotations

from dataclasses import dataclass

GPU_PARALLEL = 4  # batches on a GPU: generating several answers together costs little more than one
CPU_LANES = 2  # batches on a CPU: two workers with half the cores each beat one with all of them


@dataclass(frozen=True)
class ModelOptions:
    model: str | None
    mmproj: str | None
    ctx: int
    threads: int | None
    gpu_layers: int
    repack: bool | None
    image_min_tokens: int | None
    image_max_tokens: int | None
    yes: bool
    cache: bool
    server: bool = True  # use a running `kvl serve` of the same model (see serve.client)


@dataclass(frozen=True)
class GenerationOptions:
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    max_tokens: int | None
    think_budget: int | None
    no_think: bool
    show_thinking: bool | None
    schema: str | None
    choices: str | None


@dataclass(frozen=True)
class OutputFlags:
    as_json: bool
    verbose: int
    debug: bool
    dry_run: bool


@dataclass(frozen=True)
class SidecarOptions:
    """``--sidecar txt|json|xmp`` (repeatable), ``--sidecar-dir DIR``, ``--overwrite`` (see ``sidecars``)."""

    kinds: tuple[str, ...]
    folder: str | None = None  # None: beside each input
    overwrite: bool = False


@dataclass(frozen=True)
class BatchOptions:
    from_file: str | None
    skip_done: str | None
    shard: tuple[int, int] | None
    parallel: int | None
    sidecars: SidecarOptions | None = None  # caption, ocr: files written beside each input (the resume mark)


@dataclass(frozen=True)
class CommonOptions:
    model: ModelOptions
    gen: GenerationOptions
    out: OutputFlags
