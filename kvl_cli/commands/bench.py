from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from ..engine.types import EngineConfig
from ..environment import env_flag
from ..errors import UsageError
from ..render import OutputOptions, Renderer

if TYPE_CHECKING:
    from ..engine.engine import Engine


def _int_list(ctx: click.Context | None, param: click.Parameter | None, value: str) -> list[int]:
    try:
        out = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers (e.g. 256,1024)") from None
    if not out or out[0] < 1:
        raise click.BadParameter("give positive numbers")
    return out


def peak_rss() -> int:
    """Peak resident memory of this process in bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def test_image(tokens: int, seed: int = 0) -> Any:
    """A noise image that the encoder turns into exactly ``tokens`` tokens when ``tokens`` is a square."""
    import numpy as np

    from ..media.images import image_from_array

    side = max(1, int(tokens ** 0.5)) * 28
    rng = np.random.default_rng(seed + tokens)
    pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    return image_from_array(pixels, label=f"noise-{side}x{side}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "-m", metavar="PATH|NAME", help="Text model [default: the pulled default].")
@click.option("--mmproj", metavar="PATH", help="Vision projector [default: the pair's].")
@click.option("--threads", "-t", type=click.IntRange(1, 1024), default=None, help="CPU threads [physical cores].")
@click.option("--gpu-layers", type=click.IntRange(-1, 10_000), default=-1, show_default=True,
              help="Layers to offload to the GPU (-1: all).")
@click.option("--repack/--no-repack", default=None, help="llama.cpp's repacked CPU weights [default: off].")
@click.option("--image-tokens", "budgets", default="256,1024", show_default=True, callback=_int_list,
              help="Image token budgets to encode (squares of a number are exact: 256, 1024).")
@click.option("--prompt-tokens", type=click.IntRange(1, 16384), default=128, show_default=True,
              help="Tokens in the prefill test (llama-bench's pp).")
@click.option("--gen-tokens", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Tokens in the generation test (llama-bench's tg).")
@click.option("--parallel", "parallels", default="1,4", show_default=True, callback=_int_list,
              help="Sequences generated together in one context (how batches run on a GPU).")
@click.option("--yes", "-y", is_flag=True, help="Download the default model first if none is installed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def bench(model: str | None, mmproj: str | None, threads: int | None, gpu_layers: int, repack: bool | None,
          budgets: list[int], prompt_tokens: int, gen_tokens: int, parallels: list[int], yes: bool,
          as_json: bool, debug: bool) -> int:
    """Measure this machine on the current model: load time, image encode per token budget,
    prefill and generation tokens/s (alone and with parallel sequences), peak memory.

    Runs on random tokens and noise images, like llama-bench; the cache is not used.

    \b
      kvl bench
      kvl bench --image-tokens 256,1024,4096 --json > bench.json
      kvl bench --gen-tokens 64 --parallel 1,2,4,8
    """
    from ..engine.engine import Engine
    from ..store.pull import ensure_model

    renderer = Renderer(OutputOptions(json=as_json))
    model_path, mmproj_path, name = ensure_model(model, mmproj, renderer, yes=yes)
    config = EngineConfig(model=model_path, mmproj=mmproj_path, n_threads=threads, n_gpu_layers=gpu_layers,
                          n_ctx=context_per_sequence(budgets, prompt_tokens, gen_tokens, max(parallels)),
                          repack=bool(repack if repack is not None else env_flag("KVL_REPACK")),
                          image_max_tokens=max(budgets), parallel=max(parallels))
    renderer.status("loading model")
    engine = Engine(config)
    out: dict[str, Any] = {
        "model": name, "model_file": str(model_path), "mmproj_file": str(mmproj_path),
        "files_bytes": model_path.stat().st_size + mmproj_path.stat().st_size,
        "threads": engine.threads, "gpu": engine.gpu, "repack": config.repack,
        "load_s": round(engine.load_seconds, 3), "encode": [], "decode": [],
    }
    rows = [("load", f"{engine.load_seconds:.2f} s", f"{model_path.name} + {mmproj_path.name}")]
    try:
        rows += measure_encode(engine, budgets, renderer, out)
        rows += measure_decode(engine, parallels, prompt_tokens, gen_tokens, renderer, out)
        rows += measure_constraint(engine, renderer, out)
    finally:
        renderer.stop_status()
        engine.close()
    out["peak_rss_bytes"] = peak_rss()
    rows.append(("peak memory (RSS)", f"{out['peak_rss_bytes'] / 1e9:.2f} GB",
                 f"model files {out['files_bytes'] / 1e9:.2f} GB"))
    if as_json:
        click.echo(json.dumps(out))
    else:
        print_table(rows, f"kvl bench · {name} · {engine.threads} threads" + (" · GPU" if engine.gpu else ""))
    return 0


def context_per_sequence(budgets: list[int], prompt_tokens: int, gen_tokens: int, p_max: int) -> int:
    n_ctx = max(512, prompt_tokens + gen_tokens + 64, max(budgets) + 64)
    if n_ctx * p_max > 262144:
        raise UsageError(f"--parallel {p_max} × ({prompt_tokens}+{gen_tokens}) tokens is too large",
                         hint="use fewer sequences or tokens")
    return n_ctx


Row = tuple[str, str, str]


def measure_encode(engine: Engine, budgets: list[int], renderer: Renderer, out: dict[str, Any]) -> list[Row]:
    rows = []
    for b in budgets:
        renderer.status("encoding image", f"{b} tokens")
        n_tok, secs = engine.encode_image(test_image(b))
        out["encode"].append({"budget": b, "image_tokens": n_tok, "seconds": round(secs, 3),
                              "tokens_per_s": round(n_tok / secs, 2)})
        rows.append((f"encode {n_tok} image tokens", f"{secs:.2f} s", f"{n_tok / secs:.1f} tok/s"))
    return rows


def measure_decode(engine: Engine, parallels: list[int], prompt_tokens: int, gen_tokens: int, renderer: Renderer,
                   out: dict[str, Any]) -> list[Row]:
    from ..engine.bench import bench_decode

    rows = []
    for p in parallels:
        renderer.status("decoding", f"pp{prompt_tokens} tg{gen_tokens} × {p}")
        t0 = time.perf_counter()
        pp, tg = bench_decode(engine, prompt_tokens, gen_tokens, parallel=p)
        out["decode"].append({"parallel": p, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
                              "prefill_tokens_per_s": round(pp, 2), "gen_tokens_per_s": round(tg, 2),
                              "seconds": round(time.perf_counter() - t0, 2)})
        if p == parallels[0] or p == 1:
            rows.append((f"prefill pp{prompt_tokens}", f"{pp:.2f} tok/s", ""))
        rows.append((f"generate tg{gen_tokens}" + (f" × {p} sequences" if p > 1 else ""),
                     f"{tg:.2f} tok/s", "all sequences together" if p > 1 else "one sequence"))
    return rows


def measure_constraint(engine: Engine, renderer: Renderer, out: dict[str, Any]) -> list[Row]:
    """--schema's cost per answer token (llguidance's mask) against a generated token's time (tg, one sequence)."""
    from ..engine.bench import bench_constraint

    renderer.status("sampling under a constraint")
    c = bench_constraint(engine)
    tg = next((d["gen_tokens_per_s"] for d in out["decode"] if d["parallel"] == 1), 0.0)
    token_ms = 1000 / tg if tg else 0.0
    c["token_ms"] = round(token_ms, 3)
    out["constrained"] = c

    def share(ms: float) -> str:
        return f"{100 * ms / token_ms:.1f}% of a generated token" if token_ms else ""

    extra_ok, extra_no = c["allowed_ms"] - c["plain_ms"], c["refused_ms"] - c["plain_ms"]
    return [("sampling a free token", f"{c['plain_ms']:.2f} ms", share(c["plain_ms"])),
            ("constrained, allowed", f"+{extra_ok:.2f} ms", share(extra_ok)),
            ("constrained, refused", f"+{extra_no:.2f} ms", share(extra_no)),
            ("refused, most allowed", f"+{c['refused_wide_ms'] - c['plain_ms']:.2f} ms",
             share(c["refused_wide_ms"] - c["plain_ms"])),
            ("token mask", f"{c['mask_ms']:.3f} ms", f"median; slowest {c['mask_max_ms']:.3f} ms")]


def print_table(rows: list[Row], title: str) -> None:
    from rich.table import Table

    from ..render.base import make_console

    table = Table(title=title, title_justify="left")
    table.add_column("test")
    table.add_column("result", justify="right")
    table.add_column("", style="dim")
    for r in rows:
        table.add_row(*r)
    make_console().print(table)
