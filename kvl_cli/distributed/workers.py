"""The engine workers: Ray Data's actor pool runs one of these per worker, the model loaded once in
``__init__``; each call takes a batch of rows and gives back one summary row per input, after
writing the batch's records to a part file (``--output``) or handing them back to the driver.

The records are the ones ``--json`` writes: images go through the in-process batch (``run_jobs``
with the JSON renderer), scenes through the ordered emitter and ``SceneWriter``'s JSON Lines.
"""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from ..engine.types import PhaseEvent, Request
from ..environment import Environment
from ..errors import InputError, KvlError
from ..media import video_sandbox
from ..media.video import Scene, VideoInfo
from ..pages import page_key
from ..render import OutputOptions, phase_text
from ..render.stream import JsonRenderer
from ..run.documents import page_meta
from ..run.ordered import OrderedEmitter, Outcome, run_ordered
from ..run.runner import Job, prepare, run_jobs
from ..run.videos import ScenesInOrder, SceneWriter, frame_budget, frames_request
from ..schema import AnswerGate
from ..session import Session
from ..tasks import SCENE_PROMPT
from .inputs import Row, error_fields, image_ref, local_video, unpack
from .parts import Store, record_key, succeeded, write_current_part
from .spec import WorkSpec, node_model


class BoardRenderer(JsonRenderer):
    """The JSON renderer writing into memory; its status lines go to the driver's progress board."""

    def __init__(self, board: Any, worker: str) -> None:
        env = Environment(stdin=io.BytesIO(), stdout=io.StringIO(), stderr=io.StringIO(), stdin_isatty=False,
                          stdout_isatty=False, stderr_isatty=False, no_color=True)
        super().__init__(OutputOptions(json=True), env)
        self.board, self.worker = board, worker

    def status(self, label: str, detail: str = "") -> None:
        post(self.board, self.worker, f"{label} {detail}".strip())

    def take(self) -> list[dict[str, Any]]:
        """The records written since the last call."""
        text = ""
        for buf in (self.out, self.err_stream):  # stderr's lines (warnings, errors) are in the records
            assert isinstance(buf, io.StringIO)
            text = text or buf.getvalue()
            buf.seek(0)
            buf.truncate()
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def post(board: Any, worker: str, state: str) -> None:
    if board is not None:
        try:
            board.post.remote(worker, state)
        except Exception:  # noqa: BLE001 - progress is never worth failing an input for
            pass


class EngineWorker:
    """Loads the model once; ``__call__`` runs a batch and writes its part file."""

    def __init__(self, spec: WorkSpec, board: Any = None, round_id: str | None = None) -> None:
        self.spec, self.board, self.round_id = spec, board, round_id
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.renderer = BoardRenderer(board, self.name)
        self.store = Store(spec.output) if spec.output else None
        post(board, self.name, "loading model")
        # a model this node cannot have (a pull that failed its check, a file that does not load) fails
        # the inputs this worker takes, each with the reason: raised here, it would end every round
        # (Ray Data gives up on an actor that dies in its constructor) and the inputs' records would
        # only say that their worker was lost
        self.load_error: KvlError | None = None
        try:
            pair = node_model(spec.model.model, spec.model.mmproj)
            self.model_name = pair[2]
            self.config = spec.engine_config(*pair[:2])
            self.engine = Session(spec.model, pair=pair).engine(self.config, self.renderer)
        except KvlError as exc:
            self.load_error = exc
        self.renderer.take()
        post(board, self.name, "idle" if self.load_error is None else "no model")

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = unpack(batch)
        records = self.run(rows) if self.load_error is None else self.failed(rows, self.load_error)
        part = write_current_part(self.store, records, self.round_id) if self.store is not None and records else ""
        post(self.board, self.name, "idle")
        return {
            "key": [record_key(r) for r in records],
            "ok": [succeeded(r) for r in records],
            "file": [str(r.get("file", "")) for r in records],
            "scenes": [int(r.get("scenes") or 0) for r in records],
            "exit_code": [int(r.get("exit_code") or 0) for r in records],
            "record": ["" if part else json.dumps(r, ensure_ascii=False) for r in records],
            "part": [part] * len(records),
        }

    def run(self, rows: list[Row]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def failed(self, rows: list[Row], exc: KvlError) -> list[dict[str, Any]]:
        """A record per row, each with ``exc`` (a row that failed before it keeps its own error)."""
        raise NotImplementedError


class ImageWorker(EngineWorker):
    """caption / ocr: the rows are images; the records are exactly ``--json``'s."""

    def run(self, rows: list[Row]) -> list[dict[str, Any]]:
        records = {row["key"]: {"input": row["key"], **error_fields_of(row)} for row in rows if "error" in row}
        gate, on_images = self._gate()
        text_layer = self.spec.documents.text_layer
        refs = [image_ref(row, self.spec.documents) for row in rows if "error" not in row]
        jobs = [Job(label=ref.label, refs=[ref], instruction=self.spec.instruction, meta=page_meta(ref, text_layer),
                    on_images=on_images) for ref in refs]
        if jobs:
            meta = {"task": self.spec.task, "model": self.model_name, **self.spec.meta,
                    "image_max_tokens": self.config.image_max_tokens, "temperature": self.spec.settings.temperature,
                    "seed": self.spec.settings.seed}
            try:
                run_jobs(lambda first: self.engine, prepare(jobs, []), settings=self.spec.settings,
                         renderer=self.renderer, image_max_tokens=self.config.image_max_tokens, meta=meta,
                         parallel=self.spec.parallel, gate=gate)
            except KvlError as exc:  # the batch stopped: what finished is kept, the rest fails with it
                self.renderer.error("", exc)
            for rec in self.renderer.take():
                if rec.get("input"):
                    records[record_key(rec)] = rec
            for job in jobs:
                where = job.meta if job.page is not None else {}
                records.setdefault(page_key(job.label, job.page.number if job.page else None), {
                    "input": job.label, **{k: where[k] for k in ("page", "pages") if k in where}, **error_fields(
                        InputError(f"{job.label}: the worker stopped before it", hint="run the command again"))})
        return [records[row["key"]] for row in rows]

    def _gate(self) -> tuple[AnswerGate, Any]:
        """The check each answer passes, and (locate) the hook that keeps each image's geometry."""
        if self.spec.task != "locate":
            return AnswerGate(self.spec.answer), None
        from ..run.locate import GeometryKeeper, LocateGate

        gate = LocateGate(self.spec.point)
        return gate, GeometryKeeper(gate, self.spec.plan, draw=False)

    def failed(self, rows: list[Row], exc: KvlError) -> list[dict[str, Any]]:
        return [{"input": row["key"], **(error_fields_of(row) if "error" in row else error_fields(exc))}
                for row in rows]


def error_fields_of(row: Row) -> dict[str, Any]:
    return {"error": row["error"], "exit_code": row["exit_code"]}


class SceneRecords(ScenesInOrder):
    """The ordered emitter's sink for one batch of scenes: a JSON Lines record per scene."""

    def __init__(self, rows: list[Row], spec: WorkSpec, renderer: BoardRenderer) -> None:
        self.rows, self.renderer = rows, renderer
        self.gate = AnswerGate(spec.answer)
        self.records: dict[int, dict[str, Any]] = {}

    def progress(self, pos: int, ev: PhaseEvent) -> None:
        row = self.rows[pos]
        self.renderer.status(phase_text(ev)[0], f"{row['file']} scene {row['scene']}/{row['scenes']}")

    def done(self, pos: int, outcome: Outcome) -> None:
        row = self.rows[pos]
        outcome, extra = self.checked(outcome)
        base = {"file": row["file"], "scene": row["scene"], "start": round(row["start"], 3),
                "end": round(row["end"], 3)}
        if isinstance(outcome, KvlError):
            self.records[pos] = {**base, "caption": None, "scenes": row["scenes"], **error_fields(outcome)}
            return
        buf = io.StringIO()
        SceneWriter("jsonl", buf, multiple=False).write(row["file"], Scene(row["scene"], row["start"], row["end"]),
                                                        outcome.answer, outcome.thinking)
        self.records[pos] = {**json.loads(buf.getvalue()), **extra, "scenes": row["scenes"], "error": None}


class SceneWorker(EngineWorker):
    """video --scenes: the rows are scenes (or videos that failed before their scenes were found)."""

    def run(self, rows: list[Row]) -> list[dict[str, Any]]:
        failed = {i: {"file": row["key"], "scene": None, **error_fields_of(row)}
                  for i, row in enumerate(rows) if "error" in row}
        todo = [row for row in rows if "error" not in row]
        sink = SceneRecords(todo, self.spec, self.renderer)
        emitter = OrderedEmitter(sink)
        run_ordered(self.engine, self._requests(todo, emitter), emitter, self.spec.parallel)
        stopped = InputError("the worker stopped before this scene", hint="run the command again")
        done = iter(sink.records.get(i) or {"file": row["file"], "scene": row["scene"], **error_fields(stopped)}
                    for i, row in enumerate(todo))
        return [failed[i] if i in failed else next(done) for i in range(len(rows))]

    def failed(self, rows: list[Row], exc: KvlError) -> list[dict[str, Any]]:
        return [{"file": row["key"], "scene": None, **error_fields_of(row)} if "error" in row else
                {"file": row["file"], "scene": row["scene"], "start": round(row["start"], 3),
                 "end": round(row["end"], 3), "caption": None, "scenes": row["scenes"], **error_fields(exc)}
                for row in rows]

    def _requests(self, rows: list[Row], emitter: OrderedEmitter) -> Iterator[tuple[int, Request]]:
        args = self.spec.video
        assert args is not None
        per_frame = frame_budget(args.frames_per_scene, args.per_frame, self.config.n_ctx,
                                 self.spec.settings.max_tokens)
        for pos, row in enumerate(rows):  # frames are decoded here while the engine works on the others
            try:
                path = local_video(row)
                info = VideoInfo(path, **row["info"])
                sampled = video_sandbox.sample(path, info, max_frames=args.frames_per_scene, start=row["start"],
                                               end=max(row["end"], row["start"] + 1e-3))
                if not sampled.frames:
                    raise InputError(f"{row['file']}: no frame could be decoded in scene {row['scene']}",
                                     hint=sampled.warning or "the file looks damaged")
            except KvlError as exc:
                emitter.settle(pos, exc)
                continue
            yield pos, frames_request(self.engine.marker, sampled.frames, row["file"], SCENE_PROMPT, per_frame,
                                      self.spec.settings)
