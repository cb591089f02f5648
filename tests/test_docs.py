"""The README and docs/ as a guide: the README stays short, and every relative link (and #anchor)
in them points at a file and heading that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.M | re.S)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats -1, -2."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if m := re.match(r"#{1,6} (.+)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """Relative link targets of ``page`` (outside code blocks) whose file or heading is missing.
    Links that leave ``root`` (the project's shared SPEC.md) and URLs are not checked."""
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if root.resolve() not in dest.parents:
            continue
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    return broken


def test_readme_is_a_short_guide():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250
    assert lines[2] == "```bash"
    assert lines[3].startswith("make setup demo") and lines[4].startswith("make setup test")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_the_link_check_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text(
        "# B page\n\n## Two words\n\n```\n# not a heading\n```\n"
    )
    page = tmp_path / "a.md"
    page.write_text(
        "# A\n[ok](docs/b.md#two-words) [self](#a) [web](https://x.org) [out](../elsewhere.md)\n"
        "[gone](docs/c.md) [no heading](docs/b.md#not-a-heading) [`code`](docs/b.md#b-page)\n"
        "```\n[in a code block](nowhere.md)\n```\n"
    )
    assert broken_links(page, tmp_path) == ["docs/c.md", "docs/b.md#not-a-heading"]
