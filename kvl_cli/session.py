"""The library face: a model pair opened once, answering caption, ocr, ask and video.

``kvl_cli.open()`` gives a ``Session``. The commands are its first client: they parse flags, build
a run plan (``plan``), pick a renderer and call ``run_images`` or ``run_videos``, which write each
input's outcome through that renderer in input order. Library callers get ``api.Library``, a
session with ``caption``, ``ocr``, ``ask`` and ``video``, which run the same code with a renderer
that keeps the answers (``Answer``), or ``ask(..., stream=True)`` for one answer's events. The engine
loads on first use, once for every call that needs the same configuration, and ``close`` (or the
``with`` block's end) frees its native handles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from .engine.types import Answerer, EngineConfig, Request
from .environment import Environment
from .media.documents import DocumentOptions
from .media.images import InputProblem
from .options import BatchOptions, ModelOptions
from .render import Renderer
from .run.images import run_batch, run_image_jobs
from .run.locate import LocateRun, locate_inputs
from .run.plan import RunPlan
from .run.runner import Job, JobOutcome, load_engine
from .run.video import VideoRun
from .run.videos import VideoArgs
from .schema import AnswerGate
from .store.catalog import Pair
from .store.pull import ensure_model


class Session:
    """One model pair (``ModelOptions``: paths or names, context, threads, caches, server use)."""

    def __init__(self, model: ModelOptions, *, env: Environment | None = None, pair: Pair | None = None) -> None:
        """``pair``: the model's files when they are already found (a Ray worker's node pulls its own)."""
        self.model = model
        self.env = env or Environment()
        self._pair = pair
        self._engine: Answerer | None = None
        self._config: EngineConfig | None = None

    # -- the model pair and the engine ---------------------------------------------------------
    def pair(self, renderer: Renderer) -> Pair:
        """The pair's files and name, found once (offering to pull the default when none is installed)."""
        if self._pair is None:
            m = self.model
            self._pair = ensure_model(m.model, m.mmproj, renderer, yes=m.yes)
        return self._pair

    def engine(self, config: EngineConfig, renderer: Renderer, first: Request | None = None) -> Answerer:
        """The engine for ``config``, loaded now unless it already is (``first``: encoded during the load)."""
        if self._engine is None or self._config != config:
            self.close()
            self._engine = load_engine(config, renderer, cache=self.model.cache, encode_ahead=first)
            self._config = config
        return self._engine

    def answerer(self, config: EngineConfig, renderer: Renderer,
                 meta: dict[str, Any]) -> Callable[[Request | None], Answerer]:
        """The engine factory for ``config``: a running server's stand-in, else this process's engine."""
        return self._answerer(config, renderer, meta)

    def _answerer(self, config: EngineConfig, renderer: Renderer,
                  meta: dict[str, Any]) -> Callable[[Request | None], Answerer]:
        """A running ``kvl serve`` of the same pair (nothing loads here), else this process's engine."""
        local: Callable[[Request | None], Answerer] = lambda first: self.engine(config, renderer, first)  # noqa: E731
        if not self.model.server:
            return local
        from .serve.client import remote_engine

        return remote_engine(config, meta) or local

    def close(self) -> None:
        """Free the engine's contexts, projectors and model (a later call loads it again)."""
        if self._engine is not None:
            self._engine.close()
        self._engine, self._config = None, None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs: each input's outcome written through a renderer, in input order -----------------
    def run_images(self, plan: RunPlan, jobs: list[Job], problems: list[InputProblem], renderer: Renderer,
                   meta: dict[str, Any], *, dry_run: bool = False, gate: AnswerGate | None = None) -> list[JobOutcome]:
        """caption, ocr, ask and locate over jobs made already: every input checked, then the pair found,
        then each job run (or, with ``dry_run``, its prompt shown); one outcome per input, failures in
        place. ``gate``: the check each answer passes (locate's places its boxes)."""
        return run_image_jobs(plan, jobs, problems, renderer, meta, find_pair=lambda: self.pair(renderer),
                              engine_for=lambda config, fields: self._answerer(config, renderer, fields), env=self.env,
                              dry_run=dry_run, gate=gate)

    def run_batch(self, plan: RunPlan, inputs: tuple[str, ...], batch: BatchOptions, instruction: str,
                  renderer: Renderer, meta: dict[str, Any], *, dry_run: bool = False,
                  documents: DocumentOptions | None = None) -> list[JobOutcome]:
        """caption and ocr from the command line: arguments, ``--from``, stdin, ``--skip-done`` and
        ``--shard`` give one job per image with ``instruction``; as ``run_images`` from there."""
        return run_batch(plan, inputs, batch, instruction, renderer, meta, find_pair=lambda: self.pair(renderer),
                         engine_for=lambda config, fields: self._answerer(config, renderer, fields), env=self.env,
                         dry_run=dry_run, documents=documents)

    def run_locate(self, run: LocateRun, inputs: tuple[str, ...], batch: BatchOptions, renderer: Renderer,
                   meta: dict[str, Any], *, dry_run: bool = False,
                   documents: DocumentOptions | None = None) -> list[JobOutcome]:
        """kvl locate: the arguments, ``--from``, ``--skip-done`` and ``--shard`` give one job per image
        and per page of a document (``--draw`` checked now); as ``run_images`` from there, each answer
        placed by ``run``'s gate."""
        refs, problems = locate_inputs(run, inputs, batch, self.env, documents or DocumentOptions())
        if not refs and not problems and (batch.skip_done or batch.shard or batch.sidecars):
            return []  # everything is done or belongs to other shards
        return self.run_images(run.plan, run.jobs(refs), problems, renderer, meta, dry_run=dry_run, gate=run.gate)

    def run_videos(self, plan: RunPlan, inputs: list[str], args: VideoArgs, renderer: Renderer, *, instruction: str,
                   scenes: bool = False, fmt: str = "text", task_meta: dict[str, object] | None = None,
                   dry_run: bool = False, out: IO[str] | None = None) -> int:
        """kvl video (a summary, or scene captions in ``fmt`` on ``out``, stdout by default) and kvl ask
        VIDEO; the exit code."""
        run = VideoRun(plan.fit(), args, renderer, self.env, instruction=instruction, scenes=scenes, fmt=fmt,
                       task_meta=task_meta, out=out)
        return run.run(inputs, lambda: self.pair(renderer), lambda config: self.engine(config, renderer),
                       dry_run=dry_run)
