"""The same captions through one ``kvl caption -P 2`` process and through ``--ray local`` with two
one-thread workers: Ray's overhead against in-process throughput (the target: within 10%).

    .venv/bin/python benchmarks/ray_bench.py                      # full-size synthetic pair in .bench/
    .venv/bin/python benchmarks/ray_bench.py --inputs 20 --repeat 2
    .venv/bin/python benchmarks/ray_bench.py --toy                # the toy model: a minute, for the harness

Each run is a fresh process end to end (Ray's cluster start included); the Ray row also gives the
throughput after the cluster was up (``-v``'s "cluster ready" line). Runs alternate which tool
goes first. Prints a Markdown table and writes benchmarks/out/ray_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.run import write_photos  # noqa: E402

MODELS = REPO / ".bench" / "models"
N_GEN = 32


def pair(toy: bool, work: Path) -> tuple[Path, Path]:
    if toy:
        from kvl_cli.synthetic import write_toy_pair

        return write_toy_pair(work / "toy", scripted=False, seed=7)
    model, mmproj = MODELS / "synthetic-Kimi-VL-A3B-Q4_K_M.gguf", MODELS / "mmproj-synthetic-Kimi-VL-A3B-Q8_0.gguf"
    if not model.exists():
        from kvl_cli.synthetic import write_full_pair

        write_full_pair(MODELS)
    return model, mmproj


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, object]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    ready = re.search(r"Ray cluster ready in ([\d.]+) s", p.stderr)
    records = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    return {"wall_s": round(wall, 2), "cluster_s": float(ready.group(1)) if ready else 0.0,
            "records": len(records),
            "load_s": max((float(r.get("load_s") or 0) for r in records), default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--toy", action="store_true", help="the toy random model instead of the full-size pair")
    ap.add_argument("--tokens", type=int, default=N_GEN, help="tokens generated per caption [32]; with --toy, "
                    "1500 makes each caption a few seconds of work (the random model never stops early)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvl-ray-bench-"))
    model, mmproj = pair(a.toy, work)
    photos = [str(p) for p in write_photos(REPO / ".bench" / "photos", a.inputs)]
    env = {**os.environ, "KVL_HOME": str(work / "home")}
    common = [*photos, "--model", str(model), "--mmproj", str(mmproj), "--max-tokens", str(a.tokens), "--temperature",
              "0", "--no-cache", "--no-think", "--json"]
    kvl = [sys.executable, "-m", "kvl_cli", "caption"]
    cmds = {"in-process": [*kvl, *common, "-P", "2", "-t", "2"],
            "ray": [*kvl, *common, "--ray", "local", "--ray-cpus", "1", "-v"]}
    runs: dict[str, list[dict[str, object]]] = {"in-process": [], "ray": []}
    for i in range(a.repeat):
        for name in (("in-process", "ray") if i % 2 == 0 else ("ray", "in-process")):
            print(f"[{time.strftime('%H:%M:%S')}] {name} {i + 1}/{a.repeat}", file=sys.stderr, flush=True)
            runs[name].append(timed(cmds[name], env))
            assert runs[name][-1]["records"] == a.inputs
    report(a, runs)


def report(a: argparse.Namespace, runs: dict[str, list[dict[str, object]]]) -> None:
    def per_min(r: dict[str, object], after_cluster: bool = False) -> float:
        wall = float(r["wall_s"]) - (float(r["cluster_s"]) if after_cluster else 0.0)  # type: ignore[arg-type]
        return 60 * a.inputs / wall

    inproc = sum(per_min(r) for r in runs["in-process"]) / a.repeat
    ray = sum(per_min(r) for r in runs["ray"]) / a.repeat
    ray_up = sum(per_min(r, True) for r in runs["ray"]) / a.repeat
    print(f"\n{a.inputs} captions of {a.tokens} tokens, {'toy' if a.toy else 'full-size synthetic'} model, "
          f"{a.repeat} run(s) each\n")
    print("| run | images/min | vs in-process |\n|---|---:|---:|")
    print(f"| `kvl caption -P 2 -t 2` (one process, 2 workers × 1 thread) | {inproc:.2f} | 1.00× |")
    print(f"| `--ray local --ray-cpus 1` (2 actors × 1 thread), end to end | {ray:.2f} | {ray / inproc:.2f}× |")
    print(f"| the same, after the cluster is up | {ray_up:.2f} | {ray_up / inproc:.2f}× |")
    out = REPO / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    summary = {"inputs": a.inputs, "toy": a.toy, "runs": runs, "in_process_per_min": inproc, "ray_per_min": ray,
               "ray_after_cluster_per_min": ray_up}
    (out / "ray_bench.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
