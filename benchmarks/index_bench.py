"""kvl index and kvl search at library scale, against ``grep -i`` over the same JSON Lines, in one run.

    .venv/bin/python benchmarks/index_bench.py                      # 1,000,000 scene records
    .venv/bin/python benchmarks/index_bench.py --records 200000 --queries 200

Writes generated scene records (``kvl video --scenes --format jsonl``'s fields: file, scene, start,
end, caption, thinking; captions of ~25 words drawn Zipf-like from a caption vocabulary, so a
common word matches a large share of the records and a rare one a handful) into
``.bench/index/`` as 10 JSON Lines files, then measures:

1. indexing them all into a new index (``kvl_cli.index.build``, in this process): records/s;
2. searching in this process (``kvl_cli.index.search``, ``--limit 10``): p50 and p95 over
   ``--queries`` queries of one to three words;
3. ``kvl search`` as a process (``python -m kvl_cli search``): p50 and p95 wall time, startup
   included, over 20 of the queries;
4. ``grep -i`` over the JSON Lines files for the same queries (the first word; the anchor a person
   has without an index): p50 and p95.

Prints a Markdown table (the numbers for docs/measurements.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kvl_cli.index import build, open_index, search  # noqa: E402

WORDS = """a the of and with in on at to from by an is are two three man woman person people child group
street road car bus bicycle train station building house room kitchen table chair desk window door wall
floor light lamp screen laptop phone camera book paper whiteboard diagram chart slide presentation speaker
audience stage microphone podium hand face hair shirt jacket hat glasses smile talk standing sitting walking
running holding pointing looking writing reading drawing showing red blue green yellow white black gray
orange purple brown dark bright sunny cloudy night morning evening outdoor indoor city park tree grass sky
water river lake sea beach mountain snow rain dog cat bird horse flower garden field farm market shop store
sign text logo title code terminal graph arrow box circle line number equation formula map photo picture
video frame scene close wide shot view background foreground center left right top bottom corner small large
tall short long old young happy busy quiet empty crowded modern wooden metal glass plastic stone brick""".split()
RARE = [f"{a}{b}" for a in ("zor", "quin", "vex", "plu", "dri", "mox") for b in ("al", "eth", "ix", "ond", "ume")]


def caption(rng: random.Random, weights: list[float]) -> str:
    words = rng.choices(WORDS, weights=weights, k=rng.randint(18, 32))
    if rng.random() < 0.01:
        words.append(rng.choice(RARE))
    return " ".join(words).capitalize() + "."


def write_records(folder: Path, n: int, files: int = 10, scenes_per_video: int = 100) -> list[Path]:
    rng = random.Random(21)
    weights = [1 / (i + 1) ** 0.8 for i in range(len(WORDS))]  # Zipf-like: "a" common, "brick" rare
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"scenes-{i:02d}.jsonl" for i in range(files)]
    per_file = n // files
    for fi, path in enumerate(paths):
        with path.open("w", encoding="utf-8") as f:
            for j in range(per_file):
                k = fi * per_file + j
                video, scene = divmod(k, scenes_per_video)
                start = scene * 7.5
                rec = {"file": f"talks/talk-{video:05d}.mp4", "scene": scene + 1, "start": start,
                       "end": start + 7.5, "caption": caption(rng, weights), "thinking": None,
                       "task": "video", "model": "Kimi-VL-A3B-Thinking-2506-Q4_K_M"}
                f.write(json.dumps(rec) + "\n")
    return paths


def queries(n: int) -> list[str]:
    rng = random.Random(5)
    content = WORDS[20:]  # past the stop words
    out = []
    for i in range(n):
        k = 1 + i % 3
        words = rng.sample(content, k)
        if i % 10 == 0:
            words = [rng.choice(RARE)]
        out.append(" ".join(words))
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--folder", type=Path, default=REPO / ".bench" / "index")
    args = ap.parse_args()
    data, index = args.folder / f"records-{args.records}", args.folder / f"index-{args.records}.sqlite"
    if not data.is_dir():
        print(f"writing {args.records} records into {data} …", file=sys.stderr)
        write_records(data, args.records)
    paths = sorted(data.glob("*.jsonl"))
    for p in (index, Path(f"{index}-wal"), Path(f"{index}-shm")):
        p.unlink(missing_ok=True)

    t0 = time.perf_counter()
    tally = build([str(p) for p in paths], index, sys.stderr)
    index_s = time.perf_counter() - t0
    assert tally.added == args.records, tally

    qs = queries(args.queries)
    conn = open_index(index)
    in_process, hits = [], 0
    for q in qs:
        t = time.perf_counter()
        hits += len(search(conn, q, limit=10))
        in_process.append((time.perf_counter() - t) * 1000)
    conn.close()

    env = {**os.environ, "NO_COLOR": "1"}
    proc = []
    for q in qs[:20]:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kvl_cli", "search", "--index", str(index), q], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        proc.append((time.perf_counter() - t) * 1000)

    grep = []
    grep_bin = shutil.which("grep") or "grep"
    for q in qs[:20]:
        # into a pipe (GNU grep stops at the first match when its output is /dev/null); -c: every
        # line read, as a ranking needs
        t = time.perf_counter()
        subprocess.run([grep_bin, "-i", "-c", q.split()[0], *map(str, paths)], stdout=subprocess.PIPE)
        grep.append((time.perf_counter() - t) * 1000)
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    print(f"| records | {args.records:,} scene records, {size_mb:.0f} MB of JSON Lines in {len(paths)} files |")
    print("|---|---|")
    print(f"| index (new) | {index_s:.1f} s, **{args.records / index_s:,.0f} records/s**, "
          f"index {index.stat().st_size / 1e6:.0f} MB |")
    print(f"| search in process (--limit 10, {len(qs)} queries, {hits / len(qs):.1f} hits each) | "
          f"p50 {pct(in_process, 50):.1f} ms, **p95 {pct(in_process, 95):.1f} ms**, max {max(in_process):.1f} ms |")
    print(f"| `kvl search` process (20 queries) | p50 {pct(proc, 50):.0f} ms, **p95 {pct(proc, 95):.0f} ms** |")
    print(f"| `grep -i -c WORD` over the JSON Lines (20 queries) | p50 {pct(grep, 50):.0f} ms, "
          f"p95 {pct(grep, 95):.0f} ms (no ranking, no AND, no snippet) |")


if __name__ == "__main__":
    main()
