"""Documents in a run: each PDF (or multi-page TIFF) among the inputs becomes its selected pages,
probed in the decoder process before the model loads.

caption and ocr make one job per page (``per_image_jobs``); ``kvl ask doc.pdf`` puts the pages in
one prompt, each after its label (``[page 3]``), with the per-page image budget lowered so that
they fit the context, as a video's frames are (``page_budget``). A document that cannot be read
(damaged, encrypted, not a PDF, too many pages) is a problem in its place, like a missing image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from ..errors import ContextError, InputError, KvlError
from ..media.documents import DocPage, DocumentOptions, document_kind, probe, spool
from ..media.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, InputProblem, InputRef
from ..pages import Page, select_pages
from .plan import MIN_IMAGE_TOKENS, PROMPT_RESERVE, RunPlan
from .runner import Job

PAGE_LABEL_TOKENS = 20  # "[page 12]" and the image's markers, besides its image tokens
TEMPLATE_TOKENS = 64  # the chat template's own tokens (roles, turn markers, the thinking's opening)
MIN_ANSWER_TOKENS = 256  # the answer's room shrinks to this before pages do not fit
Skip = Callable[[str, int], bool]  # (input's label, page number) -> already done


def _kind(ref: InputRef) -> str | None:
    """The input's kind of document, from its name, or its first bytes when its name does not tell
    (stdin, a file without an image's extension); None for an image or a video."""
    suffix = ref.suffix
    if suffix in IMAGE_EXTENSIONS - {".tif", ".tiff"} or suffix in VIDEO_EXTENSIONS:
        return None
    kind = document_kind(suffix, None)
    if kind is not None or (ref.url is not None and _named(suffix)):
        return kind
    head = _head(ref)
    if ref.url is not None:  # a URL whose name does not tell (arXiv's /pdf/2501.01234): sniffed by its bytes
        kind = document_kind(suffix, head)
        if kind is None:
            ref.release()  # an image: fetched again when its turn comes (a long batch keeps no bytes meanwhile)
        return kind
    return document_kind(suffix, head)


def _named(suffix: str) -> bool:
    """Whether a URL's name ends in a real file extension (``.php`` tells nothing, but a name does)."""
    return suffix[1:].isalpha() if suffix else False


def _head(ref: InputRef) -> bytes | None:
    try:
        source = ref.source()
    except InputError:
        return None  # reported when the input is checked, in its place
    if isinstance(source, bytes):
        return source[:1024]
    try:
        with source.open("rb") as f:
            return f.read(1024)
    except OSError:
        return None


def expand_documents(refs: list[InputRef], problems: list[InputProblem], options: DocumentOptions,
                     skip: Skip | None = None) -> tuple[list[InputRef], list[InputProblem], int]:
    """Each document among ``refs`` replaced by its selected pages (those ``skip`` does not say are
    done), in order; a document that cannot be read becomes a problem in its place; every earlier
    problem keeps its place. Also: how many pages ``skip`` left out."""
    out: list[InputRef] = []
    found: list[InputProblem] = []
    before: list[int] = []  # how many refs come out before each input
    skipped = 0
    for ref in refs:
        before.append(len(out))
        kind = _kind(ref)
        if kind is None:
            out.append(ref)
            continue
        try:
            base, pages = _pages(ref, kind, options)
        except KvlError as exc:
            found.append(InputProblem(ref.label, exc, len(out)))
            continue
        if pages is None:  # a TIFF of one page: an image
            out.append(ref)
            continue
        todo = [p for p in pages if skip is None or not skip(ref.label, p.number)]
        skipped += len(pages) - len(todo)
        out += [replace(base, page=replace(p, page=replace(p.page, first=i == 0))) for i, p in enumerate(todo)]
    before.append(len(out))
    moved = [InputProblem(p.label, p.error, None if p.at is None else before[p.at]) for p in problems]
    return out, sorted(moved + found, key=lambda p: -1 if p.at is None else p.at), skipped


def pages_note(refs: list[InputRef], options: DocumentOptions) -> str | None:
    """With ``--pages``, a note naming the inputs it does not apply to (images, one-page TIFFs:
    read whole), so that ``--pages 2`` on an image is not silently ignored."""
    whole = [ref.label for ref in refs if ref.page is None]
    if not options.pages or not whole:
        return None
    more = f" and {len(whole) - 1} more" if len(whole) > 1 else ""
    return f"kvl: note: --pages applies to documents only; {whole[0]}{more} read whole\n"


def _pages(ref: InputRef, kind: str, options: DocumentOptions) -> tuple[InputRef, list[DocPage] | None]:
    """The input its pages are read from (a document read once, from stdin or a URL, spooled to a
    private file), and its selected pages (None: a TIFF of one page, an image)."""
    source = ref.source()
    if isinstance(source, bytes) and source:
        ref = replace(ref, path=spool(source, f".{kind}"), data=None, url=None, reader=None)
        source = ref.source()
    info, with_text = probe(ref.label, source, kind, options)
    if kind == "tiff" and info.pages == 1:
        return ref, None
    numbers = select_pages(options.pages, info.pages, ref.label)
    return ref, [DocPage(Page(n, info.pages), kind, options.dpi, options.password,
                         options.text_layer and n in with_text) for n in numbers]


def page_meta(ref: InputRef, text_layer: bool) -> dict[str, object]:
    """A page's record fields: ``page``, ``pages`` and, with ``--text-layer``, where its text came from."""
    if ref.page is None:
        return {}
    meta: dict[str, object] = {"page": ref.page.number, "pages": ref.page.page.count}
    if text_layer:
        meta["source"] = "text" if ref.page.text else "ocr"
        if ref.page.text:
            meta["model"] = None  # no model read it: its own text
    return meta


def page_label(ref: InputRef, several: bool) -> str:
    """What goes before a page's image in one prompt: ``[page 3]`` (``[a.pdf page 3]`` when the
    prompt holds pages of several documents), as a video frame's timestamp does."""
    assert ref.page is not None
    return f"[{ref.label} page {ref.page.number}]" if several else f"[page {ref.page.number}]"


def prompt_tokens(question: str) -> int:
    """At most how many tokens a prompt's own text takes besides its images: the chat template's
    and the question's (a token is at least one byte), not a fixed 512 (half of a small --ctx)."""
    return TEMPLATE_TOKENS + len(question.encode("utf-8", "surrogatepass"))


def pages_that_fit(ctx: int, max_tokens: int, prompt: int = PROMPT_RESERVE) -> int:
    """How many pages fit ``ctx`` at the floor of 8 image tokens a page (and their labels), with the
    prompt's text and the answer's room shrunk to at most ``MIN_ANSWER_TOKENS``."""
    room = ctx - prompt - min(max_tokens, MIN_ANSWER_TOKENS)
    return max(0, room // page_cost(MIN_IMAGE_TOKENS))


def page_cost(tokens: int) -> int:
    """What a page given ``tokens`` image tokens can take in the prompt: its label, and the image's
    tokens with the encoder's rounding to whole 28-pixel cells (up to a row and a column more)."""
    return tokens + 2 * math.isqrt(tokens) + 2 + PAGE_LABEL_TOKENS


def page_budget(n_pages: int, per_page: int, ctx: int, max_tokens: int, prompt: int = PROMPT_RESERVE) -> int:
    """Image tokens per page so that every page, its label, the prompt's text (``prompt`` tokens)
    and the answer fit the context (as for a video's frames: the answer's room shrinks before a page
    goes under the floor). ContextError when even the floor of 8 tokens a page does not fit, saying
    how many pages would."""
    each = page_cost(MIN_IMAGE_TOKENS)
    room = ctx - max_tokens - prompt
    if room < n_pages * each:
        room = ctx - prompt - min(max_tokens, MIN_ANSWER_TOKENS)
    if room < n_pages * each:
        fits = pages_that_fit(ctx, max_tokens, prompt)
        raise ContextError(f"{n_pages} pages do not fit --ctx {ctx} even at {MIN_IMAGE_TOKENS} image tokens a page; "
                           + (f"{fits} page{'s' if fits != 1 else ''} would" if fits else "not even one page would"),
                           hint=f"choose pages with --pages (at most {fits}), or raise --ctx" if fits
                           else "raise --ctx")
    share = room // n_pages
    tokens = max(MIN_IMAGE_TOKENS, min(per_page, share - PAGE_LABEL_TOKENS))
    while tokens > MIN_IMAGE_TOKENS and page_cost(tokens) > share:
        tokens -= 1
    return tokens


def fit_pages(refs: list[InputRef], per_image: int, ctx: int, max_tokens: int,
              prompt: int = PROMPT_RESERVE) -> tuple[list[str] | None, int | None]:
    """For one prompt over ``refs`` (``kvl ask doc.pdf``): the label before each image (a page's
    ``[page 3]``, an image's nothing) and the image tokens each may have so that all fit ``ctx``
    besides ``prompt`` tokens of text; (None, None) when no ref is a page."""
    if not any(ref.page is not None for ref in refs):
        return None, None
    several = len({ref.label for ref in refs if ref.page is not None}) > 1
    labels = [page_label(ref, several) if ref.page is not None else "" for ref in refs]
    return labels, page_budget(len(refs), per_image, ctx, max_tokens, prompt)


def question_job(refs: list[InputRef], question: str, plan: RunPlan) -> Job:
    """One prompt over every image and page; a document's pages each after their label, their
    image budget lowered to fit --ctx (exit 8 when even 8 tokens a page cannot)."""
    labels, per_page = fit_pages(refs, plan.image_tokens, plan.model.ctx, plan.settings.max_tokens,
                                 prompt_tokens(question))
    names = list(dict.fromkeys(r.label for r in refs))
    meta: dict[str, object] = {"question": question, "images": names}  # a document once, by its name
    if labels is not None:
        meta["pages_in_prompt"] = [r.page.number for r in refs if r.page is not None]
        meta["tokens_per_page"] = per_page
    return Job(label=names[0] if len(names) == 1 else ", ".join(names), refs=refs, instruction=question, meta=meta,
               image_labels=labels, image_tokens=per_page)
