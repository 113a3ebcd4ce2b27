"""kvl against llama.cpp's own tools, in one session, on an architecture-exact synthetic model.

    .venv/bin/python benchmarks/run.py              # everything: about 30 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --batch 3    # a quicker batch comparison

What it does, in order:

1. builds ``llama-bench`` and ``llama-mtmd-cli`` from the llama.cpp that the installed
   llama-cpp-python vendors (``benchmarks/build_llama_tools.sh``; reused when built);
2. writes the full-size synthetic Q4_K_M pair into ``.bench/models`` unless it is there
   (``kvl_cli.synthetic.write_full_pair``: Kimi-VL-A3B's real shapes and tensor types, random
   quantized blocks; needs the ``test`` extra for ``gguf``);
3. writes ten 640x488 JPEG photos (391 image tokens each, as in the facts sheet);
4. measures, alternating the tools where it repeats, with the same image, prompt, token count,
   threads and context:

   * generation and prefill rate: ``kvl bench`` against ``llama-bench`` (no repack);
   * one image end to end (process start to exit): ``kvl ask`` against ``llama-mtmd-cli``;
   * a second question about the same image: time to kvl's first answer byte;
   * a batch of N captions: one ``kvl caption`` against a loop of ``llama-mtmd-cli``;
   * peak memory (RSS from ``wait4``) against the size of the model files;
   * llama.cpp's default repack on this CPU: does the stock tool abort or run?

Machines are noisy, so results are ratios measured in the same run. Everything goes to stdout as
a Markdown table and to ``benchmarks/out/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT_ASK = "Describe this image in a short paragraph: the subject, the setting and anything notable."
N_GEN = 32


@dataclass
class Run:
    cmd: list[str]
    rc: int
    wall: float
    rss: int  # bytes
    first_byte: float | None
    out: str
    err: str


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> Run:
    """Run ``cmd``; wall time, peak RSS (wait4) and the time of the first stdout byte."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out: list[bytes] = []
    err: list[bytes] = []
    first: list[float] = []

    def pump(fd: int, sink: list[bytes], stamp: bool) -> None:
        while True:
            data = os.read(fd, 65536)
            if not data:
                return
            if stamp and not first:
                first.append(time.perf_counter() - t0)
            sink.append(data)

    assert p.stdout is not None and p.stderr is not None
    threads = [threading.Thread(target=pump, args=(p.stdout.fileno(), out, True)),
               threading.Thread(target=pump, args=(p.stderr.fileno(), err, False))]
    for t in threads:
        t.start()
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    timer.cancel()
    for t in threads:
        t.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return Run(cmd, p.returncode, wall, rss, first[0] if first else None,
               b"".join(out).decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace"))


def check(r: Run, what: str) -> Run:
    if r.rc != 0:
        tail = "\n".join(r.err.strip().splitlines()[-15:])
        raise SystemExit(f"{what} failed (exit {r.rc}): {' '.join(r.cmd)}\n{tail}")
    return r


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_photos(folder: Path, n: int) -> list[Path]:
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"photo{i:02d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        y, x = np.mgrid[0:488, 0:640]
        a = np.zeros((488, 640, 3), np.uint8)
        a[..., 0] = (x * (i + 1)) % 256
        a[..., 1] = (y * 2 + i * 20) % 256
        a[..., 2] = ((x + y) // 3 + i * 40) % 256
        im = Image.fromarray(a)
        d = ImageDraw.Draw(im)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, 600)), int(rng.integers(0, 450))
            d.ellipse([x0, y0, x0 + int(rng.integers(20, 120)), y0 + int(rng.integers(20, 120))],
                      fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        im.save(path, quality=90)
    return paths


@dataclass
class Results:
    rows: list[dict] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    def add(self, what: str, kvl: str, ref: str, ratio: float | None, target: str, ok: bool | None) -> None:
        self.rows.append({"what": what, "kvl": kvl, "reference": ref, "ratio": ratio, "target": target,
                          "pass": ok})
        mark = "" if ok is None else (" PASS" if ok else " MISS")
        log(f"{what}: kvl {kvl} | {ref} | ratio {ratio if ratio is None else f'{ratio:.3f}'} "
            f"(target {target}){mark}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / ".bench", help="build, models and photos (default .bench/)")
    ap.add_argument("--bin", type=Path, default=None, help="a folder with llama-bench and llama-mtmd-cli already built")
    ap.add_argument("--batch", type=int, default=10, help="images in the batch comparison (default 10)")
    ap.add_argument("--reps", type=int, default=6, help="repetitions of the single-image comparison (default 6)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every tool [kvl's default]")
    ap.add_argument("--long-batch", type=int, default=4,
                    help="images in the batch with realistic answer lengths (default 4; 0 skips it)")
    ap.add_argument("--long-tokens", type=int, default=256, help="tokens per answer in that batch (default 256)")
    ap.add_argument("--skip-repack-probe", action="store_true")
    ap.add_argument("--cold", action="store_true",
                    help="also time one image with the page cache dropped (needs root)")
    ap.add_argument("--batch-one-worker", action="store_true",
                    help="also time the batch with -P 1 (one worker with every thread), for comparison")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from kvl_cli.engine import native
    from kvl_cli.engine.types import DEFAULT_SYSTEM_PROMPT
    from kvl_cli.synthetic import write_full_pair
    from kvl_cli.tasks import CAPTION_PROMPTS

    threads = args.threads or native.physical_cores()
    kvl = [str(Path(sys.executable).parent / "kvl")]
    if not Path(kvl[0]).exists():
        kvl = [sys.executable, "-m", "kvl_cli"]

    if args.bin is None:
        log("building llama-bench and llama-mtmd-cli from the vendored llama.cpp (reused when built)")
        build = check(run(["bash", str(REPO / "benchmarks" / "build_llama_tools.sh"), str(args.work)],
                          env={**os.environ, "PYTHON": sys.executable}, timeout=3600), "build")
        bindir = Path(build.out.strip().splitlines()[-1])
    else:
        bindir = args.bin
    bench_bin, mtmd_bin = str(bindir / "llama-bench"), str(bindir / "llama-mtmd-cli")

    models = args.work / "models"
    model = models / "synthetic-Kimi-VL-A3B-Q4_K_M.gguf"
    mmproj = models / "mmproj-synthetic-Kimi-VL-A3B-Q8_0.gguf"
    if not (model.exists() and mmproj.exists()):
        log("writing the full-size synthetic pair (about 11 GB)")
        write_full_pair(models)
    files_bytes = model.stat().st_size + mmproj.stat().st_size
    photos = write_photos(args.work / "photos", max(1, args.batch))

    home = args.work / "kvl-home"
    if home.exists():
        import shutil

        shutil.rmtree(home)
    env = {**os.environ, "KVL_HOME": str(home), "KVL_MODEL": str(model), "KVL_MMPROJ": str(mmproj)}
    env.pop("KVL_CACHE_SIZE", None)
    res = Results()
    res.raw["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": threads,
                          "system_info": native.system_info() if hasattr(native, "system_info") else None}
    res.raw["files_bytes"] = files_bytes

    # warm the page cache so that the first tool measured does not pay for the disk
    check(run([*kvl, "bench", "--image-tokens", "16", "--prompt-tokens", "8", "--gen-tokens", "2",
               "--parallel", "1", "-t", str(threads)], env=env), "warm-up")

    # 1. generation and prefill rate --------------------------------------------------------------
    log("llama-bench pp128/tg32 (no repack) and kvl bench")
    lb = check(run([bench_bin, "-m", str(model), "-p", "128", "-n", str(N_GEN), "-r", "2", "-t", str(threads),
                    "--repack", "0", "-o", "json"]), "llama-bench")
    lb_json = json.loads(lb.out)
    lb_pp = next(t["avg_ts"] for t in lb_json if t["n_prompt"] > 0)
    lb_tg = next(t["avg_ts"] for t in lb_json if t["n_gen"] > 0)
    lbd = check(run([bench_bin, "-m", str(model), "-p", "0", "-n", str(N_GEN), "-d", "512", "-r", "2",
                     "-t", str(threads), "--repack", "0", "-o", "json"]), "llama-bench -d 512")
    lb_tg_deep = json.loads(lbd.out)[0]["avg_ts"]
    res.raw["llama_bench_depth512"] = json.loads(lbd.out)
    kb = check(run([*kvl, "bench", "--image-tokens", "256", "--prompt-tokens", "128", "--gen-tokens", str(N_GEN),
                    "--parallel", "1,4", "-t", str(threads), "--json"], env=env), "kvl bench")
    kb_json = json.loads(kb.out)
    k1 = next(d for d in kb_json["decode"] if d["parallel"] == 1)
    k4 = next(d for d in kb_json["decode"] if d["parallel"] == 4)
    res.raw["llama_bench"], res.raw["kvl_bench"] = lb_json, kb_json
    res.add("generation tok/s (tg32)", f"{k1['gen_tokens_per_s']:.2f}", f"llama-bench {lb_tg:.2f}",
            k1["gen_tokens_per_s"] / lb_tg, ">= 0.97", k1["gen_tokens_per_s"] / lb_tg >= 0.97)
    res.add("prefill tok/s (pp128)", f"{k1['prefill_tokens_per_s']:.2f}", f"llama-bench {lb_pp:.2f}",
            k1["prefill_tokens_per_s"] / lb_pp, "(info)", None)
    res.add("generation tok/s, 4 sequences together", f"{k4['gen_tokens_per_s']:.2f}",
            f"one sequence {k1['gen_tokens_per_s']:.2f}", k4["gen_tokens_per_s"] / k1["gen_tokens_per_s"],
            "(info)", None)

    # 2. one image end to end ---------------------------------------------------------------------
    # the same prompt for both: kvl sends the model's default system prompt (the real chat template's),
    # which llama-mtmd-cli's built-in kimi-k2 formatter leaves out unless given with -sys
    mtmd_common = ["-m", str(model), "--mmproj", str(mmproj), "-n", str(N_GEN), "--temp", "0", "-t", str(threads),
                   "-c", "16384", "-sys", DEFAULT_SYSTEM_PROMPT]
    kvl_walls, mtmd_walls, kvl_rss, mtmd_rss = [], [], [], []
    for rep in range(args.reps):
        # alternate which tool goes first (ABBA): the second run of a pair is not always the same tool
        first_tool = "llama-mtmd-cli" if rep % 2 == 0 else "kvl"
        log(f"one image, end to end ({rep + 1}/{args.reps}): {first_tool} first")

        def one_mtmd() -> Run:
            return check(run([mtmd_bin, *mtmd_common, "--no-repack", "--image", str(photos[0]), "-p", PROMPT_ASK]),
                         "llama-mtmd-cli")

        def one_kvl() -> Run:
            return check(run([*kvl, "ask", str(photos[0]), PROMPT_ASK, "--max-tokens", str(N_GEN), "--temperature",
                              "0", "--no-cache", "-t", str(threads), "--json"], env=env), "kvl ask")

        if rep % 2 == 0:
            m = one_mtmd()
            k = one_kvl()
        else:
            k = one_kvl()
            m = one_mtmd()
        rec = json.loads(k.out)
        assert rec["tokens"]["generated"] == N_GEN, rec["tokens"]
        mtmd_walls.append(m.wall)
        kvl_walls.append(k.wall)
        mtmd_rss.append(m.rss)
        kvl_rss.append(k.rss)
        res.raw.setdefault("single", []).append({"mtmd_wall": m.wall, "kvl_wall": k.wall, "kvl": rec,
                                                 "mtmd_rss": m.rss, "kvl_rss": k.rss})
    kw, mw = sum(kvl_walls) / len(kvl_walls), sum(mtmd_walls) / len(mtmd_walls)
    # the generation loop of a real answer (sampling, streaming, at the prompt's depth of ~530 tokens)
    # against llama-bench's tg32 at depth 512: the first token comes from the prefill, so N_GEN - 1
    # decodes happen in generate_s
    gen_rates = [(N_GEN - 1) / s["kvl"]["timings"]["generate_s"] for s in res.raw["single"]]
    real = sum(gen_rates) / len(gen_rates)
    res.add("generation tok/s in a real answer (kvl ask, depth ~530)", f"{real:.2f}",
            f"llama-bench tg32 -d 512 {lb_tg_deep:.2f}", real / lb_tg_deep, ">= 0.97", real / lb_tg_deep >= 0.97)
    res.add(f"one image + {N_GEN} tokens, wall s (mean of {args.reps})", f"{kw:.1f}",
            f"llama-mtmd-cli --no-repack {mw:.1f}", kw / mw, "<= 1.0", kw / mw <= 1.0)
    if not args.skip_repack_probe:
        log("llama-mtmd-cli with its defaults (repack on)")
        md = run([mtmd_bin, *mtmd_common, "--image", str(photos[0]), "-p", PROMPT_ASK])
        res.raw["mtmd_default_repack"] = {"rc": md.rc, "wall": md.wall, "rss": md.rss}
        if md.rc == 0:
            res.add("one image, wall s", f"{kw:.1f}", f"llama-mtmd-cli default (repack) {md.wall:.1f}",
                    kw / md.wall, "(info)", None)
        else:
            res.add("one image", f"{kw:.1f}", f"llama-mtmd-cli default (repack) aborted, exit {md.rc}", None,
                    "(info)", None)

    # 3. peak memory ------------------------------------------------------------------------------
    peak = max(kvl_rss)
    res.add("peak RSS, one image (GB)", f"{peak / 1e9:.2f}",
            f"files {files_bytes / 1e9:.2f} + 1.5; llama-mtmd-cli {max(mtmd_rss) / 1e9:.2f}",
            peak / (files_bytes + 1.5e9), "<= 1.0", peak <= files_bytes + 1.5e9)

    # 3b. a cold start: the model files not in the page cache (needs root to drop the caches)
    if args.cold:
        def drop_caches() -> bool:
            try:
                os.sync()
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
                return True
            except OSError:
                return False

        if drop_caches():
            log("one image from a cold page cache: llama-mtmd-cli, then kvl ask")
            mc = one_mtmd() if drop_caches() else None
            kc = one_kvl() if drop_caches() else None
            if mc is not None and kc is not None:
                res.raw["cold"] = {"mtmd_wall": mc.wall, "kvl_wall": kc.wall, "kvl": json.loads(kc.out)}
                res.add("one image, cold page cache, wall s", f"{kc.wall:.1f}", f"llama-mtmd-cli {mc.wall:.1f}",
                        kc.wall / mc.wall, "(info)", None)
        else:
            log("--cold: cannot drop the page cache (needs root); skipped")

    # 4. a second question about the same image ---------------------------------------------------
    log("first and second question about one image (cache on)")
    first = check(run([*kvl, "ask", str(photos[0]), "What is in this picture?", "--max-tokens", str(N_GEN),
                       "--temperature", "0", "-t", str(threads)], env=env), "kvl ask (first)")
    second = check(run([*kvl, "ask", str(photos[0]), "What colours stand out?", "--max-tokens", str(N_GEN),
                        "--temperature", "0", "-t", str(threads)], env=env), "kvl ask (second)")
    assert first.first_byte and second.first_byte
    res.raw["second_ask"] = {"first_wall": first.wall, "first_ttft": first.first_byte,
                             "second_wall": second.wall, "second_ttft": second.first_byte}
    res.add("second ask: first token s", f"{second.first_byte:.1f}",
            f"first ask end to end {first.wall:.1f} (first token {first.first_byte:.1f})",
            second.first_byte / first.wall, "<= 0.2", second.first_byte / first.wall <= 0.2)

    # 5. a batch of captions ----------------------------------------------------------------------
    n = args.batch
    caption = CAPTION_PROMPTS["normal"]
    log(f"batch of {n} captions: a loop of llama-mtmd-cli --no-repack")
    loop = 0.0
    for p in photos[:n]:
        loop += check(run([mtmd_bin, *mtmd_common, "--no-repack", "--image", str(p), "-p", caption]),
                      "llama-mtmd-cli").wall
    log(f"batch of {n} captions: one kvl caption")
    kb_run = check(run([*kvl, "caption", *map(str, photos[:n]), "--max-tokens", str(N_GEN), "--temperature", "0",
                        "--no-cache", "-t", str(threads), "--json"], env=env), "kvl caption")
    recs = [json.loads(line) for line in kb_run.out.splitlines()]
    assert len(recs) == n and all(r["tokens"]["generated"] == N_GEN for r in recs)
    res.raw["batch"] = {"n": n, "mtmd_loop_wall": loop, "kvl_wall": kb_run.wall, "kvl_rss": kb_run.rss}
    res.add(f"{n} captions, images per minute (kvl's default: {threads} threads as "
            f"{min(2, threads)} workers)", f"{60 * n / kb_run.wall:.2f}",
            f"loop of llama-mtmd-cli {60 * n / loop:.2f}", loop / kb_run.wall, ">= 1.2", loop / kb_run.wall >= 1.2)
    res.add(f"peak RSS, {n}-caption batch (GB)", f"{kb_run.rss / 1e9:.2f}", f"files {files_bytes / 1e9:.2f} + 1.5",
            kb_run.rss / (files_bytes + 1.5e9), "<= 1.0", kb_run.rss <= files_bytes + 1.5e9)
    if args.batch_one_worker:
        log(f"batch of {n} captions: one kvl caption -P 1 (one worker with every thread)")
        k1 = check(run([*kvl, "caption", *map(str, photos[:n]), "--max-tokens", str(N_GEN), "--temperature", "0",
                        "--no-cache", "-t", str(threads), "--json", "-P", "1"], env=env), "kvl caption -P 1")
        res.raw["batch_one_worker"] = {"n": n, "kvl_wall": k1.wall, "kvl_rss": k1.rss}
        res.add(f"{n} captions, images per minute, -P 1", f"{60 * n / k1.wall:.2f}",
                f"loop of llama-mtmd-cli {60 * n / loop:.2f}", loop / k1.wall, "(info)", None)

    # 5b. the same with answers of a realistic length (a caption with some thinking)
    if args.long_batch:
        nl, gl = args.long_batch, args.long_tokens
        log(f"batch of {nl} captions of {gl} tokens: a loop of llama-mtmd-cli --no-repack")
        loop_long = 0.0
        long_common = [a if a != str(N_GEN) else str(gl) for a in mtmd_common]
        for p in photos[:nl]:
            loop_long += check(run([mtmd_bin, *long_common, "--no-repack", "--image", str(p), "-p", caption]),
                               "llama-mtmd-cli").wall
        log(f"batch of {nl} captions of {gl} tokens: one kvl caption -P {nl} (answers generated together)")
        kl = check(run([*kvl, "caption", *map(str, photos[:nl]), "--max-tokens", str(gl), "--temperature", "0",
                        "--no-cache", "-t", str(threads), "--json", "-P", str(nl)], env=env), "kvl caption")
        recs = [json.loads(line) for line in kl.out.splitlines()]
        assert len(recs) == nl and all(r["tokens"]["generated"] == gl for r in recs)
        res.raw["batch_long"] = {"n": nl, "tokens": gl, "mtmd_loop_wall": loop_long, "kvl_wall": kl.wall}
        res.add(f"{nl} captions of {gl} tokens (-P {nl}), images per minute", f"{60 * nl / kl.wall:.2f}",
                f"loop of llama-mtmd-cli {60 * nl / loop_long:.2f}", loop_long / kl.wall, ">= 1.2",
                loop_long / kl.wall >= 1.2)

    # 6. repack on this CPU -----------------------------------------------------------------------
    if not args.skip_repack_probe:
        rp = run([bench_bin, "-m", str(model), "-p", "16", "-n", "4", "-r", "1", "-t", str(threads), "--repack", "1"])
        aborted = rp.rc != 0
        res.raw["repack_probe"] = {"rc": rp.rc, "assert": "GGML_ASSERT" in rp.err}
        res.add("llama-bench --repack 1 on this CPU", "-", "aborted" if aborted else "runs", None, "(info)", None)

    out_dir = REPO / "benchmarks" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    res.raw["rows"] = res.rows
    (out_dir / "results.json").write_text(json.dumps(res.raw, indent=2, default=str))
    print("| measurement | kvl | reference | ratio | target |\n|---|---:|---|---:|---|")
    for r in res.rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        verdict = "" if r["pass"] is None else (" ✔" if r["pass"] else " ✘")
        print(f"| {r['what']} | {r['kvl']} | {r['reference']} | {ratio} | {r['target']}{verdict} |")
    return 0 if all(r["pass"] is not False for r in res.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
