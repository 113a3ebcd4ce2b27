"""kvl serve on this machine: a shell loop of ``kvl ask`` with and without a running server, and the
first token through the server against ``llama-server`` built from the same vendored llama.cpp.

    .venv/bin/python benchmarks/serve_bench.py                 # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/serve_bench.py --loop 10 --ttft 2

1. ``--loop N`` ``kvl ask`` calls on one photo, N different questions, 32 tokens each, greedy: first
   in-process (``--no-server``: each call loads the model and restores the image's prompt from the
   disk cache), then the same loop with ``kvl serve`` running (each call posts to it; nothing
   loads). One untimed call before each loop fills the caches, so both loops start warm.
2. First token (time from the request to the first streamed token, thinking or answer) of a chat
   completion with the photo as a data URI: ``kvl serve --no-cache`` against ``llama-server``,
   each on fresh photos (encoder and prefill included), then a second question about the same
   photo (the prompt's prefix reused from the KV cache by both). One server runs at a time (each
   holds the 11 GB model).

Same model pair (the full-size synthetic Q4_K_M, see ``run.py``), threads, context (4096), one
sequence, no repack. Results: a Markdown table on stdout and ``benchmarks/out/serve.json``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.run import log, write_photos  # noqa: E402

N_GEN = 32
CTX = 4096


def kvl_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "kvl"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kvl_cli"]


def ask_loop(env: dict[str, str], photo: Path, n: int, extra: list[str]) -> list[float]:
    """Seconds per ``kvl ask`` call (process start to exit), after one untimed call."""
    times = []
    for i in range(n + 1):
        cmd = [*kvl_cmd(), "ask", str(photo), f"Question {i}: what is in the picture?", "--max-tokens", str(N_GEN),
               "--temperature", "0", "--threads", env["BENCH_THREADS"], *extra]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"kvl ask failed ({p.returncode}):\n{p.stderr[-2000:]}")
        if i:
            times.append(time.perf_counter() - t0)
    return times


def wait_health(port: int, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not get ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def first_token(port: int, photo: Path, question: str) -> float:
    """Seconds from sending a streamed chat completion to its first token (thinking or answer)."""
    uri = "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()
    body = {"model": "m", "stream": True, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                      {"type": "text", "text": question}]}]}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"HTTP {resp.status}: {resp.read()[:500]!r}")
    try:
        for line in resp:
            if line.startswith(b"data: {") and _has_token(json.loads(line[6:])):
                return time.perf_counter() - t0
    finally:
        conn.close()
    raise SystemExit("the stream ended without a token")


def _has_token(chunk: dict) -> bool:  # type: ignore[type-arg]
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content"):
            return True
    return False


def ttft(cmd: list[str], port: int, env: dict[str, str], photos: list[Path]) -> dict[str, list[float]]:
    """First-token times on each fresh photo, then a second question about the last one."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_health(port, proc)
        cold = [first_token(port, p, "Describe this image.") for p in photos]
        warm = [first_token(port, photos[-1], "And what colour dominates?")]
    finally:
        stop(proc)
    return {"fresh": cold, "same_image": warm}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / ".bench")
    ap.add_argument("--loop", type=int, default=10)
    ap.add_argument("--ttft", type=int, default=2, help="fresh photos per server for the first-token times")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bin", type=Path, default=None, help="folder with llama-server (default: build it)")
    ap.add_argument("--port", type=int, default=8419)
    args = ap.parse_args()
    from kvl_cli.engine import native

    threads = str(args.threads or native.physical_cores())
    model = args.work / "models" / "synthetic-Kimi-VL-A3B-Q4_K_M.gguf"
    mmproj = args.work / "models" / "mmproj-synthetic-Kimi-VL-A3B-Q8_0.gguf"
    if not model.exists():
        raise SystemExit(f"{model}: run benchmarks/run.py first (it writes the synthetic pair)")
    photos = write_photos(args.work / "photos", 1 + 2 * args.ttft)
    home = args.work / "serve-home"
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "KVL_HOME": str(home), "KVL_MODEL": str(model), "KVL_MMPROJ": str(mmproj),
           "BENCH_THREADS": threads}
    env.pop("KVL_CACHE_SIZE", None)
    res: dict[str, object] = {"when": time.strftime("%Y-%m-%d %H:%M"), "threads": threads, "loop": args.loop}

    log(f"{args.loop} x kvl ask in-process (--no-server)")
    res["loop_in_process"] = ask_loop(env, photos[0], args.loop, ["--no-server"])
    log(f"{args.loop} x kvl ask with kvl serve running")
    serve = [*kvl_cmd(), "serve", "--port", str(args.port), "--ctx", str(CTX), "-P", "1", "--threads", threads]
    proc = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_health(args.port, proc)
        res["loop_with_server"] = ask_loop(env, photos[0], args.loop, [])
    finally:
        stop(proc)

    log("first token: kvl serve (--no-cache)")
    res["ttft_kvl"] = ttft([*serve, "--no-cache"], args.port, env, photos[1:1 + args.ttft])
    bindir = args.bin or build_tools(args.work)
    log("first token: llama-server")
    llama = [str(bindir / "llama-server"), "-m", str(model), "--mmproj", str(mmproj), "--host", "127.0.0.1",
             "--port", str(args.port), "-t", threads, "-tb", threads, "-c", str(CTX), "-np", "1", "--no-repack",
             "--temp", "0"]
    res["ttft_llama_server"] = ttft(llama, args.port, env, photos[1 + args.ttft:1 + 2 * args.ttft])
    report(res)


def build_tools(work: Path) -> Path:
    log("building llama-server from the vendored llama.cpp (reused when built)")
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "build_llama_tools.sh"), str(work)], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHON": sys.executable}, timeout=7200).stdout
    return Path(out.strip().splitlines()[-1])


def report(res: dict) -> None:  # type: ignore[type-arg]
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(res, indent=2))
    a, b = mean(res["loop_in_process"]), mean(res["loop_with_server"])
    k, ls = res["ttft_kvl"], res["ttft_llama_server"]
    rows = [
        (f"{res['loop']} x `kvl ask`, one call (mean s)", f"{b:.2f}", f"in-process {a:.2f}", b / a),
        (f"{res['loop']} x `kvl ask`, whole loop (s)", f"{b * res['loop']:.1f}", f"{a * res['loop']:.1f}", b / a),
        ("first token, fresh image (s)", f"{mean(k['fresh']):.2f}", f"llama-server {mean(ls['fresh']):.2f}",
         mean(k["fresh"]) / mean(ls["fresh"])),
        ("first token, second question, same image (s)", f"{mean(k['same_image']):.2f}",
         f"llama-server {mean(ls['same_image']):.2f}", mean(k["same_image"]) / mean(ls["same_image"])),
    ]
    print("| measurement | kvl serve | reference | ratio |\n|---|---:|---|---:|")
    for name, ours, ref, ratio in rows:
        print(f"| {name} | {ours} | {ref} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
