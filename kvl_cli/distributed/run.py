"""``--ray``: the driver. Plans the run, starts or joins the cluster, runs the pipeline in rounds
until every input has its one record, and answers with the batch's exit code.

A round is one Ray Data execution over the inputs still missing. A worker that dies mid-batch is
not restarted in place (it would wait for a node that may never come back, holding its batch):
the pool goes on without it, and its batch, counted missing, runs in the next round on whatever
workers exist then.
A round that fails as a whole (a node lost with results on it) is followed by another over what
the parts and the received rows do not hold. After ``MAX_ROUNDS`` an input still missing gets a
record with its error: every input appears exactly once.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from ..environment import Environment
from ..errors import KvlError, UsageError
from ..media.documents import DocumentOptions
from ..options import BatchOptions, CommonOptions
from ..run.plan import uses_gpu
from ..run.videos import VideoArgs
from .cluster import cluster_resources, connect, disconnect, largest_node_cpus
from .inputs import Row, error_fields, pack
from .options import RayOptions
from .parts import Store, close_rounds, dedupe, open_round, write_part
from .plan import make_spec, plan_rows, refuse_unsupported
from .progress import Board, Progress
from .scenes import SCENE_STAGE_CPUS, find_scenes
from .spec import WorkSpec
from .tally import Tally

MAX_ROUNDS = int(os.environ.get("KVL_RAY_ROUNDS", "5"))
PAUSE_S = 5.0  # after a round that failed as a whole: time for Ray to declare a lost node dead
MAX_BATCH = 16


def run_on_ray(task: str, inputs: tuple[str, ...], ray_opts: RayOptions, common: CommonOptions, env: Environment, *,
               batch: BatchOptions | None = None, meta: dict[str, Any] | None = None, instruction: str = "",
               video: VideoArgs | None = None, scenes: bool = False, fmt: str = "text",
               parallel: int | None = None, documents: DocumentOptions | None = None, point: bool = False) -> int:
    """caption / ocr / locate / video --scenes on a Ray cluster; the exit code as for a batch."""
    refuse_unsupported(ray_opts, common, batch, video, scenes, fmt)
    gpu = uses_gpu(common.model)
    spec = make_spec(task, common, ray_opts, meta=meta or {}, instruction=instruction, video=video,
                     parallel=parallel if parallel is not None else (batch.parallel if batch else None), gpu=gpu,
                     documents=documents, point=point)
    rows = plan_rows(inputs, batch, ray_opts, env, video=video is not None, documents=documents)
    if not rows:
        return 0
    if ray_opts.output is not None:
        Store(ray_opts.output).ensure()
    t0 = time.monotonic()
    ray = connect(ray_opts.address, local_cpus=os.cpu_count() or 1, verbose=common.out.verbose > 0)
    if common.out.verbose:
        cpus, gpus = cluster_resources(ray)
        env.stderr.write(f"kvl: Ray cluster ready in {time.monotonic() - t0:.1f} s ({cpus:g} CPUs, {gpus:g} GPUs)\n")
    try:
        driver = Driver(ray, spec, ray_opts, env, gpu=gpu and cluster_resources(ray)[1] > 0)
        code = driver.run(rows)
        if fmt in ("srt", "vtt") and ray_opts.output is not None:
            from .subtitles import write_subtitles

            write_subtitles(ray, Store(ray_opts.output), [r["key"] for r in rows], fmt)
        return code
    finally:
        disconnect(ray_opts.address)


class Driver:
    def __init__(self, ray: Any, spec: WorkSpec, ray_opts: RayOptions, env: Environment, *, gpu: bool) -> None:
        self.ray, self.spec, self.opts, self.env, self.gpu = ray, spec, ray_opts, env, gpu
        self.video = spec.video is not None
        self.store = Store(ray_opts.output) if ray_opts.output else None
        self.run_id = uuid.uuid4().hex[:12]

    def pool(self, n_rows: int) -> tuple[int, int, int]:
        """(fewest workers, most workers, rows per batch)."""
        cpus, gpus = cluster_resources(self.ray)
        if not self.gpu and largest_node_cpus(self.ray) < self.spec.threads:
            raise UsageError(f"--ray-cpus {self.spec.threads}: no node of the cluster has that many CPUs",
                             hint=f"use --ray-cpus {max(1, int(largest_node_cpus(self.ray)))} or fewer")
        fits = int(gpus) if self.gpu else int(cpus // self.spec.threads)
        lo, hi = self.opts.workers or (max(1, fits), max(1, fits))
        estimate = n_rows * (8 if self.video else 1)  # scenes per video: a guess, for the batch size only
        batch = max(self.spec.parallel, min(MAX_BATCH, estimate // (hi * 4)))
        hi = min(hi, max(1, -(-estimate // batch)))
        return min(lo, hi), hi, batch

    def dataset(self, rows: list[Row], round_id: str | None = None) -> Any:
        from .workers import ImageWorker, SceneWorker

        rd = self.ray.data
        lo, hi, batch = self.pool(len(rows))
        ds = rd.from_items([pack(r) for r in rows], override_num_blocks=max(1, min(len(rows), 2000)))
        if self.video:  # scene rows first, a block per batch (an engine's unit of work), then the engines
            ds = ds.flat_map(find_scenes, fn_kwargs={"args": self.spec.video}, num_cpus=SCENE_STAGE_CPUS)
            ds = ds.repartition(target_num_rows_per_block=batch).materialize()
        resources = {"num_gpus": 1} if self.gpu else {"num_cpus": self.spec.threads}
        return ds.map_batches(SceneWorker if self.video else ImageWorker, batch_size=batch,
                              fn_constructor_kwargs={"spec": self.spec, "board": self.board, "round_id": round_id},
                              compute=rd.ActorPoolStrategy(min_size=lo, max_size=hi, max_tasks_in_flight_per_actor=1),
                              max_restarts=0, **resources)

    def run(self, rows: list[Row]) -> int:
        self.board = self.ray.remote(num_cpus=0)(Board).remote()
        tally = Tally.of(rows, self.video)
        progress = Progress(self.env.stderr, bool(self.env.stderr_isatty), "scenes" if self.video else "inputs",
                            0 if self.video else len(rows), self.board)
        progress.start()
        try:
            pending = rows
            for attempt in range(1, MAX_ROUNDS + 1):
                if not self.round(pending, tally, progress, attempt) and attempt < MAX_ROUNDS:
                    time.sleep(PAUSE_S * attempt)
                pending = tally.missing()
                if not pending:
                    break
                progress.note(f"{len(pending)} inputs without a record after round {attempt} (a worker or node "
                              f"was lost){'; running them again' if attempt < MAX_ROUNDS else ''}")
            self.close()
            self.give_up(pending, tally, progress)
        finally:
            progress.stop()
        return tally.exit_code()

    def round(self, rows: list[Row], tally: Tally, progress: Progress, attempt: int) -> bool:
        """One execution over ``rows``; False when it failed as a whole (its records are then looked
        for in the parts)."""
        finished = True
        if self.video:
            progress.note(f"finding the scenes of {len(rows)} videos")
        round_id = None
        if self.store is not None:
            round_id = f"{self.run_id} {attempt}"
            open_round(self.store, round_id)
        try:
            for row in self.dataset(rows, round_id).iter_rows():
                if tally.add(row["key"], bool(row["ok"]), row["file"], int(row["scenes"]), int(row["exit_code"])):
                    progress.add(bool(row["ok"]))
                    self.emit(row["record"])
        except (KeyboardInterrupt, KvlError):
            raise
        except Exception as exc:  # noqa: BLE001 - Ray's errors for a lost node, actor or object
            progress.note(f"round {attempt} stopped: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")
            finished = False
        if self.store is not None:
            for ok in tally.from_parts(self.store):
                progress.add(ok)
        return finished

    def close(self) -> None:
        """No worker of this run writes a part from now on; a record that got in twice goes."""
        if self.store is not None:
            close_rounds(self.store, self.run_id)
            dedupe(self.store)

    def emit(self, record: str) -> None:
        if record:  # without --output the records come back to the driver and go to stdout
            self.env.stdout.write(record + "\n")
            self.env.stdout.flush()

    def give_up(self, rows: list[Row], tally: Tally, progress: Progress) -> None:
        """Inputs still without a record after the last round: a record each, with the reason."""
        if not rows:
            return
        lost = KvlError("its worker was lost in every attempt", hint="run the command again with --skip-done")
        records = [{"file" if self.video else "input": r["key"], **({"scene": None} if self.video else {}),
                    **error_fields(lost)} for r in rows]
        for record in records:
            tally.add_record(record)
            progress.add(False)
        if self.store is not None:
            write_part(self.store, records)
        else:
            for record in records:
                self.emit(json.dumps(record, ensure_ascii=False))
