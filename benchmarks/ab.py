"""Two kvl trees, the same commands, alternating: a before/after comparison of a code change.

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/ab.py --before /tmp/before            # against this tree
    .venv/bin/python benchmarks/ab.py --before /tmp/before --reps 3 --batch 10

Both trees run with this virtual environment's Python and llama-cpp-python (``PYTHONPATH`` picks
the tree), on the full-size synthetic pair in ``.bench/models`` (``benchmarks/run.py`` writes it),
with the photos of ``.bench/photos``. Measured, each pair alternating which tree goes first:

* one image end to end (``kvl ask``, no cache: load, encoder, prefill, 32 tokens), process start to exit;
* a second question about that image (cache warm): time to the first answer byte, and to exit;
* a batch of N captions (``kvl caption``, default workers), images per minute.

Prints a Markdown table (mean of each, after/before ratio) and writes benchmarks/out/ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.run import N_GEN, PROMPT_ASK, Run, run, write_photos  # noqa: E402

MODELS = REPO / ".bench" / "models"


def kvl(tree: Path, home: Path, args: list[str]) -> Run:
    env = {**os.environ, "PYTHONPATH": str(tree), "KVL_HOME": str(home),
           "KVL_MODEL": str(MODELS / "synthetic-Kimi-VL-A3B-Q4_K_M.gguf"),
           "KVL_MMPROJ": str(MODELS / "mmproj-synthetic-Kimi-VL-A3B-Q8_0.gguf")}
    env.pop("KVL_CACHE_SIZE", None)
    r = run([sys.executable, "-m", "kvl_cli", *args], env=env)
    if r.rc != 0:
        sys.exit(f"{tree}: kvl {' '.join(args)} failed ({r.rc}):\n{r.err[-2000:]}")
    return r


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="the tree before the change")
    ap.add_argument("--after", type=Path, default=REPO, help="the tree after it (default: this one)")
    ap.add_argument("--reps", type=int, default=3, help="pairs of single-image runs (default 3)")
    ap.add_argument("--batch", type=int, default=10, help="captions in the batch (default 10; 0 skips it)")
    a = ap.parse_args()
    photos = [str(p) for p in write_photos(REPO / ".bench" / "photos", max(1, a.batch))]
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    work = Path(tempfile.mkdtemp(prefix="kvl-ab-"))
    ask = ["ask", photos[0], PROMPT_ASK, "--max-tokens", str(N_GEN), "--temperature", "0", "--json"]
    res: dict[str, dict[str, list[float]]] = {t: {"ask": [], "second_first_byte": [], "second_wall": [],
                                                   "batch_per_min": []} for t in trees}
    try:
        for rep in range(a.reps):
            order = ("before", "after") if rep % 2 == 0 else ("after", "before")
            for name in order:
                home = work / f"{name}-{rep}"
                print(f"ask {rep + 1}/{a.reps}: {name}", file=sys.stderr, flush=True)
                first = kvl(trees[name], home, [*ask])
                second = kvl(trees[name], home, [*ask])  # the same image again: the disk cache answers
                cached = json.loads(second.out).get("cached") or {}
                assert cached.get("images") or cached.get("prefix_tokens"), cached
                res[name]["ask"].append(first.wall)
                res[name]["second_first_byte"].append(second.first_byte or second.wall)
                res[name]["second_wall"].append(second.wall)
                shutil.rmtree(home, ignore_errors=True)
        if a.batch:
            for name in ("before", "after") if a.reps % 2 == 0 else ("after", "before"):
                print(f"batch of {a.batch}: {name}", file=sys.stderr, flush=True)
                r = kvl(trees[name], work / f"{name}-batch", ["caption", *photos[:a.batch], "--max-tokens", str(N_GEN),
                                                             "--temperature", "0", "--no-cache", "--json"])
                assert len(r.out.splitlines()) == a.batch
                res[name]["batch_per_min"].append(60 * a.batch / r.wall)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(a, res)


def report(a: argparse.Namespace, res: dict[str, dict[str, list[float]]]) -> None:
    rows = [("one image, `kvl ask` start to exit (s)", "ask"),
            ("second question, same image: first answer byte (s)", "second_first_byte"),
            ("second question: start to exit (s)", "second_wall"),
            (f"{a.batch} captions, images per minute", "batch_per_min")]
    print(f"\n{a.before} → {a.after}, {a.reps} pair(s)\n")
    print("| measurement | before | after | after / before |\n|---|---:|---:|---:|")
    for label, key in rows:
        if res["before"][key]:
            b, f = mean(res["before"][key]), mean(res["after"][key])
            print(f"| {label} | {b:.2f} | {f:.2f} | {f / b:.2f}× |")
    out = REPO / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "ab.json").write_text(json.dumps({"before": str(a.before), "after": str(a.after), "runs": res}, indent=2))


if __name__ == "__main__":
    main()
