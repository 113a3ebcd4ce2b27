"""``kvl_cli.open()``: the library face for Python callers, in a dozen lines::

    import kvl_cli

    with kvl_cli.open(model="model.gguf", mmproj="mmproj.gguf") as kvl:
        for a in kvl.caption(["photo.jpg", "cat.png"], detail="short"):
            print(a.input, a.answer if a.ok else a.error)
        a = kvl.ask(["photo.jpg"], "How many people?", schema={"type": "object", ...})
        print(a.data)
        for event in kvl.ask(["photo.jpg"], "What is it?", stream=True):
            ...  # PhaseEvent, TextEvent (thinking or answer delta), DoneEvent(result)

Each call runs the commands' own code (``Session.run_images``/``run_videos``) with a renderer that
keeps the answers instead of printing them: the same checks, prompts, caches and schema gate.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .engine.types import Event, FailedEvent, Request, Result
from .environment import Environment
from .errors import KvlError
from .media.documents import DocumentOptions
from .media.images import VIDEO_EXTENSIONS, InputProblem, expand_inputs, load_image
from .options import BatchOptions, CommonOptions, GenerationOptions, ModelOptions, OutputFlags
from .pages import Page
from .render import OutputOptions, Renderer
from .render.tee import RecordTee
from .run.documents import expand_documents, question_job
from .run.images import per_image_jobs
from .run.locate import LocateRun
from .run.plan import make_plan
from .run.runner import Job, user_text
from .run.videos import VideoArgs
from .session import Session
from .tasks import VIDEO_PROMPT, VIDEO_QUESTION, caption_prompt, ocr_prompt

Media = str | Path


@dataclass
class Answer:
    """One input's outcome: the answer and thinking, ``data`` for a schema, or the ``error``."""

    input: str
    answer: str = ""
    thinking: str = ""
    data: Any = None
    error: KvlError | None = None
    result: Result | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class Collector(Renderer):
    """A renderer that keeps each input's outcome, in input order, and prints nothing."""

    def __init__(self, env: Environment) -> None:
        super().__init__(OutputOptions(), env)
        self.answers: list[Answer] = []

    def status(self, label: str, detail: str = "") -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def error(self, label: str, error: KvlError, *, page: Page | None = None,
              meta: dict[str, Any] | None = None) -> None:
        where = {"page": page.number, "pages": page.count} if page is not None else {}
        self.answers.append(Answer(label, error=error, meta={**where, **(meta or {})}))

    def end(self, label: str, result: Result, meta: dict[str, Any]) -> None:
        self.answers.append(Answer(label, result.answer, result.thinking, meta.get("data"), None, result, meta))


class Library(Session):
    """A ``Session`` with the calls a Python program makes (see the module's docstring)."""

    def _common(self, gen: dict[str, Any]) -> CommonOptions:
        schema, choices = gen.pop("schema", None), gen.pop("choices", None)
        options = GenerationOptions(
            temperature=gen.pop("temperature", 0.8), top_p=gen.pop("top_p", 1.0), top_k=gen.pop("top_k", 0),
            seed=gen.pop("seed", None), max_tokens=gen.pop("max_tokens", None),
            think_budget=gen.pop("think_budget", None), no_think=gen.pop("no_think", False), show_thinking=None,
            schema=json.dumps(schema) if isinstance(schema, dict) else schema,
            choices=",".join(choices) if isinstance(choices, (list, tuple)) else choices)
        if gen:
            raise TypeError(f"unknown option(s): {', '.join(sorted(gen))}")
        return CommonOptions(self.model, options, OutputFlags(as_json=False, verbose=0, debug=False, dry_run=False))

    def _images(self, task: str, jobs: list[Job], problems: list[InputProblem], gen: dict[str, Any],
                meta: dict[str, Any],
                parallel: int | None) -> list[Answer]:
        plan = make_plan(task, self._common(dict(gen)), parallel=parallel)
        lowest = min((job.image_tokens for job in jobs if job.image_tokens), default=None)
        if lowest is not None and lowest < plan.image_tokens:  # pages fitted to the context: the encoder's limit
            plan = replace(plan, image_tokens=lowest)
        collector = Collector(self.env)
        self.run_images(plan, jobs, problems, collector, meta)
        return collector.answers

    def _per_image(self, task: str, images: Sequence[Media], instruction: str, meta: dict[str, Any],
                   gen: dict[str, Any]) -> list[Answer]:
        documents = _documents(gen)
        refs, problems = expand_inputs([str(i) for i in images])
        refs, problems, _ = expand_documents(refs, problems, documents)
        return self._images(task, per_image_jobs(refs, instruction, text_layer=documents.text_layer), problems, gen,
                            meta, gen.pop("parallel", None))

    def caption(self, images: Sequence[Media], *, detail: str = "normal", **gen: Any) -> list[Answer]:
        """One caption per image (and per page of a PDF: ``pages=``, ``dpi=``, ``password=``), in order
        (``detail``: short, normal or long)."""
        return self._per_image("caption", images, caption_prompt(detail), {"detail": detail}, gen)

    def ocr(self, images: Sequence[Media], *, format: str = "text", **gen: Any) -> list[Answer]:
        """All visible text of each image and PDF page, in order (``format``: text or markdown;
        ``pages="1-3"``, ``dpi=``, ``password=``, ``text_layer=True`` as the flags); a page's ``Answer``
        has ``meta["page"]`` and ``meta["pages"]``."""
        return self._per_image("ocr", images, ocr_prompt(format), {"format": format}, gen)

    def locate(self, images: Sequence[Media], query: str, *, point: bool = False, draw: str | Path | None = None,
               **gen: Any) -> list[Answer]:
        """Where ``query`` is in each image: an ``Answer`` per image whose ``meta["objects"]`` holds each
        match's ``box`` (``[x0, y0, x1, y1]`` in pixels of the original; None with ``point=True``),
        ``point``, the same as fractions (``box_norm``, ``point_norm``) and its ``label``; ``draw``: a
        file (one image) or folder to draw the boxes into."""
        parallel = gen.pop("parallel", None)
        plan = make_plan("locate", self._common(dict(gen)), parallel=parallel)
        run = LocateRun(plan, query, point=point, draw=str(draw) if draw is not None else None)
        collector = Collector(self.env)
        renderer = RecordTee(collector, [run.sink]) if draw is not None else collector
        batch = BatchOptions(from_file=None, skip_done=None, shard=None, parallel=parallel)
        self.run_locate(run, tuple(str(i) for i in images), batch, renderer, run.meta)
        return collector.answers

    def ask(self, media: Sequence[Media], question: str, *, stream: bool = False,
            **gen: Any) -> Answer | Iterator[Event]:
        """One answer about the images together (or one video); ``schema=``/``choices=`` shape it;
        ``stream=True``: its events as they come instead."""
        labels = [str(m) for m in media]
        if len(labels) == 1 and labels[0].lower().endswith(tuple(VIDEO_EXTENSIONS)) and not stream:
            summary = self._video(labels[0], VIDEO_QUESTION + question, False, VideoArgs(), gen,
                                  {"task": "ask", "question": question})
            assert isinstance(summary, Answer)
            return summary
        if stream:
            return self._stream(labels, question, gen)
        documents = _documents(gen)
        refs, problems = expand_inputs(labels)
        refs, problems, _ = expand_documents(refs, problems, documents)
        plan = make_plan("ask", self._common(dict(gen)), parallel=1)
        jobs = [] if problems or not refs else [question_job(refs, question, plan)]
        return self._images("ask", jobs, problems, gen, {"question": question}, 1)[0]

    def _stream(self, labels: list[str], question: str, gen: dict[str, Any]) -> Iterator[Event]:
        documents = _documents(gen)
        plan = make_plan("ask", self._common(dict(gen)), parallel=1)
        refs, problems = expand_inputs(labels)
        refs, problems, _ = expand_documents(refs, problems, documents)
        if problems:
            raise problems[0].error
        job = question_job(refs, question, plan)  # a document's pages after their labels, fitted to the context
        plan = replace(plan, image_tokens=min(plan.image_tokens, job.image_tokens or plan.image_tokens))
        plan = plan.fit(1, len(refs))
        quiet = Collector(self.env)
        images = [load_image(ref, max_tokens=plan.image_tokens) for ref in refs]
        model, mmproj, _ = self.pair(quiet)
        engine = self.engine(plan.engine_config(model, mmproj), quiet)
        request = Request(user_text=user_text(engine.marker, len(images), question, job.image_labels), images=images,
                          settings=plan.settings)
        for _, ev in engine.generate_many([request], 1):
            if isinstance(ev, FailedEvent):
                raise ev.error
            yield ev

    def chat(self, media: Sequence[Media] = (), *, resume: Media | None = None, **gen: Any) -> ChatHandle:
        """A conversation on this session's model: ``c.ask("What is it?")`` answers one turn (an
        ``Answer``, its ``meta`` with ``turn`` and the reused prefix in ``result.cached``),
        ``c.command("/add cat.png")`` runs a slash command, ``c.save("talk.json")`` keeps it."""
        from .chat import open_chat

        collector = Collector(self.env)
        common = self._common(dict(gen))
        chat = open_chat(common, [str(m) for m in media], Path(resume) if resume is not None else None, self.env,
                         session=self, renderer=collector)
        return ChatHandle(chat, collector)

    def video(self, path: Media, *, prompt: str | None = None, scenes: bool = False,
              args: VideoArgs | None = None, **gen: Any) -> Answer | list[dict[str, Any]]:
        """A summary of the video (an ``Answer``), or with ``scenes=True`` one record per scene
        (``file``, ``scene``, ``start``, ``end``, ``caption``, as ``kvl video --scenes --json``)."""
        return self._video(str(path), prompt or VIDEO_PROMPT, scenes, args or VideoArgs(), gen, None)

    def _video(self, path: str, instruction: str, scenes: bool, args: VideoArgs, gen: dict[str, Any],
               task_meta: dict[str, object] | None) -> Answer | list[dict[str, Any]]:
        parallel = gen.pop("parallel", None)
        plan = make_plan("video", self._common(dict(gen)), parallel=parallel,
                         images_per_input=args.frames_per_scene, scenes=scenes)
        collector, out = Collector(self.env), io.StringIO()
        code = self.run_videos(plan, [path], args, collector, instruction=instruction, scenes=scenes, fmt="jsonl",
                               out=out, task_meta=task_meta)
        if scenes:
            if code and collector.answers:
                raise collector.answers[0].error or KvlError("the video failed")
            return [json.loads(line) for line in out.getvalue().splitlines()]
        return collector.answers[0]


def _documents(gen: dict[str, Any]) -> DocumentOptions:
    """``pages=``, ``dpi=``, ``password=`` (else ``KVL_PDF_PASSWORD``) and ``text_layer=`` out of a call's options."""
    dpi = gen.pop("dpi", None)
    return DocumentOptions(pages=gen.pop("pages", None), dpi=float(dpi) if dpi else None,
                           password=gen.pop("password", None) or os.environ.get("KVL_PDF_PASSWORD") or None,
                           text_layer=bool(gen.pop("text_layer", False)))


class ChatHandle:
    """``Library.chat``'s conversation (see there)."""

    def __init__(self, chat: Any, collector: Collector) -> None:
        self._chat = chat
        self._collector = collector

    def ask(self, question: str) -> Answer:
        record = self._chat.ask(question)
        if record.error is not None:
            return Answer(f"turn {self._chat.turn_no}", error=record.error)
        return self._collector.answers[-1]

    def command(self, line: str) -> str:
        """A slash command (``/add``, ``/drop``, ``/think``...): what it did; raises ``KvlError``."""
        from .chat.commands import run_command

        return run_command(self._chat.state, line)[1]

    def save(self, path: Media) -> None:
        self._chat.conv.save(Path(path))

    @property
    def turns(self) -> int:
        return len(self._chat.conv.turns)


def open(model: str | Path | None = None, mmproj: str | Path | None = None, *, ctx: int = 16384,
         threads: int | None = None, gpu_layers: int = -1, image_max_tokens: int | None = None,
         image_min_tokens: int | None = None, cache: bool = True, server: bool = False, pull: bool = False,
         env: Environment | None = None) -> Library:
    """A session over a model pair: ``model`` a .gguf path or an installed name (None: the pulled
    default), ``mmproj`` its projector (None: the pair's). ``server=True`` answers through a running
    ``kvl serve`` of the same pair; ``pull=True`` downloads the default pair when none is installed."""
    options = ModelOptions(model=str(model) if model is not None else None,
                           mmproj=str(mmproj) if mmproj is not None else None, ctx=ctx, threads=threads,
                           gpu_layers=gpu_layers, repack=None, image_min_tokens=image_min_tokens,
                           image_max_tokens=image_max_tokens, yes=pull, cache=cache, server=server)
    return Library(options, env=env)
