"""The flags the commands share, as Click option bundles, and how they become the typed option objects
of ``kvl_cli.options`` (flag ▸ environment ▸ config file ▸ built-in default).

Values are validated by Click before any work starts (ranges, choices), so a bad option costs
milliseconds and exits 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from ..distributed.options import RayOptions
from ..environment import env_flag
from ..errors import UsageError
from ..media.documents import DocumentOptions
from ..options import CommonOptions, GenerationOptions, ModelOptions, OutputFlags, SidecarOptions
from ..pages import parse_pages

F = Callable[..., Any]


def stack_options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several Click option decorators as one (applied in the order written)."""

    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def parse_shard(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> tuple[int, int] | None:
    """Click callback for ``--shard K/N`` (1 <= K <= N)."""
    if value is None:
        return None
    try:
        k_text, n_text = value.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not K/N (e.g. 2/4)") from None
    if not 1 <= k <= n:
        raise click.BadParameter(f"{value!r}: K must be between 1 and N (e.g. 1/4 … 4/4)")
    return k, n


model_options = stack_options(
    click.option("--model", "-m", metavar="PATH|NAME", help="Text model: a .gguf path or an installed name "
                 "[env KVL_MODEL; default: the pulled default model]."),
    click.option("--mmproj", metavar="PATH", help="Vision projector .gguf [env KVL_MMPROJ; default: the pulled "
                 "pair's, or the one mmproj*.gguf beside --model]."),
    click.option("--ctx", type=click.IntRange(512, 1_048_576), default=16384, show_default=True,
                 help="Context window in tokens (prompt + images + thinking + answer)."),
    click.option("--threads", "-t", type=click.IntRange(1, 1024), default=None,
                 help="CPU threads [default: physical cores]."),
    click.option("--gpu-layers", type=click.IntRange(-1, 10_000), default=-1, show_default=True,
                 help="Layers to offload to the GPU (-1: all) when llama-cpp-python has a GPU backend."),
    click.option("--repack/--no-repack", default=None,
                 help="llama.cpp's repacked CPU weight layouts [default: off; it aborts on this model's graph "
                 "on some CPUs, see README; env KVL_REPACK=1]."),
    click.option("--image-min-tokens", type=click.IntRange(1, 16384), default=None,
                 help="Fewest tokens per image (libmtmd's limit; small images are scaled up)."),
    click.option("--yes", "-y", is_flag=True, help="Download the default model without asking if none is installed "
                 "[env KVL_AUTO_PULL=1]."),
    click.option("--image-max-tokens", type=click.IntRange(1, 16384), default=None,
                 help="Most tokens per image (larger images are scaled down) [caption/ask 1024, ocr 2048]."),
    click.option("--cache/--no-cache", default=True, show_default=True,
                 help="Reuse image embeddings and evaluated prompts from the disk cache (`kvl cache info`)."),
    click.option("--server/--no-server", default=True, show_default=True,
                 help="Answer through a running `kvl serve` of the same model when there is one (images; "
                 "nothing loads here); --no-server always runs in this process."),
)

batch_options = stack_options(
    click.option("--from", "from_file", metavar="FILE", default=None,
                 help="Also read inputs from FILE, one per line ('-' for stdin)."),
    click.option("--skip-done", metavar="OUT.jsonl", default=None,
                 help="Skip inputs that already have a result in OUT.jsonl (from --json): resume a batch."),
    click.option("--shard", metavar="K/N", default=None, callback=parse_shard,
                 help="Run only shard K of N (split by a hash of each input's name): one per machine."),
    click.option("--parallel", "-P", type=click.IntRange(1, 64), default=None,
                 help="Inputs worked on at once in a batch; each answer is printed whole, in input order. On "
                 "a GPU they share each decode; on a CPU up to one worker per core runs, each with its own share "
                 "of the cores [default: 4 with a GPU; 2 on a CPU with 2+ cores; 1 streams each answer live]."),
)

sidecar_options = stack_options(
    click.option("--sidecar", "sidecar", type=click.Choice(["txt", "json", "xmp"]), multiple=True,
                 help="Also write each answer beside its input: photo.txt (the answer), photo.json (the --json "
                 "record) or photo.xmp (dc:description, merged into an existing one); repeatable. A rerun skips "
                 "inputs whose sidecars kvl already wrote."),
    click.option("--sidecar-dir", metavar="DIR", default=None,
                 help="Write the sidecars under DIR, mirroring the inputs' paths, instead of beside them "
                 "(read-only media, URLs)."),
    click.option("--overwrite", is_flag=True, help="Run inputs whose sidecars are already there again, "
                 "and replace them (an XMP sidecar is still merged)."),
)

generation_options = stack_options(
    click.option("--temperature", type=click.FloatRange(0, 5), default=0.8, show_default=True,
                 help="Sampling temperature (Moonshot's recommendation; 0 = greedy)."),
    click.option("--top-p", type=click.FloatRange(0, 1), default=1.0, show_default=True, help="Nucleus sampling."),
    click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="Top-k sampling (0 = off)."),
    click.option("--seed", type=click.IntRange(0, 2**32 - 2), default=None, help="Random seed for repeatable output."),
    click.option("--max-tokens", type=click.IntRange(1), default=None,
                 help="Most tokens to generate, thinking included [caption 2048, ocr 4096, ask 8192]."),
    click.option("--think-budget", type=click.IntRange(0), default=None,
                 help="End the thinking after N tokens and let the answer follow [caption 512, ocr 256, "
                 "ask unlimited]."),
    click.option("--no-think", is_flag=True, help="Skip the thinking: answer at once (same as --think-budget 0)."),
    click.option("--schema", metavar="FILE|JSON", default=None,
                 help="Answer as JSON that follows this JSON Schema (a file or inline JSON): the thinking stays "
                 "free, the answer after it is constrained and validated; stdout gets the JSON document."),
    click.option("--choices", metavar="A,B,...", default=None,
                 help="Answer with exactly one of these (shorthand for an enum schema); stdout gets the choice."),
    click.option("--show-thinking/--hide-thinking", default=None,
                 help="Show the model's thinking [default: shown on a terminal; in a pipe it goes to stderr "
                 "only when asked]."),
)

output_options = stack_options(
    click.option("--json", "as_json", is_flag=True, help="One JSON object per input on stdout (JSON Lines)."),
    click.option("--verbose", "-v", count=True,
                 help="-v: phases, timings and token counts on stderr; -vv: llama.cpp's own logs too."),
    click.option("--debug", is_flag=True, help="Show the traceback of an error [env KVL_DEBUG=1]."),
    click.option("--dry-run", is_flag=True, help="Print the exact prompt each input gives the model (special "
                 "tokens as text, images as placeholders) and the settings; generate nothing."),
)


ADDRESS = re.compile(r"^(auto|local|ray://\S+|\[?[\w.:-]+\]?:\d{1,5})$")


def parse_address(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> str | None:
    """``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT``. ``--ray photo.jpg`` (the flag
    swallowed the first input) is refused with the way out."""
    if value is None or ADDRESS.match(value):
        return value
    raise click.BadParameter(f"{value!r} is not a cluster address (auto, local, HOST:PORT or ray://HOST:PORT); "
                             "to use the running cluster, write --ray auto or put --ray after the inputs")


def parse_workers(ctx: click.Context | None, param: click.Parameter | None,
                  value: str | None) -> tuple[int, int] | None:
    """``N`` (a fixed pool) or ``MIN..MAX`` (an autoscaling pool)."""
    if value is None:
        return None
    low, _, high = value.partition("..")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not N or MIN..MAX (e.g. 4 or 2..16)") from None
    if not 1 <= lo <= hi:
        raise click.BadParameter(f"{value!r}: need 1 <= MIN <= MAX")
    return lo, hi


ray_options = stack_options(
    click.option("--ray", "ray", metavar="[ADDRESS]", is_flag=False, flag_value="auto", default=None,
                 callback=parse_address,
                 help="Run on a Ray cluster: auto (RAY_ADDRESS or the running cluster, the default), local (start "
                 "one on this machine, on loopback), or HOST:PORT [needs: pip install 'kvl[ray]']."),
    click.option("--output", "output", metavar="DIR", default=None,
                 help="With --ray: write JSON Lines part files into DIR (a path every node sees, or s3://, gs://…) "
                 "instead of streaming records to stdout."),
    click.option("--ray-cpus", type=click.IntRange(1, 1024), default=None,
                 help="With --ray on CPUs: CPUs (and threads) per worker [default: 1; two one-thread workers beat "
                 "one with two]. With a GPU build each worker takes one GPU."),
    click.option("--workers", metavar="N|MIN..MAX", default=None, callback=parse_workers,
                 help="With --ray: workers in the pool (MIN..MAX autoscales) [default: as many as the cluster's "
                 "CPUs or GPUs hold]."),
)

ray_video_options = stack_options(
    ray_options,
    click.option("--skip-done", "skip_done", metavar="DIR", default=None,
                 help="With --ray: skip scenes (and videos) that already have a successful record in DIR."),
)


T = TypeVar("T")
# options that an environment variable sets when the flag is not given (it beats the config file)
ENV_OPTIONS = {"model": "KVL_MODEL", "mmproj": "KVL_MMPROJ", "repack": "KVL_REPACK", "yes": "KVL_AUTO_PULL",
               "debug": "KVL_DEBUG"}
FLAG_OPTIONS = {"repack", "yes", "debug"}


def take(cls: type[T], kwargs: dict[str, Any]) -> T:
    """Pop ``cls``'s fields out of Click's kwargs into a typed object, with environment variables
    applied: flag ▸ environment ▸ config file (Click's default map) ▸ built-in default."""
    values = {f.name: kwargs.pop(f.name) for f in fields(cls)}  # type: ignore[arg-type]
    ctx = click.get_current_context(silent=True)
    for name in values.keys() & ENV_OPTIONS.keys():
        given = ctx is not None and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        env = ENV_OPTIONS[name]
        if not given and os.environ.get(env):
            values[name] = env_flag(env) if name in FLAG_OPTIONS else os.environ[env]
    return cls(**values)


def common_options(kwargs: dict[str, Any]) -> CommonOptions:
    return CommonOptions(take(ModelOptions, kwargs), take(GenerationOptions, kwargs), take(OutputFlags, kwargs))


def sidecars_from(kwargs: dict[str, Any]) -> SidecarOptions | None:
    """Pop ``--sidecar``, ``--sidecar-dir`` and ``--overwrite``: None when no sidecar is asked for (and
    then the other two may not be given)."""
    kinds, folder = kwargs.pop("sidecar", ()), kwargs.pop("sidecar_dir", None)
    overwrite = kwargs.pop("overwrite", False)
    if not kinds:
        if folder is not None or overwrite:
            flag = "--sidecar-dir" if folder is not None else "--overwrite"
            raise UsageError(f"{flag} works only with --sidecar", hint="add --sidecar txt, json or xmp")
        return None
    return SidecarOptions(tuple(dict.fromkeys(kinds)), folder, overwrite)


def ray_from(kwargs: dict[str, Any], *, video: bool = False) -> RayOptions | None:
    """Pop the Ray options out of Click's kwargs: None without ``--ray`` (and then none of the others
    may be given)."""
    address = kwargs.pop("ray", None)
    output, cpus, workers = kwargs.pop("output", None), kwargs.pop("ray_cpus", None), kwargs.pop("workers", None)
    skip_done = kwargs.pop("skip_done", None) if video else None
    if address is None:
        given = [name for name, v in (("--output", output), ("--ray-cpus", cpus), ("--workers", workers),
                                      ("--skip-done", skip_done)) if v]
        if given:
            raise UsageError(f"{given[0]} works only with --ray", hint="add --ray auto (or --ray local)")
        return None
    return RayOptions(address, output, cpus, workers, skip_done)


def _check_pages(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> str | None:
    """Click callback for ``--pages``: malformed is exit 2 before anything is read."""
    if value is not None:
        try:
            parse_pages(value)
        except UsageError as exc:
            raise click.BadParameter(exc.message.split(": ", 1)[-1] + f" ({exc.hint})") from None
    return value


document_options = stack_options(
    click.option("--pages", metavar="1-3,7", default=None, callback=_check_pages,
                 help="Pages of each PDF or multi-page TIFF to read (1-based ranges and lists; 5- to the end)."),
    click.option("--dpi", type=click.IntRange(10, 1200), default=None,
                 help="Render PDF pages at this resolution [default: the one that fills the task's image token "
                      "budget, at most 300]."),
    click.option("--password", metavar="TEXT", default=None,
                 help="Password of encrypted PDFs [env KVL_PDF_PASSWORD]; never shown or recorded."),
)
text_layer_option = click.option(
    "--text-layer", is_flag=True,
    help="Use a PDF page's own text when it has one, OCR only pages without (records say \"source\").")


def documents_from(kwargs: dict[str, Any]) -> DocumentOptions:
    """Pop ``--pages``, ``--dpi``, ``--password`` (else ``KVL_PDF_PASSWORD``) and ``--text-layer``."""
    password = kwargs.pop("password", None) or os.environ.get("KVL_PDF_PASSWORD") or None
    dpi = kwargs.pop("dpi", None)
    return DocumentOptions(pages=kwargs.pop("pages", None), dpi=float(dpi) if dpi else None, password=password,
                           text_layer=bool(kwargs.pop("text_layer", False)))


def per_image_options(*own: Callable[[F], F]) -> Callable[[F], F]:
    """The flags of the commands that run per image and per page (caption, ocr, locate), in their
    --help order: documents, the command's ``own`` extras, model, batch, sidecars, Ray, generation
    and output."""
    return stack_options(document_options, *own, model_options, batch_options, sidecar_options, ray_options,
                         generation_options, output_options)
