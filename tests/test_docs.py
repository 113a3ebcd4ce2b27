"""The README is a front page: short, and every relative link (file and anchor) in it and in docs/
resolves."""

from __future__ import annotations

import collections
import re
from pathlib import Path

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def unfenced(path: Path) -> str:
    """The page without its code blocks."""
    out, fence = [], False
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        out.append("" if fence else line)
    return "\n".join(out)


def prose(path: Path) -> str:
    """The page without code (a link in code is an example, not a link)."""
    return re.sub(r"`[^`\n]*`", "``", unfenced(path))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"<[^>]+>", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: collections.Counter[str] = collections.Counter()
    out = set(re.findall(r'<a id="([^"]+)"', path.read_text(encoding="utf-8")))
    for m in re.finditer(r"^#{1,6} (.+)$", unfenced(path), re.M):
        s = slug(m.group(1))
        out.add(s if not seen[s] else f"{s}-{seen[s]}")
        seen[s] += 1
    return out


def test_readme_is_a_front_page() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 400
    for heading in ("## The two commands", "## Exit codes", "## Where files go", "## Python"):
        assert heading in text
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci in text  # .ci/run runs the README's test command


def test_every_relative_link_resolves() -> None:
    broken, checked = [], 0
    for page in PAGES:
        for target in LINK.findall(prose(page)):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            checked += 1
            path, _, fragment = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert checked > 50 and not broken, broken
