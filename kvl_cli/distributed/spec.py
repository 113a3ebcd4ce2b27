"""What every worker needs to run its share: the task, the model options and the settings, decided
once on the driver and shipped to each worker; and the model, found (or pulled) on the worker's node."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..engine.types import EngineConfig, GenerationSettings
from ..errors import ModelError
from ..options import ModelOptions
from ..schema import AnswerSchema
from ..videos import PROMPT_RESERVE, VideoArgs


@dataclass(frozen=True)
class WorkSpec:
    task: str  # caption | ocr | video
    model: ModelOptions
    settings: GenerationSettings
    answer: AnswerSchema | None
    meta: dict[str, Any]  # the task's own record fields (detail, format)
    instruction: str  # images: the prompt; scenes use SCENE_PROMPT
    threads: int  # per worker
    parallel: int  # sequences generated together by one worker (a GPU's batch)
    output: str | None  # --output DIR, or None: records go back to the driver
    video: VideoArgs | None = None
    verbose: int = 0

    def engine_config(self, model: Path, mmproj: Path) -> EngineConfig:
        m = replace(self.model, threads=self.threads)
        per_image = self.video.per_frame if self.video is not None else None
        config = m.engine_config(self.task, model, mmproj, verbose=self.verbose, parallel=self.parallel, lanes=1,
                                 image_max_tokens=per_image)
        if self.parallel > 1:  # each sequence gets the cells one input can use, not --ctx each
            if self.video is not None:
                need = self.video.frames_per_scene * (self.video.per_frame + 16) + PROMPT_RESERVE
            else:
                need = (config.image_max_tokens or 1024) + 512
            need += self.settings.max_tokens
            config.n_ctx = min(config.n_ctx, -(-need // 256) * 256)
        return config


def node_model(model: str | None, mmproj: str | None) -> tuple[Path, Path, str]:
    """The model pair on this node: a path every node sees, or an installed name; a catalog name
    (or the default) that this node lacks is pulled and verified into its own kvl home first (the
    pull's file lock makes the node's other workers wait for that one download)."""
    from rich.console import Console

    from ..catalog import NoModelError, load_catalog, resolve
    from ..commands.pull import run_pull

    try:
        return resolve(model, mmproj)
    except NoModelError:
        run_pull(None, None, None, None, None, False, Console(stderr=True, highlight=False))
        return resolve(model, mmproj)
    except ModelError:
        if model is None:
            raise
        name, _, quant = model.partition(":") if not model.startswith("hf:") else (model, "", "")
        if name not in load_catalog() and not model.startswith("hf:"):
            raise
        run_pull(name, quant or None, None, None, None, False, Console(stderr=True, highlight=False))
        return resolve(model, mmproj)
