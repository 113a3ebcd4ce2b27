"""What every worker needs to run its share: the task, the model options and the settings, decided
once on the driver and shipped to each worker; and the model, found (or pulled) on the worker's node."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.types import EngineConfig, GenerationSettings
from ..errors import ModelError
from ..media.documents import DocumentOptions
from ..options import ModelOptions
from ..run.plan import RunPlan
from ..run.videos import VideoArgs
from ..schema import AnswerSchema


@dataclass(frozen=True)
class WorkSpec:
    task: str  # caption | ocr | locate | video
    plan: RunPlan  # one worker's: its threads, its sequences, the settings and the answer schema
    meta: dict[str, Any]  # the task's own record fields (detail, format)
    instruction: str  # images: the prompt; scenes use SCENE_PROMPT
    output: str | None  # --output DIR, or None: records go back to the driver
    video: VideoArgs | None = None
    point: bool = False  # locate --point: points, not boxes
    documents: DocumentOptions = field(default_factory=DocumentOptions)  # --dpi, --password, --text-layer

    @property
    def model(self) -> ModelOptions:
        return self.plan.model

    @property
    def settings(self) -> GenerationSettings:
        return self.plan.settings

    @property
    def answer(self) -> AnswerSchema | None:
        return self.plan.answer

    @property
    def threads(self) -> int:  # per worker
        return int(self.plan.model.threads or 1)

    @property
    def parallel(self) -> int:  # sequences generated together by one worker (a GPU's batch)
        return int(self.plan.parallel or 1)

    def engine_config(self, model: Path, mmproj: Path) -> EngineConfig:
        return self.plan.engine_config(model, mmproj)


def node_model(model: str | None, mmproj: str | None) -> tuple[Path, Path, str]:
    """The model pair on this node: a path every node sees, or an installed name; a catalog name
    (or the default) that this node lacks is pulled and verified into its own kvl home first (the
    pull's file lock makes the node's other workers wait for that one download)."""
    from rich.console import Console

    from ..store.catalog import NoModelError, load_catalog, resolve
    from ..store.pull import run_pull

    try:
        return resolve(model, mmproj)
    except NoModelError:
        run_pull(err=Console(stderr=True, highlight=False))
        return resolve(model, mmproj)
    except ModelError:
        if model is None:
            raise
        name, _, quant = model.partition(":") if not model.startswith("hf:") else (model, "", "")
        if name not in load_catalog() and not model.startswith("hf:"):
            raise
        run_pull(name, quant=quant or None, err=Console(stderr=True, highlight=False))
        return resolve(model, mmproj)
