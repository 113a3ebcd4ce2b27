from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import click

from ..environment import Environment
from ..errors import UsageError
from ..limits import max_input_bytes
from ..options import GPU_PARALLEL, ModelOptions
from ._common import pass_env
from .flags import model_options, take

DEFAULT_PORT = 8411


def _drop(name: str):  # type: ignore[no-untyped-def]
    """Leave one of the shared options out of this command (``--server``: this *is* the server)."""
    def apply(cmd: click.Command) -> click.Command:
        cmd.params = [p for p in cmd.params if p.name != name]
        return cmd
    return apply


@_drop("server")
@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default: only this machine can connect).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on (0: any free port; the record in kvl's runtime folder says which).")
@click.option("--api-key", envvar="KVL_API_KEY", default=None,
              help="Refuse requests without 'Authorization: Bearer KEY' (401) [env KVL_API_KEY]; "
              "'random' makes one and prints it.")
@click.option("--allow-files", "allow_files", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Let requests name file:// images inside DIR (repeatable); none by default.")
@click.option("--fetch-urls", "fetch_urls", type=click.Choice(["all", "public", "none"]), default=None,
              help="Which http(s) image URLs requests may make the server fetch: all; public (no loopback, private, "
              "link-local or metadata address, checked on the address connected to); none "
              "[default: all on a loopback --host, else public].")
@click.option("--fetch-timeout", type=click.FloatRange(1, 600), default=30, show_default=True, metavar="SECONDS",
              help="Deadline for fetching one image URL, whole (connect, redirects, body).")
@click.option("--fetch-concurrency", type=click.IntRange(1, 64), default=4, show_default=True, metavar="N",
              help="Image URLs fetched at once; more wait (within their deadline).")
@click.option("--parallel", "-P", type=click.IntRange(1, 64), default=None,
              help=f"Answers generated together, sharing each decode [default: {GPU_PARALLEL} with a GPU, 2 on a CPU].")
@click.option("--queue", type=click.IntRange(0, 10_000), default=64, show_default=True,
              help="Requests that may wait for a free sequence; beyond that: 503 with Retry-After.")
@click.option("--max-tokens", type=click.IntRange(1), default=8192, show_default=True,
              help="max_tokens for a request that does not say (thinking included).")
@click.option("--stop", "stop_", is_flag=True, help="Stop the running server(s) (with --port: that one) and exit.")
@model_options
@click.option("--verbose", "-v", count=True, help="-v: more server logs; -vv: llama.cpp's own logs too.")
@pass_env
def serve(env: Environment, host: str, port: int, api_key: str | None, allow_files: tuple[Path, ...],
          fetch_urls: str | None, fetch_timeout: float, fetch_concurrency: int, parallel: int | None, queue: int,
          max_tokens: int, stop_: bool, verbose: int, **kwargs: Any) -> int:
    """Serve the model over OpenAI's chat-completions API, loaded once, with the CLI's disk caches.

    POST /v1/chat/completions (text and image_url parts, streaming with the thinking in
    reasoning_content), GET /v1/models, GET /health. caption, ocr and ask use a running server of
    the same model (nothing loads; --no-server to run in-process). Needs: pip install 'kvl[serve]'.

    \b
      kvl serve                                   http://127.0.0.1:8411/v1
      kvl serve --port 9000 --api-key random
      kvl serve --stop
      kvl serve --host 0.0.0.0 --api-key random   image URLs: public addresses only
    """
    if stop_:
        return stop_servers(env, port if _given("port") else None)
    m = take(ModelOptions, {**kwargs, "server": False})
    try:
        from ..serve import server
        from ..serve.fetch import FetchLimits, FetchPolicy
    except ImportError as exc:
        raise UsageError(f"kvl serve needs the server packages ({exc.name} is missing)",
                         hint="pip install 'kvl[serve]'") from None
    if api_key == "random":
        api_key = secrets.token_urlsafe(24)
        env.stderr.write(f"kvl serve: API key: {api_key}\n")
    cfg = _config(env, m, verbose, parallel)
    cfg.host, cfg.port, cfg.api_key, cfg.queue = host, port, api_key or None, queue
    cfg.allow_files = [p.resolve() for p in allow_files]
    policy = FetchPolicy(fetch_urls) if fetch_urls else FetchPolicy.default_for(host)
    cfg.fetch = FetchLimits(policy=policy, deadline_s=fetch_timeout, concurrency=fetch_concurrency)
    cfg.defaults.max_tokens = max_tokens
    server.setup_logging(env.stderr, verbose >= 1)
    return server.run(cfg, env.stderr)


def _given(name: str) -> bool:
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE


def _config(env: Environment, m: ModelOptions, verbose: int, parallel: int | None):  # type: ignore[no-untyped-def]
    from ..options import CommonOptions, GenerationOptions, OutputFlags
    from ..render import make_renderer
    from ..run.plan import make_plan
    from ..serve.protocol import Defaults
    from ..serve.server import ServeConfig
    from ..store.pull import ensure_model

    out = OutputFlags(as_json=False, verbose=verbose, debug=False, dry_run=False)
    gen = GenerationOptions(temperature=0.8, top_p=1.0, top_k=0, seed=None, max_tokens=None, think_budget=None,
                            no_think=False, show_thinking=False, schema=None, choices=None)
    plan = make_plan("ask", CommonOptions(m, gen, out)).for_server(parallel)
    renderer = make_renderer(plan.render, env)
    model, mmproj, name = ensure_model(m.model, m.mmproj, renderer, yes=m.yes)
    renderer.close()
    engine = plan.engine_config(model, mmproj)
    image_max = int(engine.image_max_tokens or 1024)
    defaults = Defaults(image_max_tokens=image_max)
    return ServeConfig(engine=engine, model_name=name, parallel=plan.sequences, cache=m.cache, defaults=defaults,
                       max_body=max_input_bytes() * 4 // 3 + 1_000_000)


def stop_servers(env: Environment, port: int | None) -> int:
    from ..serve import record

    servers = [r for r in record.running() if port is None or r.port == port]
    if not servers:
        env.stderr.write("kvl serve: no server is running" + (f" on port {port}" if port else "") + "\n")
        return 0
    code = 0
    for rec in servers:
        if record.stop(rec):
            env.stderr.write(f"kvl serve: stopped {rec.url} (pid {rec.pid})\n")
        else:
            env.stderr.write(f"kvl serve: {rec.url} (pid {rec.pid}) did not stop within 30 s\n")
            code = 1
    return code
