"""The documentation stays readable and whole: the README fits in 200 lines, and every relative link in it and
in docs/*.md names a file of the repository (and, with ``#anchor``, a heading of that file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def links(text: str) -> list[str]:
    """The targets of the markdown links and images in ``text``, code blocks and code spans left out."""
    return LINK.findall(CODE_SPAN.sub("", FENCE.sub("", text)))


def anchors(text: str) -> set[str]:
    """GitHub's anchors of the headings in ``text`` (lower case, punctuation dropped, blanks as hyphens)."""
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in HEADING.findall(FENCE.sub("", text))}


def broken(text: str, where: Path) -> list[str]:
    """The relative links of ``text`` (a page in the folder ``where``) that name no file of the repository, or
    no heading of that file."""
    found = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        file = (where / path).resolve()
        if not path:
            headings = anchors(text)
        elif file.is_file() and ROOT in file.parents:
            headings = anchors(file.read_text()) if file.suffix == ".md" else None
        else:
            found.append(f"{target}: no such file")
            continue
        if anchor and headings is not None and anchor not in headings:
            found.append(f"{target}: no such heading")
    return found


def test_the_readme_is_read_in_five_minutes():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert broken(page.read_text(), page.parent) == []


def test_a_broken_link_is_caught():
    text = (
        "## A heading\n[ok](../README.md#set-up) [gone](missing.md) `[code](skipped.md)` [web](https://example.org)"
        " [bad](../README.md#nope) [here](#a-heading) [figure](reproduce_cpu_curves.png)\n```\n[fenced](no.md)\n```"
    )
    assert broken(text, ROOT / "docs") == ["missing.md: no such file", "../README.md#nope: no such heading"]
