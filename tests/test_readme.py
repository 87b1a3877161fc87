"""What the README links to or embeds is in git, so a fresh clone shows it without running anything."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img[^>]+src=\"([^\"]+)\"")


def relative_targets(markdown: str) -> list[str]:
    targets = [a or b for a, b in LINK.findall(markdown)]
    return [t.split("#")[0] for t in targets if not re.match(r"^([a-z]+:|#|mailto:)", t) and t.split("#")[0]]


def test_the_link_finder_sees_links_and_images():
    md = '![fig](reports/a.png) [t](docs/b.md#x) [w](https://x.org) [a](#top) <img src="c.png" width=3>'
    assert relative_targets(md) == ["reports/a.png", "docs/b.md", "c.png"]


def test_every_relative_link_and_image_in_the_readme_is_tracked_by_git():
    tracked = set(
        subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )
    targets = relative_targets((ROOT / "README.md").read_text())
    assert targets, "the README links to the committed results"
    missing = [
        t
        for t in targets
        if t.rstrip("/") not in tracked and not any(f.startswith(t.rstrip("/") + "/") for f in tracked)
    ]
    assert not missing, f"README.md links to files a clean clone does not have: {missing}"
