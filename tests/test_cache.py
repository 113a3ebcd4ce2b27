"""#5: the disk cache (embeddings, prompt prefixes), parallel batches, batch input selection, kvl bench.

All on the real engine with toy models. The random model under greedy decoding is the sharp test
for state restore: its output depends on every value in the KV cache, so a restored prefix must
give exactly what a fresh evaluation gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kvl_cli.batch import in_shard
from kvl_cli.cache import DiskCache, parse_size
from kvl_cli.synthetic import SCRIPTED_ANSWER

from .conftest import kvl_env, make_image

GREEDY = ["--temperature", "0", "--no-think", "--max-tokens", "12"]


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def cache_files(home: Path, kind: str) -> list[Path]:
    return sorted((home / "kvl" / "cache" / kind).glob("*/*.bin"))


# ---- the disk cache ---------------------------------------------------------------------------


def test_second_ask_restores_the_prefix_and_answers_the_same(kvl, random_pair, images, isolated):
    first = kvl("ask", images["jpg"], "what is this?", *random_pair.args(), *GREEDY, "--json")
    assert first.code == 0, first.err
    a = records(first.out)[0]
    assert a["cached"] == {"images": 0, "prefix_tokens": 0}
    assert a["timings"]["encode_s"] > 0
    assert len(cache_files(isolated, "embeddings")) == 1 and len(cache_files(isolated, "prompts")) == 1

    second = kvl("ask", images["jpg"], "what is this?", *random_pair.args(), *GREEDY, "--json")
    b = records(second.out)[0]
    assert b["cached"]["prefix_tokens"] > 0  # system prompt, user prefix and the image: not evaluated again
    assert b["cached"]["prefix_tokens"] >= b["tokens"]["image"]
    assert b["timings"]["encode_s"] == 0
    assert b["answer"] == a["answer"] and b["tokens"]["generated"] == 12  # same state, same greedy output

    # another question about the same image: the prefix still matches
    other = records(kvl("ask", images["jpg"], "and the colour?", *random_pair.args(), *GREEDY, "--json").out)[0]
    assert other["cached"]["prefix_tokens"] == b["cached"]["prefix_tokens"]


def test_cached_embeddings_skip_the_encoder_when_the_prompt_differs(random_pair, images, isolated):
    from kvl_cli.engine.engine import Engine
    from kvl_cli.engine.types import CacheStats, EngineConfig, GenerationSettings, Request, Timings
    from kvl_cli.media.images import InputRef, load_image

    cfg = EngineConfig(model=random_pair.model, mmproj=random_pair.mmproj, n_ctx=2048, image_max_tokens=64)
    img = load_image(InputRef("red.jpg", path=images["jpg"]), max_tokens=64)
    s = GenerationSettings(temperature=0, max_tokens=8, think_budget=0)
    with Engine(cfg, cache=DiskCache()) as eng:
        def run(system: str) -> tuple[str, CacheStats, Timings]:
            done = [ev for ev in eng.generate(Request(eng.marker + "\nDescribe.", [img], system, s))
                    if type(ev).__name__ == "DoneEvent"]
            r = done[0].result  # type: ignore[attr-defined]
            return r.answer, r.cached, r.timings

        fresh = run("You are terse.")
        again = run("You are a careful observer.")  # another system prompt: no prefix match
        assert again[1] == CacheStats(images=1, prefix_tokens=0)
        assert again[2].encode_s == 0
        # the embeddings are what the encoder gives: the answer equals an uncached run's
        with Engine(cfg, cache=None) as plain:
            req = Request(plain.marker + "\nDescribe.", [img], "You are a careful observer.", s)
            r = [ev for ev in plain.generate(req) if type(ev).__name__ == "DoneEvent"][0].result  # type: ignore
        assert again[0] == r.answer
        assert fresh[1].images == 0


def test_any_key_change_misses(kvl, random_pair, images, isolated, tmp_path):
    base = ("ask", images["jpg"], "q?", *random_pair.args(), *GREEDY, "--json")
    kvl(*base)
    assert records(kvl(*base).out)[0]["cached"]["prefix_tokens"] > 0
    # another token budget for the image
    r = records(kvl(*base, "--image-max-tokens", "16").out)[0]
    assert r["cached"] == {"images": 0, "prefix_tokens": 0}
    # other pixels
    other = make_image(tmp_path / "other.jpg", color=(40, 200, 40))  # same size, other pixels
    r = records(kvl("ask", other, "q?", *random_pair.args(), *GREEDY, "--json").out)[0]
    assert r["cached"] == {"images": 0, "prefix_tokens": 0}
    # a replaced projector file (a re-pull): nothing cached for the old one counts
    st = random_pair.mmproj.stat()
    os.utime(random_pair.mmproj, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        r = records(kvl(*base).out)[0]
        assert r["cached"] == {"images": 0, "prefix_tokens": 0}
    finally:
        os.utime(random_pair.mmproj, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_damaged_entries_count_as_misses_and_go(kvl, random_pair, images, isolated):
    base = ("ask", images["jpg"], "q?", *random_pair.args(), *GREEDY, "--json")
    want = records(kvl(*base).out)[0]["answer"]
    for p in cache_files(isolated, "embeddings") + cache_files(isolated, "prompts"):
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])  # cut in half
    r = kvl(*base)
    assert r.code == 0, r.err
    rec = records(r.out)[0]
    assert rec["answer"] == want and rec["cached"] == {"images": 0, "prefix_tokens": 0}
    # rewritten whole
    assert records(kvl(*base).out)[0]["cached"]["prefix_tokens"] > 0


def test_no_cache_and_size_zero_write_nothing(kvl, scripted, images, isolated, monkeypatch):
    assert kvl("caption", images["jpg"], *scripted.args(), "--no-cache").code == 0
    assert not cache_files(isolated, "embeddings") and not cache_files(isolated, "prompts")
    monkeypatch.setenv("KVL_CACHE_SIZE", "0")
    assert kvl("caption", images["jpg"], *scripted.args()).code == 0
    assert not cache_files(isolated, "embeddings")
    monkeypatch.setenv("KVL_CACHE_SIZE", "lots")
    r = kvl("caption", images["jpg"], *scripted.args())
    assert r.code == 2 and "KVL_CACHE_SIZE" in r.err and "4G" in r.err


def test_cache_is_capped_least_recently_used_first(tmp_path):
    c = DiskCache(root=tmp_path / "c", cap=3500)  # three entries of ~1 KB fit, four do not
    for i in range(3):
        assert c.put("embeddings", f"{i:064x}", b"m", b"x" * 1000)
        time.sleep(0.01)
    assert c.get("embeddings", f"{0:064x}") is not None  # touch the oldest: now the newest
    time.sleep(0.01)
    c.put("embeddings", f"{3:064x}", b"m", b"x" * 1000)
    left = {p.stem for p in (tmp_path / "c" / "embeddings").glob("*/*.bin")}
    assert left == {f"{0:064x}", f"{2:064x}", f"{3:064x}"}  # 1 was the least recently used
    assert sum(s.bytes for s in c.stats().values()) <= 3500
    assert parse_size("4G") == 4_000_000_000 and parse_size("500M") == 500_000_000 and parse_size("0") == 0


def test_cache_info_and_clear(kvl, scripted, images, isolated):
    kvl("caption", images["jpg"], images["webp"], *scripted.args())
    info = json.loads(kvl("cache", "info", "--json").out)
    assert info["path"] == str(isolated / "kvl" / "cache")
    assert info["embeddings"]["entries"] == 2 and info["prompts"]["entries"] == 2
    assert info["bytes"] == sum(p.stat().st_size for p in (isolated / "kvl" / "cache").rglob("*.bin"))
    text = kvl("cache", "info").out
    assert "embeddings:" in text and "prompts:" in text and str(isolated / "kvl" / "cache") in text
    r = kvl("cache", "clear", "--only", "prompts")
    assert r.code == 0 and "removed 2 entries" in r.err
    assert json.loads(kvl("cache", "info", "--json").out)["prompts"]["entries"] == 0
    kvl("cache", "clear")
    assert json.loads(kvl("cache", "info", "--json").out)["bytes"] == 0


# ---- parallel batches ---------------------------------------------------------------------------


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
    from kvl_cli.cache import DiskCache
    from kvl_cli.engine.engine import Engine
    from kvl_cli.engine.media_handles import default_marker
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

    m = options.ModelOptions(model=None, mmproj=None, ctx=4096, threads=2, gpu_layers=-1, repack=None,
                             image_min_tokens=None, image_max_tokens=None, yes=False, cache=True)
    monkeypatch.setattr(native, "gpu_offload_supported", lambda: False)
    assert m.default_parallel() == 2
    assert [m.plan_parallel(p) for p in (1, 2, 3, 4)] == [(1, 1), (2, 1), (2, 2), (2, 2)]
    assert replace(m, threads=1).plan_parallel(3) == (1, 3)
    assert replace(m, threads=1).default_parallel() == 1
    monkeypatch.setattr(native, "gpu_offload_supported", lambda: True)
    assert m.default_parallel() == options.GPU_PARALLEL
    assert m.plan_parallel(4) == (1, 4)
    assert replace(m, gpu_layers=0).plan_parallel(4) == (2, 2)  # --gpu-layers 0: a CPU run


# ---- choosing the inputs of a batch --------------------------------------------------------------


def test_inputs_from_a_file_and_from_stdin(kvl, scripted, photos, tmp_path):
    many = photos(6)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my photos\n{many[0]}\n\n{many[1]}\n")
    r = kvl("caption", "--from", listing, many[2], *scripted.args(), "--json")
    assert r.code == 0, r.err
    assert [x["input"] for x in records(r.out)] == [str(many[2]), str(many[0]), str(many[1])]
    r = kvl("caption", "--from", "-", *scripted.args(), "--json", stdin=f"{many[3]}\n{many[4]}\n".encode())
    assert [x["input"] for x in records(r.out)] == [str(many[3]), str(many[4])]
    r = kvl("caption", "--from", tmp_path / "nope.txt", *scripted.args())
    assert r.code == 3 and "--from" in r.err and "not found" in r.err


def test_skip_done_resumes_an_interrupted_batch(kvl, scripted, photos, tmp_path):
    many = photos(6)
    out = tmp_path / "out.jsonl"
    first = kvl("caption", *many[:2], *scripted.args(), "--json")
    # the earlier run was killed while writing its third line
    out.write_text(first.out + '{"input": "' + str(many[2]) + '", "answ')
    r = kvl("caption", *many, *scripted.args(), "--json", "--skip-done", out)
    assert r.code == 0, r.err
    assert [x["input"] for x in records(r.out)] == [str(p) for p in many[2:]]
    assert "skipping 2 already done" in r.err
    # failed inputs are not "done": they run again
    out.write_text(json.dumps({"input": str(many[0]), "error": "boom", "exit_code": 3}) + "\n")
    r = kvl("caption", many[0], *scripted.args(), "--json", "--skip-done", out)
    assert [x["input"] for x in records(r.out)] == [str(many[0])]
    # everything done: nothing to do, success
    done = tmp_path / "done.jsonl"
    done.write_text(kvl("caption", many[0], *scripted.args(), "--json").out)
    r = kvl("caption", many[0], *scripted.args(), "--json", "--skip-done", done)
    assert r.code == 0 and r.out == ""


def test_shards_cover_every_input_once(kvl, scripted, photos):
    many = photos(6)
    seen: list[str] = []
    for k in (1, 2, 3):
        r = kvl("caption", *many, *scripted.args(), "--json", "--shard", f"{k}/3")
        assert r.code == 0, r.err
        seen += [x["input"] for x in records(r.out)]
    assert sorted(seen) == sorted(str(p) for p in many)
    # the split depends on names only, not on their order
    assert [in_shard(str(p), (1, 3)) for p in many] == [in_shard(str(p), (1, 3)) for p in many[::-1]][::-1]
    for bad in ("0/3", "4/3", "x", "1/0"):
        r = kvl("caption", *many, *scripted.args(), "--shard", bad)
        assert r.code == 2 and "--shard" in r.err


# ---- kvl bench -----------------------------------------------------------------------------------


def test_bench_reports_every_measurement(kvl, random_pair, isolated):
    r = kvl("bench", *random_pair.args(), "--image-tokens", "16,64", "--prompt-tokens", "32", "--gen-tokens", "8",
            "--parallel", "1,3", "--json")
    assert r.code == 0, r.err
    b = json.loads(r.out)
    assert [e["image_tokens"] for e in b["encode"]] == [16, 64]
    assert all(e["seconds"] > 0 for e in b["encode"])
    assert [d["parallel"] for d in b["decode"]] == [1, 3]
    assert all(d["prefill_tokens_per_s"] > 0 and d["gen_tokens_per_s"] > 0 for d in b["decode"])
    assert b["peak_rss_bytes"] > b["files_bytes"] and b["load_s"] > 0
    assert not cache_files(isolated, "embeddings")  # bench never uses the cache
    table = kvl("bench", *random_pair.args(), "--image-tokens", "16", "--prompt-tokens", "8", "--gen-tokens", "2",
                "--parallel", "1")
    assert table.code == 0 and "encode 16 image tokens" in table.out and "peak memory" in table.out
    assert kvl("bench", *random_pair.args(), "--image-tokens", "a,b").code == 2


# ---- reuse within one process -------------------------------------------------------------------


def test_a_batch_shares_the_system_prompt_and_answers_as_alone(kvl, random_pair, photos):
    many = photos(6)
    alone = {str(p): records(kvl("caption", p, *random_pair.args(), *GREEDY, "--json", "--no-cache").out)[0]
             for p in many[:3]}
    batch = records(kvl("caption", *many[:3], *random_pair.args(), *GREEDY, "--json", "--no-cache", "-P", "1").out)
    assert batch[0]["cached"]["prefix_tokens"] == 0
    shared = batch[1]["cached"]["prefix_tokens"]
    assert 0 < shared < batch[1]["tokens"]["prompt"] - batch[1]["tokens"]["image"]  # the text before the image
    assert batch[2]["cached"]["prefix_tokens"] == shared
    for rec in batch:
        assert rec["answer"] == alone[rec["input"]]["answer"]  # reused cells give the same greedy output


def test_same_image_again_in_one_process_reuses_it_in_memory(random_pair, images):
    from kvl_cli.engine.engine import Engine
    from kvl_cli.engine.types import DoneEvent, EngineConfig, GenerationSettings, Request
    from kvl_cli.media.images import InputRef, load_image

    cfg = EngineConfig(model=random_pair.model, mmproj=random_pair.mmproj, n_ctx=2048, image_max_tokens=64)
    img = load_image(InputRef("red.jpg", path=images["jpg"]), max_tokens=64)
    s = GenerationSettings(temperature=0, max_tokens=8, think_budget=0)
    with Engine(cfg, cache=None) as eng:
        def ask(q: str):  # type: ignore[no-untyped-def]
            return [ev.result for ev in eng.generate(Request(eng.marker + "\n" + q, [img], None, s))
                    if isinstance(ev, DoneEvent)][0]

        first, second, other = ask("What is it?"), ask("What is it?"), ask("Which colour?")
    assert first.cached.prefix_tokens == 0
    assert second.cached.prefix_tokens >= first.tokens.image and second.timings.encode_s == 0
    assert second.answer == first.answer
    assert other.cached.prefix_tokens >= first.tokens.image


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


def test_paths_or_an_image_on_stdin_without_arguments(kvl, scripted, photos):
    many = photos(6)
    r = kvl("caption", *scripted.args(), "--json", stdin=f"{many[0]}\n# skip me\n{many[1]}\n".encode())
    assert r.code == 0, r.err
    assert [x["input"] for x in records(r.out)] == [str(many[0]), str(many[1])]
    r = kvl("ocr", *scripted.args(), "--json", stdin=Path(many[2]).read_bytes())  # the image itself
    assert r.code == 0, r.err
    assert [x["input"] for x in records(r.out)] == ["-"]


def test_a_prompt_cached_by_a_parallel_batch_serves_a_single_question(kvl, random_pair, photos):
    many = photos(6)
    args = (*random_pair.args(), *GREEDY, "--json")
    batch = records(kvl("caption", *many[:3], *args, "-P", "3").out)
    assert len(batch) == 3
    # the batch's sequences lived in separate KV streams; the cached state fits a one-stream context
    alone = records(kvl("caption", many[2], *args).out)[0]
    assert alone["cached"]["prefix_tokens"] >= alone["tokens"]["image"]
    fresh = records(kvl("caption", many[2], *args, "--no-cache").out)[0]
    assert alone["answer"] == fresh["answer"]
    # and the other way: a single question's prompt serves a parallel batch
    again = records(kvl("caption", many[2], many[3], *args, "-P", "2").out)
    hit = next(r for r in again if r["input"] == str(many[2]))
    assert hit["cached"]["prefix_tokens"] >= hit["tokens"]["image"]
