"""kvl bench on the random toy model: every measurement, as JSON and as a table; never the cache."""

from __future__ import annotations

import json

from .kvlrun import cache_files


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
