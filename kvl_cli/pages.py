"""Pages of a document (a PDF, a multi-page TIFF): which page an input is, and ``--pages`` selections.

Plain data for every floor: the media layer makes pages, the runner turns each into a job, the
renderers mark where one page ends and the next begins, records carry ``page`` and ``pages``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import UsageError

DEFAULT_MAX_PAGES = 10_000  # a PDF with more pages is refused unread (KVL_MAX_PDF_PAGES)
PAGE_SEP = "#page="  # doc.pdf#page=3: one page of a document, as Ray rows and resume keys name it
_SPEC = re.compile(r"^\s*([0-9]+)\s*(?:-\s*([0-9]*)\s*)?$")


@dataclass(frozen=True)
class Page:
    """One page of a document: ``number`` (1-based) of ``count``; ``first``: the first page of
    this document the run writes (no page break before it)."""

    number: int
    count: int
    first: bool = True


def max_pages() -> int:
    """``KVL_MAX_PDF_PAGES``, else 10,000."""
    raw = os.environ.get("KVL_MAX_PDF_PAGES", "")
    try:
        value = int(raw) if raw else DEFAULT_MAX_PAGES
    except ValueError:
        raise UsageError(f"KVL_MAX_PDF_PAGES={raw!r} is not a number", hint="set it like 20000") from None
    return max(1, value)


def parse_pages(spec: str) -> list[tuple[int, int | None]]:
    """``1-3,7,10-``: 1-based ranges (an open end runs to the last page); UsageError if malformed."""
    ranges: list[tuple[int, int | None]] = []
    for part in spec.split(","):
        m = _SPEC.match(part)
        if not m:
            raise UsageError(f"--pages {spec!r}: {part.strip()!r} is not a page or a range",
                             hint="write pages like 1-3,7 (1-based; 5- for page 5 to the end)")
        start = int(m.group(1))
        end = None if m.group(2) == "" else int(m.group(2) or start)
        if start < 1 or (end is not None and end < start):
            raise UsageError(f"--pages {spec!r}: {part.strip()!r} is not a range of pages",
                             hint="pages count from 1, and a range goes up (2-5)")
        ranges.append((start, end))
    return ranges


def select_pages(spec: str | None, count: int, label: str) -> list[int]:
    """The pages ``spec`` names in a document of ``count`` pages, in order, each once. A page past
    the end is a usage error naming the page count."""
    if not spec:
        return list(range(1, count + 1))
    chosen: list[int] = []
    for start, end in parse_pages(spec):
        last = count if end is None else end
        if start > count or last > count:
            raise UsageError(f"--pages {spec}: {label} has {count} page{'s' if count != 1 else ''}",
                             hint=f"choose pages between 1 and {count}")
        chosen += [n for n in range(start, last + 1) if n not in chosen]
    return sorted(chosen)


def page_key(key: str, page: int | None) -> str:
    """An input's resume key with its page: ``doc.pdf#page=3`` (an image's key unchanged)."""
    return key if page is None else f"{key}{PAGE_SEP}{page}"


def split_page(name: str) -> tuple[str, int | None]:
    """``doc.pdf#page=3`` -> (``doc.pdf``, 3); a name without a page -> (name, None)."""
    base, sep, num = name.rpartition(PAGE_SEP)
    if sep and num.isdigit() and base:
        return base, int(num)
    return name, None
