"""kvl on a Ray cluster: the same tasks, spread over many machines by Ray Data.

A run is a Ray Data pipeline. The inputs (files, directories, globs, ``--from`` lists, bucket URIs)
become a dataset; for videos a CPU stage finds each video's scenes and emits one row per scene;
an actor pool of engines (``map_batches`` with a class: the model loads once per worker) turns
rows into the records ``--json`` writes, and each worker writes its records to a part file in
``--output`` itself. The driver only keeps count: which inputs have a record, which failed, what
each worker is doing. Nothing here imports Ray until a command is run with ``--ray``.
"""

from __future__ import annotations

from typing import Any

from .options import RayOptions


def run_on_ray(*args: Any, **kwargs: Any) -> int:
    """See ``run.run_on_ray`` (imported when a command runs with --ray, so --help stays fast)."""
    from .run import run_on_ray as run

    return run(*args, **kwargs)


__all__ = ["RayOptions", "run_on_ray"]
