from __future__ import annotations

from typing import Any

import click

from ..environment import Environment
from ..errors import UsageError
from ..options import BatchOptions
from ..render import LiveRenderer, make_renderer
from ..render.tee import RecordTee
from ..run.locate import LocateRun, check_query
from ..run.plan import make_plan
from ..run.runner import exit_code
from ..session import Session
from ..sidecars import with_sidecars
from ..tasks import locate_prompt
from ._common import pass_env, with_failures
from .flags import (
    common_options,
    documents_from,
    per_image_options,
    ray_from,
    sidecars_from,
    take,
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, required=True, metavar="IMAGE... QUERY")
@click.option("--point", is_flag=True, help="One point per object (where to click) instead of a box.")
@click.option("--draw", metavar="FILE|DIR", default=None,
              help="Also write each image with its numbered boxes and labels drawn (the original's size): to FILE "
              "for one image, into DIR (an existing folder) for several. Never over an input.")
@per_image_options()
@pass_env
def locate(env: Environment, args: tuple[str, ...], point: bool, draw: str | None, **kwargs: Any) -> int:
    """Find things in images: each match's box (or, with --point, a point) in pixels of the original.

    IMAGE as for caption (a PDF or multi-page TIFF: each page). QUERY (the last argument) says what to
    find; the thinking runs free, the answer is constrained to labelled boxes. In a pipe: one line per
    object, `x0 y0 x1 y1 label` (`x y label` with --point); --json adds `objects` to the record;
    nothing found: no line.

    \b
      kvl locate photo.jpg "every cat"
      kvl locate --point shot.png "the Save button"
      xdotool mousemove $(kvl locate --point shot.png "the Save button" | head -1 | cut -d' ' -f1,2)
      kvl locate --draw boxes/ --json photos/ "faces" > faces.jsonl
      kvl locate --draw pages/ report.pdf "the signature"   # per page, in its rendered pixels
    """
    kwargs["sidecars"] = sidecars_from(kwargs)
    documents = documents_from(kwargs)
    kwargs["schema"] = kwargs["choices"] = None  # locate shapes its own answer
    b = take(BatchOptions, kwargs)
    ray = ray_from(kwargs)
    common = common_options(kwargs)
    inputs, query = args[:-1], check_query(args[-1])
    if not inputs and not b.from_file:
        raise UsageError("give the images, then what to find", hint='e.g. kvl locate shot.png "the Save button"')
    if ray is not None:
        if draw is not None:
            raise UsageError("--draw writes its pictures from this machine", hint="drop --ray, or --draw")
        from ..distributed import run_on_ray

        return run_on_ray("locate", inputs, ray, common, env, batch=b, meta={"query": query, "point": point},
                          instruction=locate_prompt(query, point=point), point=point, documents=documents)
    plan = make_plan("locate", common, parallel=b.parallel)
    base = make_renderer(plan.render, env)
    run = LocateRun(plan, query, point=point, draw=draw, table=isinstance(base, LiveRenderer))
    renderer = with_sidecars(base, b.sidecars, "locate")
    if draw is not None:  # one tee for sidecars and drawings: its failures are the run's (with_failures)
        renderer = RecordTee(renderer, [run.sink]) if not isinstance(renderer, RecordTee) else renderer
        if run.sink not in renderer.sinks:
            renderer.sinks.append(run.sink)
    outcomes = Session(common.model, env=env).run_locate(run, inputs, b, renderer, run.meta,
                                                         dry_run=common.out.dry_run, documents=documents)
    return exit_code(with_failures(outcomes, renderer))


# the shared generation flags, but for --schema and --choices: locate's answer has its own shape
locate.params = [p for p in locate.params if p.name not in ("schema", "choices")]
