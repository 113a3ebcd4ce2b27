"""``--ray [ADDRESS]``, ``--output DIR``, ``--ray-cpus N``, ``--workers MIN..MAX``: checked by Click,
before anything starts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import click

from ..errors import UsageError
from ..options import stack_options

ADDRESS = re.compile(r"^(auto|local|ray://\S+|\[?[\w.:-]+\]?:\d{1,5})$")


def parse_address(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> str | None:
    """``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT``. ``--ray photo.jpg`` (the flag
    swallowed the first input) is refused with the way out."""
    if value is None or ADDRESS.match(value):
        return value
    raise click.BadParameter(f"{value!r} is not a cluster address (auto, local, HOST:PORT or ray://HOST:PORT); "
                             "to use the running cluster, write --ray auto or put --ray after the inputs")


def parse_workers(ctx: click.Context | None, param: click.Parameter | None,
                  value: str | None) -> tuple[int, int] | None:
    """``N`` (a fixed pool) or ``MIN..MAX`` (an autoscaling pool)."""
    if value is None:
        return None
    low, _, high = value.partition("..")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not N or MIN..MAX (e.g. 4 or 2..16)") from None
    if not 1 <= lo <= hi:
        raise click.BadParameter(f"{value!r}: need 1 <= MIN <= MAX")
    return lo, hi


ray_options = stack_options(
    click.option("--ray", "ray", metavar="[ADDRESS]", is_flag=False, flag_value="auto", default=None,
                 callback=parse_address,
                 help="Run on a Ray cluster: auto (RAY_ADDRESS or the running cluster, the default), local (start "
                 "one on this machine, on loopback), or HOST:PORT [needs: pip install 'kvl[ray]']."),
    click.option("--output", "output", metavar="DIR", default=None,
                 help="With --ray: write JSON Lines part files into DIR (a path every node sees, or s3://, gs://…) "
                 "instead of streaming records to stdout."),
    click.option("--ray-cpus", type=click.IntRange(1, 1024), default=None,
                 help="With --ray on CPUs: CPUs (and threads) per worker [default: 1; two one-thread workers beat "
                 "one with two]. With a GPU build each worker takes one GPU."),
    click.option("--workers", metavar="N|MIN..MAX", default=None, callback=parse_workers,
                 help="With --ray: workers in the pool (MIN..MAX autoscales) [default: as many as the cluster's "
                 "CPUs or GPUs hold]."),
)

ray_video_options = stack_options(
    ray_options,
    click.option("--skip-done", "skip_done", metavar="DIR", default=None,
                 help="With --ray: skip scenes (and videos) that already have a successful record in DIR."),
)


@dataclass(frozen=True)
class RayOptions:
    address: str
    output: str | None
    cpus: int | None
    workers: tuple[int, int] | None
    skip_done: str | None = None  # kvl video's --skip-done DIR (caption and ocr have their own option)


def ray_from(kwargs: dict[str, Any], *, video: bool = False) -> RayOptions | None:
    """Pop the Ray options out of Click's kwargs: None without ``--ray`` (and then none of the others
    may be given)."""
    address = kwargs.pop("ray", None)
    output, cpus, workers = kwargs.pop("output", None), kwargs.pop("ray_cpus", None), kwargs.pop("workers", None)
    skip_done = kwargs.pop("skip_done", None) if video else None
    if address is None:
        given = [name for name, v in (("--output", output), ("--ray-cpus", cpus), ("--workers", workers),
                                      ("--skip-done", skip_done)) if v]
        if given:
            raise UsageError(f"{given[0]} works only with --ray", hint="add --ray auto (or --ray local)")
        return None
    return RayOptions(address, output, cpus, workers, skip_done)
