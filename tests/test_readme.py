"""What the README and docs/ link to or embed is in git, so a fresh clone shows it without running anything;
the README stays a short front door that links every docs page."""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img[^>]+src=\"([^\"]+)\"")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
DOCS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
README_MAX_LINES = 220


def relative_targets(markdown: str) -> list[str]:
    targets = [a or b for a, b in LINK.findall(markdown)]
    return [t.split("#")[0] for t in targets if not re.match(r"^([a-z]+:|#|mailto:)", t) and t.split("#")[0]]


def anchored_targets(markdown: str) -> list[tuple[str, str]]:
    """(file, fragment) of every link with a fragment outside code blocks; file "" is the page itself."""
    targets = [a or b for a, b in LINK.findall(FENCE.sub("", markdown))]
    pairs = [tuple(t.split("#", 1)) for t in targets if "#" in t and not re.match(r"^[a-z]+:", t)]
    return [(path, fragment) for path, fragment in pairs if not path or path.endswith(".md")]


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = next(i for i in range(len(anchors) + 1) if (f"{slug}-{i}" if i else slug) not in anchors)
        anchors.add(f"{slug}-{n}" if n else slug)
    return anchors


@cache
def tracked() -> frozenset[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return frozenset(out.splitlines())


def resolve(page: str, target: str) -> str:
    """The repository path a link on `page` points at (links are relative to the page's own folder)."""
    return os.path.normpath(os.path.join(os.path.dirname(page), target.rstrip("/"))).replace(os.sep, "/")


def untracked_targets(page: str) -> list[str]:
    files = tracked()
    missing = []
    for target in relative_targets((ROOT / page).read_text()):
        path = resolve(page, target)
        if path.startswith("../") or (path not in files and not any(f.startswith(path + "/") for f in files)):
            missing.append(target)
    return missing


def test_the_link_finder_sees_links_and_images():
    md = '![fig](reports/a.png) [t](docs/b.md#x) [w](https://x.org) [a](#top) <img src="c.png" width=3>'
    assert relative_targets(md) == ["reports/a.png", "docs/b.md", "c.png"]


def test_links_resolve_from_the_page_folder():
    assert resolve("docs/results.md", "../reports/tables/main.md") == "reports/tables/main.md"
    assert resolve("docs/results.md", "reports/tables/main.md") == "docs/reports/tables/main.md"
    assert resolve("README.md", "reports/predictions/") == "reports/predictions"
    assert resolve("docs/a.md", "../../x.md") == "../x.md"


def test_heading_anchors_follow_github():
    md = "# The `brain3d` command\n## Profiles: one code path, two configurations\n## A\n## A\n```\n# not\n```\n"
    assert heading_anchors(md) == {
        "the-brain3d-command",
        "profiles-one-code-path-two-configurations",
        "a",
        "a-1",
    }
    assert anchored_targets("[x](b.md#y) [z](#w) [u](https://e.org/#v) [p](c.png#q)") == [
        ("b.md", "y"),
        ("", "w"),
    ]


def test_every_relative_link_and_image_in_the_readme_is_tracked_by_git():
    assert relative_targets((ROOT / "README.md").read_text()), "the README links to the committed results"
    missing = untracked_targets("README.md")
    assert not missing, f"README.md links to files a clean clone does not have: {missing}"


@pytest.mark.parametrize("page", DOCS)
def test_every_relative_link_and_image_in_docs_is_tracked_by_git(page):
    missing = untracked_targets(page)
    assert not missing, (
        f"{page} links to files a clean clone does not have (links are relative to docs/): {missing}"
    )


@pytest.mark.parametrize("page", ["README.md", *DOCS])
def test_every_link_to_a_section_names_a_heading_of_its_page(page):
    broken = [
        f"{path}#{fragment}"
        for path, fragment in anchored_targets((ROOT / page).read_text())
        if (target := resolve(page, path) if path else page) in tracked()
        and fragment not in heading_anchors((ROOT / target).read_text())
    ]
    assert not broken, f"{page} links to sections that do not exist: {broken}"


def test_the_readme_is_short_and_links_every_docs_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    assert DOCS, "docs/ holds the detail the README leaves out"
    linked = {resolve("README.md", t) for t in relative_targets("\n".join(lines))}
    assert not set(DOCS) - linked, f"README.md does not link {sorted(set(DOCS) - linked)}"


@pytest.mark.parametrize("page", DOCS)
def test_each_docs_page_opens_with_a_title_and_a_summary(page):
    blocks = (ROOT / page).read_text().split("\n\n")
    assert blocks[0].startswith("# ") and "\n" not in blocks[0], f"{page} starts with one '# ' title line"
    summary = blocks[1].strip()
    assert not re.match(r"^(#|\||```|- |!\[)", summary) and len(summary.split()) >= 20, (
        f"{page}: a paragraph saying what the page holds comes right after the title"
    )
