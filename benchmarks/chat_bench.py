"""kvl chat's warm follow-ups: time to first token of a chat's first turn (a photo encoded and its
prompt evaluated) against the follow-up turns' (only their new tokens evaluated: the earlier turns,
the previous answer included, are still in the context's cells).

    .venv/bin/python benchmarks/chat_bench.py                          # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/chat_bench.py --models DIR --turns 3 --threads 2

The full-size synthetic Q4_K_M pair (``kvl_cli.synthetic.write_full_pair``; ``--models``, default
/work/bench-models, else ``.bench/models``), in process (``--no-server``), the disk cache off (the
first turn really encodes and evaluates), greedy, a short thinking budget and answer (the numbers
are about prompt evaluation, not generation). Time to first token: from the turn's start to its
first streamed token (thinking or answer), the model already loaded. The anchor is the first turn of
the same run; the target is a follow-up at most 0.15x of it. Prints a Markdown table; writes
``benchmarks/out/chat.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.run import log, write_photos  # noqa: E402
from kvl_cli.api import Collector  # noqa: E402
from kvl_cli.engine.types import Event, TextEvent  # noqa: E402

QUESTIONS = ["What is in this picture?", "And what colours are there?", "Is there any text in it?",
             "Describe the shapes.", "What is in the top left corner?"]
TARGET = 0.15


class FirstToken(Collector):
    """Keeps the answers, and the moment each turn's first token streamed."""

    first: float | None = None

    def event(self, ev: Event) -> None:
        if isinstance(ev, TextEvent) and self.first is None:
            self.first = time.perf_counter()


def find_models(arg: str | None) -> tuple[Path, Path]:
    for folder in [Path(arg)] if arg else [Path("/work/bench-models"), REPO / ".bench" / "models"]:
        models = sorted(folder.glob("synthetic-*.gguf"))
        projectors = sorted(folder.glob("mmproj-*.gguf"))
        if models and projectors:
            return models[0], projectors[0]
    raise SystemExit("no full-size pair found: write one with kvl_cli.synthetic.write_full_pair(DIR), --models DIR")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--think-budget", type=int, default=8)
    args = ap.parse_args()

    import kvl_cli
    from kvl_cli.chat import open_chat
    from kvl_cli.environment import Environment

    model, mmproj = find_models(args.models)
    work = REPO / ".bench" / "chat"
    photo = write_photos(work / "photos", 1)[0]
    env = Environment()
    log(f"pair {model.name} + {mmproj.name}; photo {photo.name}; threads {args.threads or 'all cores'}")
    lib = kvl_cli.open(model, mmproj, ctx=8192, threads=args.threads, cache=False, server=False, env=env)
    common = lib._common({"temperature": 0.0, "max_tokens": args.max_tokens, "think_budget": args.think_budget})
    renderer = FirstToken(env)
    chat = open_chat(common, [str(photo)], None, env, session=lib, renderer=renderer)
    t0 = time.perf_counter()
    chat.runner.engine = chat.runner.factory(None)  # the load is not part of any turn
    log(f"loaded in {time.perf_counter() - t0:.1f} s")
    rows: list[dict[str, Any]] = []
    for n, question in enumerate(QUESTIONS[:args.turns], 1):
        renderer.first = None
        t0 = time.perf_counter()
        record = chat.ask(question)
        if record.error is not None or record.result is None or renderer.first is None:
            raise SystemExit(f"turn {n} failed: {record.error}")
        r = record.result
        rows.append({"turn": n, "ttft_s": round(renderer.first - t0, 3), "prompt_tokens": r.tokens.prompt,
                     "reused_tokens": r.cached.prefix_tokens, "image_tokens": r.tokens.image,
                     "encode_s": round(r.timings.encode_s, 3), "prefill_s": round(r.timings.prefill_s, 3),
                     "generated": r.tokens.generated})
        log(f"turn {n}: {rows[-1]}")
    lib.close()
    anchor = rows[0]["ttft_s"]
    print("| turn | first token | × turn 1 | prompt tokens | reused from the cells | evaluated now |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        row["ratio"] = round(row["ttft_s"] / anchor, 3)
        print(f"| {row['turn']} | {row['ttft_s']:.2f} s | {row['ratio']:.3f} | {row['prompt_tokens']} | "
              f"{row['reused_tokens']} | {row['prompt_tokens'] - row['reused_tokens']} |")
    worst = max(row["ratio"] for row in rows[1:]) if len(rows) > 1 else None
    ok = worst is not None and worst <= TARGET
    print(f"\nworst follow-up: {worst}x turn 1 (target <= {TARGET}x): {'met' if ok else 'NOT met'}")
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "chat.json").write_text(json.dumps({"model": model.name, "threads": args.threads, "turns": rows,
                                               "target": TARGET, "met": ok}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
