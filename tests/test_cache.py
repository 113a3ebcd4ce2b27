"""The disk cache (embeddings, prompt prefixes) and the reuse of prompt state within one process.

All on the real engine with toy models. The random model under greedy decoding is the sharp test
for state restore: its output depends on every value in the KV cache, so a restored prefix must
give exactly what a fresh evaluation gives.
"""

from __future__ import annotations

import json
import os
import time

from kvl_cli.cache import DiskCache, parse_size

from .conftest import make_image
from .kvlrun import GREEDY, cache_files, records

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
        again = run("You are a careful observer.")  # another system prompt: only its shared start matches
        assert again[1].images == 1
        assert 0 < again[1].prefix_tokens <= len("<|im_system|>system<|im_middle|>You are ")
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
