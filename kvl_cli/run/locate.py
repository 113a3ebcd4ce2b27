"""``kvl locate IMAGE... QUERY``: where things are, in pixels of each original image.

The thinking runs free; the answer is constrained (llguidance) to ``{"objects": [{"label", "bbox_2d":
[x0, y0, x1, y1]}]}`` (``--point``: ``"point_2d": [x, y]``), fractions of what the model saw (Kimi-VL's
convention, see ``tasks``). Each image's geometry is kept when it is decoded (``Job.on_images``): its
size as a person sees it (EXIF orientation applied), kvl's scaling and the encoder's canvas and padding
(``media.geometry``), so every box maps back to the original's pixels, clamped inside it, x0 <= x1 and
y0 <= y1. One job per image, as ``caption``: ``--from``, ``--skip-done``, ``--shard``, ``--parallel``,
sidecars and a running ``kvl serve`` (the constraint goes as ``kvl.grammar``) work the same way.

1) the query, the flags and ``--draw`` checked (exit 2 before anything loads); 2) the inputs expanded
and each job given its geometry hook; 3) the run, whose gate validates each answer and places its
objects; 4) each record drawn (``--draw``) as it ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..engine.reasoning import Section
from ..engine.types import Constraint, ConstraintKind, ImageInput, Result, TextEvent
from ..errors import UsageError
from ..limits import is_regular
from ..media.documents import DocumentOptions
from ..media.geometry import ImageGeometry
from ..media.images import InputProblem, InputRef
from ..safetext import one_line
from ..schema import AnswerGate, AnswerSchema, checked
from ..tasks import locate_prompt
from .batch import _replace_problems, batch_inputs, done_pages, done_records
from .documents import expand_documents, page_meta
from .draw import DrawSink, Key, Source, draw_targets, ref_key, without_drawings
from .plan import RunPlan
from .runner import Job

MAX_OBJECTS = 32
MAX_LABEL = 40  # "a short label"; it also keeps a weak model's 32 objects within the token budget


def locate_schema(point: bool) -> AnswerSchema:
    """The answer's shape: a list of labelled boxes (or points), fractions 0-1 of the image."""
    key, n = ("point_2d", 2) if point else ("bbox_2d", 4)
    coords = {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": n, "maxItems": n}
    item = {"type": "object", "required": ["label", key],
            "properties": {"label": {"type": "string", "minLength": 1, "maxLength": MAX_LABEL}, key: coords}}
    return checked({"type": "object", "required": ["objects"],
                    "properties": {"objects": {"type": "array", "items": item, "maxItems": MAX_OBJECTS}}})


def locate_grammar(point: bool) -> Constraint:
    """What the answer is constrained with: ``locate_schema``'s shape as compact JSON, written as a
    grammar so that a coordinate has at most 4 decimals (JSON Schema cannot bound a number's digits,
    and a weak model would write 1.000… to the token limit). The schema still validates the answer."""
    key, n = ("point_2d", 2) if point else ("bbox_2d", 4)
    coords = ' "," '.join(["NUM"] * n)
    lark = "\n".join([
        f'start: "{{\\"objects\\":[" (obj ("," obj){{0,{MAX_OBJECTS - 1}}})? "]}}"',
        f'obj: "{{\\"label\\":" label ",\\"{key}\\":[" {coords} "]}}"',
        f'label: %json {{"type": "string", "minLength": 1, "maxLength": {MAX_LABEL}}}',
        r"NUM: /0(\.[0-9]{1,4})?|1(\.0{1,4})?/",
    ])
    return Constraint(ConstraintKind.GRAMMAR, lark)


@dataclass(frozen=True)
class Located:
    """One object in source pixels: ``box`` (None with ``--point``) and ``point`` (a box's centre)."""

    label: str
    point: tuple[int, int]
    point_norm: tuple[float, float]
    box: tuple[int, int, int, int] | None = None
    box_norm: tuple[float, float, float, float] | None = None

    def record(self, image: str | None = None) -> dict[str, Any]:
        rec: dict[str, Any] = {"label": self.label, "box": list(self.box) if self.box else None,
                               "box_norm": list(self.box_norm) if self.box_norm else None,
                               "point": list(self.point), "point_norm": list(self.point_norm)}
        return {**rec, "image": image} if image is not None else rec


def place(obj: dict[str, Any], geo: ImageGeometry, point: bool) -> Located:
    """A validated answer object mapped to ``geo``'s source pixels."""
    sw, sh = geo.source
    label = " ".join(str(obj["label"]).split()) or "object"  # a blank label would leave a line's end empty

    def norm(x: float, y: float) -> tuple[float, float]:
        return round(x / sw, 4), round(y / sh, 4)

    if point:
        x, y = geo.to_source(*obj["point_2d"])
        return Located(label, (round(x), round(y)), norm(x, y))
    fx0, fy0, fx1, fy1 = obj["bbox_2d"]
    x0, y0 = geo.to_source(min(fx0, fx1), min(fy0, fy1))
    x1, y1 = geo.to_source(max(fx0, fx1), max(fy0, fy1))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return Located(label, (round(cx), round(cy)), norm(cx, cy), (round(x0), round(y0), round(x1), round(y1)),
                   (*norm(x0, y0), *norm(x1, y1)))


def pipe_lines(objects: list[Located]) -> str:
    """``x0 y0 x1 y1 label`` (``x y label`` for points), one line per object: for cut, awk, xdotool."""
    return "\n".join(" ".join(map(str, o.box or o.point)) + f" {one_line(o.label)}" for o in objects)


def markdown_table(objects: list[Located]) -> str:
    """The terminal's view: a small table (the live renderer draws Markdown)."""
    if not objects:
        return "*nothing found*"
    points = objects[0].box is None
    head = "| # | label | x | y |\n|--:|---|--:|--:|" if points else \
        "| # | label | x0 | y0 | x1 | y1 |\n|--:|---|--:|--:|--:|--:|"
    rows = [f"| {i} | {one_line(o.label).replace('|', '/')} | " + " | ".join(map(str, o.box or o.point)) + " |"
            for i, o in enumerate(objects, 1)]
    return "\n".join([head, *rows])


class LocateGate(AnswerGate):
    """The schema's check, then each object placed in its image's pixels (``objects`` in the record)."""

    def __init__(self, point: bool, *, table: bool = False, several: bool = False) -> None:
        super().__init__(locate_schema(point))
        self.point, self.table, self.several = point, table, several
        # each image's geometry by input and page, in job order (an input given twice, a page too)
        self.geometry: dict[tuple[str, int | None], deque[ImageGeometry]] = {}

    def check(self, result: Result, label: str = "",
              page: int | None = None) -> tuple[Result, TextEvent | None, dict[str, Any]]:
        geo = self.geometry[(label, page)].popleft()  # first: an answer the schema refuses has used its image's too
        result, _, extra = super().check(result, label, page)
        objects = [place(o, geo, self.point) for o in extra["data"]["objects"]]
        text = markdown_table(objects) if self.table else pipe_lines(objects)
        shown = TextEvent(Section.ANSWER, text) if text else None
        if self.table:  # a terminal's view shows the finished answer: the table, not the JSON
            result = replace(result, answer=text)
        return result, shown, {**extra, "objects": [o.record(label if self.several else None) for o in objects]}


def plan_for_locate(plan: RunPlan, point: bool) -> RunPlan:
    """The task's plan with its own answer shape (``--schema``/``--choices`` are not locate's flags)."""
    return replace(plan, answer=locate_schema(point), settings=replace(plan.settings, constraint=locate_grammar(point)))


class GeometryKeeper:
    """``Job.on_images`` for locate: each image's geometry for the gate, and its source for ``--draw``."""

    def __init__(self, gate: LocateGate, plan: RunPlan, draw: bool) -> None:
        self.gate, self.draw = gate, draw
        self.min_tokens, self.max_tokens = plan.model.image_min_tokens, plan.image_tokens
        self.sources: dict[Key, Source] = {}

    def __call__(self, job: Job, images: list[ImageInput]) -> None:
        img, ref = images[0], job.refs[0]
        geo = ImageGeometry(img.source_size or (img.width, img.height), (img.width, img.height), self.min_tokens,
                            self.max_tokens)
        page = job.page.number if job.page is not None else None
        self.gate.geometry.setdefault((job.label, page), deque()).append(geo)
        if self.draw:  # a page is drawn on as rendered for the model: its boxes are in those pixels
            self.sources[ref_key(ref)] = (img.width, img.height, img.rgb) if ref.page is not None else \
                ref.path if ref.path is not None and is_regular(ref.path) else ref.read_bytes()


def locate_jobs(refs: list[InputRef], instruction: str, keeper: GeometryKeeper, meta: dict[str, Any]) -> list[Job]:
    """One job per image, and per page of a document (``page``, ``pages`` in its record)."""
    return [Job(label=ref.label, refs=[ref], instruction=instruction, meta={**meta, **page_meta(ref, False)},
                on_images=keeper) for ref in refs]


def same_search(query: str, point: bool) -> Callable[[dict[str, Any]], bool]:
    """For ``--skip-done``: a record is done only if it answered this query, in this mode (boxes or points)."""
    return lambda rec: rec.get("query") == query and bool(rec.get("point", False)) is point


def check_query(query: str) -> str:
    query = " ".join(query.split())
    if not query:
        raise UsageError("no query given: say what to find", hint='e.g. kvl locate shot.png "the Save button"')
    return query


class LocateRun:
    """One ``kvl locate`` run's parts: its plan, gate, geometry hook and ``--draw`` sink."""

    def __init__(self, plan: RunPlan, query: str, *, point: bool = False, draw: str | None = None,
                 table: bool = False) -> None:
        self.query = check_query(query)
        self.point, self.draw = point, draw
        self.plan = plan_for_locate(plan, point)
        self.gate = LocateGate(point, table=table)
        self.keeper = GeometryKeeper(self.gate, self.plan, draw is not None)
        self.sink = DrawSink({}, self.keeper.sources)

    @property
    def instruction(self) -> str:
        return locate_prompt(self.query, point=self.point)

    def jobs(self, refs: list[InputRef]) -> list[Job]:
        """One job per image; with ``--draw`` where each drawing goes, checked now (UsageError)."""
        if self.draw is not None and refs:
            self.sink.targets.update(draw_targets(refs, self.draw))
        self.gate.several = len(refs) > 1
        return locate_jobs(refs, self.instruction, self.keeper, self.meta)

    @property
    def meta(self) -> dict[str, Any]:
        """The record's fields that say what was looked for: ``query``, ``point`` (``--skip-done`` reads them)."""
        return {"query": self.query, "point": self.point}


def locate_inputs(run: LocateRun, inputs: tuple[str, ...], batch: Any, env: Any,
                  documents: DocumentOptions) -> tuple[list[InputRef], list[InputProblem]]:
    """The inputs to run: the arguments and ``--from``, less those ``--skip-done`` holds for this query
    and mode, kvl's own drawings in the ``--draw`` folder, and the other shards'; each document's
    selected pages (those not done) in its place."""
    done = done_records(batch, same_search(run.query, run.point))
    refs, problems = batch_inputs(inputs, batch, env, "locate", done)
    kept, drawings = without_drawings(refs, run.draw)
    problems, refs = _replace_problems(problems, refs, kept, None), kept
    if drawings:
        env.stderr.write(f"kvl: skipping {drawings} drawing{'s' if drawings != 1 else ''} of kvl locate's "
                         f"in {run.draw}\n")
    refs, problems, skipped = expand_documents(refs, problems, documents, done_pages(batch, "locate", done))
    if skipped:
        env.stderr.write(f"kvl: skipping {skipped} page{'s' if skipped != 1 else ''} already done; "
                         f"{len(refs)} to run\n")
    return refs, problems
