"""Parallel batches on the real engine with toy models: several sequences in one context or several
CPU workers (each its own context, projector and thread) give every answer, the same as one at a time,
in the order of the inputs; a broken image or Ctrl-C in the middle; the first image encoded while the
model loads; requests taken from the input as the engine has room for them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kvl_cli.cache import DiskCache
from kvl_cli.synthetic import SCRIPTED_ANSWER

from .conftest import kvl_env, make_image
from .kvlrun import GREEDY, records


def test_parallel_batch_gives_every_answer(kvl, scripted, photos):
    many = photos(6)
    r = kvl("caption", *many, *scripted.args(), "--json", "--parallel", "4", "--temperature", "0")
    assert r.code == 0, r.err
    recs = records(r.out)
    assert sorted(x["input"] for x in recs) == sorted(str(p) for p in many)
    assert all(x["answer"] == SCRIPTED_ANSWER and x["thinking"] == "some thought" for x in recs)
    assert all(0 <= x["timings"]["think_s"] <= x["timings"]["generate_s"] for x in recs)
    # plain output: one header and one answer per input
    r = kvl("caption", *many, *scripted.args(), "-P", "3")
    assert r.out.count("==> ") == len(many) and r.out.count(SCRIPTED_ANSWER) == len(many)


def test_parallel_matches_one_at_a_time(kvl, random_pair, photos):
    many = photos(6)
    args = ("caption", *many[:4], *random_pair.args(), *GREEDY, "--json", "--no-cache")
    serial = {x["input"]: x for x in records(kvl(*args, "-P", "1").out)}
    together = {x["input"]: x for x in records(kvl(*args, "-P", "4").out)}
    assert serial.keys() == together.keys()
    for k in serial:
        assert together[k]["tokens"]["generated"] == 12 and together[k]["finish_reason"] == "length"
        # batched matrix products may round differently; the first tokens agree
        assert together[k]["answer"][:4] == serial[k]["answer"][:4]


def test_parallel_batch_goes_on_past_a_broken_image(kvl, scripted, photos, tmp_path):
    many = photos(6)
    broken = tmp_path / "broken.png"
    data = Path(many[0]).read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # header fine, body cut: fails only when decoded
    r = kvl("caption", many[1], broken, many[2], *scripted.args(), "--json", "-P", "4")
    assert r.code == 5
    recs = {x["input"]: x for x in records(r.out)}
    assert recs[str(broken)]["error"] and recs[str(broken)]["exit_code"] == 3
    assert recs[str(many[1])]["answer"] == SCRIPTED_ANSWER and recs[str(many[2])]["answer"] == SCRIPTED_ANSWER


@pytest.mark.parametrize("threads", ["1", "2"], ids=["two-sequences", "two-workers"])
def test_parallel_batch_ctrl_c_keeps_finished_lines(random_pair, photos, tmp_path, threads):
    many = photos(6)
    out_file = tmp_path / "out.jsonl"
    with out_file.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvl_cli", "caption", *map(str, many), "--json", "-P", "2", "-t", threads,
             "--no-think",
             "--temperature", "0", "--image-max-tokens", "16", "--max-tokens", "400000", "--ctx", "1000000"],
            stdout=out, stderr=subprocess.PIPE, env=kvl_env(random_pair))
        time.sleep(4)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    recs = records(out_file.read_text())
    assert recs and all(r["finish_reason"] == "interrupted" for r in recs)
    assert all(r["tokens"]["generated"] > 0 for r in recs)  # what was generated is written
    assert b"Traceback" not in err


def test_cpu_workers_answer_exactly_like_one_worker(random_pair, photos):
    """Two lanes (each its own context, projector and thread) on the real engine: every answer is
    the one a single lane gives, and the second lane works while the first is still busy."""
    from kvl_cli.engine.engine import Engine
    from kvl_cli.engine.types import DoneEvent, EngineConfig, GenerationSettings, Request
    from kvl_cli.media.images import InputRef, load_image

    many = photos(6)
    s = GenerationSettings(temperature=0, max_tokens=200, think_budget=0)

    def run(lanes: int) -> tuple[dict[int, str], list[tuple[int, str]], int]:
        cfg = EngineConfig(model=random_pair.model, mmproj=random_pair.mmproj, n_ctx=700, image_max_tokens=32,
                           n_threads=2, lanes=lanes)
        with Engine(cfg, cache=None) as eng:
            reqs = [Request(eng.marker + "\nDescribe.",
                            [load_image(InputRef(p, path=Path(p)), max_tokens=32)], None, s) for p in many[:4]]
            answers, trace = {}, []
            for index, ev in eng.generate_many(iter(reqs), parallel=lanes):
                trace.append((index, type(ev).__name__))
                if isinstance(ev, DoneEvent):
                    assert ev.result.tokens.generated == 200
                    answers[index] = ev.result.answer
            return answers, trace, len(eng.workers)

    one, _, n_one = run(1)
    two, trace, n_two = run(2)
    assert (n_one, n_two) == (1, 2)
    assert two == one and len(two) == 4
    first_done = trace.index((0, "DoneEvent"))
    assert any(i == 1 for i, _ in trace[:first_done])  # request 1 started before request 0 finished


def test_cpu_workers_print_in_input_order(kvl, random_pair, tmp_path):
    """The first input is much slower than the others; with two workers the others finish first,
    but the output (text and JSON) still follows the inputs' order."""
    d = tmp_path / "order"
    d.mkdir()
    slow = make_image(d / "slow.png", size=(640, 640), color=(10, 200, 30))
    quick = [make_image(d / f"q{i}.png", size=(32, 32), color=(40 * i, 0, 90)) for i in range(3)]
    inputs = [slow, *quick]
    args = ("caption", *inputs, *random_pair.args(), "--temperature", "0", "--no-think", "-P", "2", "-t", "2",
            "--no-cache", "--image-max-tokens", "256")
    r = kvl(*args, "--json", "--max-tokens", "40")
    assert r.code == 0, r.err
    recs = records(r.out)
    assert [x["input"] for x in recs] == [str(p) for p in inputs]
    assert recs[0]["tokens"]["image"] > 4 * recs[1]["tokens"]["image"]
    r = kvl(*args, "--max-tokens", "40")
    assert r.code == 0, r.err
    heads = [line for line in r.out.splitlines() if line.startswith("==> ")]
    assert heads == [f"==> {p} <==" for p in inputs]


def test_first_image_is_encoded_while_the_model_loads(random_pair, photos, tmp_path):
    """``encode_ahead``: the first request's image is encoded during the load (on the loader thread) and
    used by the request: the same answer, the encoder's time still reported, nothing from the cache;
    with the cache already holding the image's prompt, nothing is encoded ahead."""
    from kvl_cli.engine.engine import Engine
    from kvl_cli.engine.mtmd_handles import default_marker
    from kvl_cli.engine.types import DoneEvent, EngineConfig, GenerationSettings, Request
    from kvl_cli.media.images import InputRef, load_image

    many = photos(6)
    s = GenerationSettings(temperature=0, max_tokens=40, think_budget=0)
    cfg = EngineConfig(model=random_pair.model, mmproj=random_pair.mmproj, n_ctx=700, image_max_tokens=64)
    img = load_image(InputRef(many[3], path=Path(many[3])), max_tokens=64)
    req = Request(default_marker() + "\nDescribe.", [img], None, s)

    def answer(eng: Engine) -> tuple[str, dict, dict]:
        done = [ev for ev in eng.generate(req) if isinstance(ev, DoneEvent)]
        return done[0].result.answer, done[0].result.timings, done[0].result.cached

    with Engine(cfg, cache=None) as eng:
        plain, _, _ = answer(eng)
    with Engine(cfg, cache=None, encode_ahead=req) as eng:
        assert eng.encoded_ahead == 1  # encoded during the load
        ahead, timings, cached = answer(eng)
        assert eng.encoded_ahead == 0  # and used
    assert ahead == plain and cached.images == 0
    with Engine(replace(cfg, n_threads=2, lanes=2), cache=None, encode_ahead=req) as eng:
        assert eng.encoded_ahead == 0  # two lanes: a lane's one-thread encoder would keep the other core idle
    cache = DiskCache(root=tmp_path / "cache", cap=10**9)
    with Engine(cfg, cache=cache, encode_ahead=req) as eng:
        assert answer(eng)[0] == plain  # writes the image's prompt state to the cache
    with Engine(cfg, cache=cache, encode_ahead=req) as eng:
        assert eng.encoded_ahead == 0  # the cache has it: no encoder work ahead
        again, timings, cached = answer(eng)
    assert again == plain and cached.prefix_tokens > 0 and timings.encode_s == 0


def test_parallel_plan_cpu_workers_gpu_sequences(monkeypatch):
    from kvl_cli import options
    from kvl_cli.engine import native
    from kvl_cli.run.plan import default_parallel, split_parallel

    m = options.ModelOptions(model=None, mmproj=None, ctx=4096, threads=2, gpu_layers=-1, repack=None,
                             image_min_tokens=None, image_max_tokens=None, yes=False, cache=True)
    monkeypatch.setattr(native, "gpu_offload_supported", lambda: False)
    assert default_parallel(m) == 2
    assert [split_parallel(m, p) for p in (1, 2, 3, 4)] == [(1, 1), (2, 1), (2, 2), (2, 2)]
    assert split_parallel(replace(m, threads=1), 3) == (1, 3)
    assert default_parallel(replace(m, threads=1)) == 1
    monkeypatch.setattr(native, "gpu_offload_supported", lambda: True)
    assert default_parallel(m) == options.GPU_PARALLEL
    assert split_parallel(m, 4) == (1, 4)
    assert split_parallel(replace(m, gpu_layers=0), 4) == (2, 2)  # --gpu-layers 0: a CPU run


def test_one_plan_sizes_every_run(monkeypatch):
    """The run plan: a batch's workers and per-sequence context, capped by its inputs; a scene run's
    thinking budget and frames; a Ray worker's sequences and threads; a server's whole context."""
    from pathlib import Path

    from kvl_cli import options
    from kvl_cli.engine import native
    from kvl_cli.run.plan import SCENE_THINK_BUDGET, make_plan

    monkeypatch.setattr(native, "gpu_offload_supported", lambda: False)
    m = options.ModelOptions(model=None, mmproj=None, ctx=16384, threads=2, gpu_layers=-1, repack=None,
                             image_min_tokens=None, image_max_tokens=None, yes=False, cache=True)
    gen = options.GenerationOptions(temperature=0.8, top_p=1.0, top_k=0, seed=None, max_tokens=None,
                                    think_budget=None, no_think=False, show_thinking=None, schema=None, choices=None)
    out = options.OutputFlags(as_json=True, verbose=0, debug=False, dry_run=False)
    common = options.CommonOptions(m, gen, out)
    pair = Path("m.gguf"), Path("p.gguf")

    caption = make_plan("caption", common).fit(inputs=5)
    assert (caption.parallel, caption.workers, caption.sequences) == (2, 2, 1)
    config = caption.engine_config(*pair)
    assert config.lanes == 2 and config.parallel == 1 and config.image_max_tokens == 1024
    assert config.n_ctx == 1024 + 2048 + 512  # an image, the longest caption, the prompt's text: not --ctx
    alone = make_plan("caption", common).fit(inputs=1)
    assert alone.parallel == 1 and alone.engine_config(*pair).n_ctx == 16384
    assert caption.render.json and caption.settings.think_budget == 512

    scenes = make_plan("video", common, images_per_input=3, scenes=True).fit()
    assert scenes.settings.think_budget == SCENE_THINK_BUDGET and scenes.parallel == 2
    assert scenes.engine_config(*pair).n_ctx == -(-(3 * (256 + 16) + 4096 + 512) // 256) * 256
    summary = make_plan("video", common, parallel=4).fit()
    assert summary.parallel == 1 and summary.settings.think_budget == 1024

    worker = make_plan("ocr", common, parallel=None).for_ray_worker(threads=1, gpu=False)
    assert (worker.workers, worker.sequences, worker.model.threads) == (1, 1, 1)
    assert worker.engine_config(*pair).n_ctx == 16384 and worker.image_tokens == 2048

    server = make_plan("ask", common).for_server(None)
    config = server.engine_config(*pair)
    assert (config.lanes, config.parallel, config.n_ctx) == (1, 2, 16384)


def test_requests_are_pulled_lazily(random_pair, photos):
    from kvl_cli.engine.engine import Engine
    from kvl_cli.engine.types import DoneEvent, EngineConfig, GenerationSettings, Request
    from kvl_cli.media.images import InputRef, load_image

    many = photos(6)
    pulled: list[int] = []
    cfg = EngineConfig(model=random_pair.model, mmproj=random_pair.mmproj, n_ctx=700, image_max_tokens=32,
                       parallel=2)
    s = GenerationSettings(temperature=0, max_tokens=300, think_budget=0)
    with Engine(cfg, cache=None) as eng:
        def requests():  # type: ignore[no-untyped-def]
            for i, path in enumerate(many):
                pulled.append(i)
                yield Request(eng.marker + "\nDescribe.", [load_image(InputRef(path, path=Path(path)), max_tokens=32)],
                              None, s)

        done: list[int] = []
        pulled_at_first_done = None
        for index, ev in eng.generate_many(requests()):
            if isinstance(ev, DoneEvent):
                if pulled_at_first_done is None:
                    pulled_at_first_done = len(pulled)
                assert ev.result.finish_reason == "length" and ev.result.tokens.generated == 300
                done.append(index)
    assert sorted(done) == list(range(len(many)))
    assert pulled_at_first_done is not None and pulled_at_first_done <= 3  # not the whole batch up front
