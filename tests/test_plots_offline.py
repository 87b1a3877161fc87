"""`dvc plots show` renders offline: the HTML template named by .dvc/config (plots.html_template) inlines
vega, vega-lite and vega-embed, which ./setup.sh fetches from npm into .cache/vega/ (gitignored)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess

import pytest
import yaml
from conftest import chromium
from tiny_pipeline import ROOT

pytestmark = pytest.mark.slow

VEGA = ROOT / ".cache" / "vega"
BUNDLES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
REMOTE_SCRIPT = re.compile(r"""<script\b[^>]*\bsrc\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
REMOTE_LINK = re.compile(r"""<link\b[^>]*\bhref\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _template() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".dvc" / "config")
    return cfg.get("plots", "html_template", fallback="")


def test_dvc_config_names_the_offline_template():
    assert (ROOT / ".dvc" / _template()).resolve() == (VEGA / "template.html").resolve()


@pytest.fixture(scope="module")
def vega_js():
    missing = [name for name in (*BUNDLES, "template.html", "VERSIONS") if not (VEGA / name).is_file()]
    if missing:
        pytest.fail(
            f"{VEGA} lacks {missing}: run ./setup.sh, which fetches vega, vega-lite and vega-embed with "
            f"npm (npm found: {shutil.which('npm') or 'no'}); without them `dvc plots show` loads them "
            "from a CDN"
        )
    return VEGA


def test_local_vega_bundles_are_inlined_in_the_template(vega_js):
    html = (vega_js / "template.html").read_text()
    assert "{plot_divs}" in html and "{scripts}" not in html  # {scripts} is where DVC puts its CDN tags
    for name in BUNDLES:
        js = (vega_js / name).read_text()
        assert len(js) > 50_000 and js.strip() in html, name
    assert not REMOTE_SCRIPT.search(html)


def test_plots_show_writes_offline_html(tiny_pipeline, vega_js, tmp_path):
    repo = tiny_pipeline.repo
    shutil.copytree(vega_js, repo.path / ".cache" / "vega", dirs_exist_ok=True)  # ignored, so not in the copy
    out_dir = tmp_path / "plots"
    text = repo.dvc("plots", "show", "-o", str(out_dir))
    html = (out_dir / "index.html").read_text()
    assert "index.html" in text
    assert not REMOTE_SCRIPT.search(html), REMOTE_SCRIPT.search(html).group(0)
    assert not REMOTE_LINK.search(html)
    assert "cdn.jsdelivr.net" not in html
    # exactly the plots dvc.yaml declares: its titled vega plots (3 loss curves, the CI intervals) and its 2
    # images; no stage output is drawn again with DVC's default template (learning rate against step, ...)
    declared = yaml.safe_load((repo.path / "dvc.yaml").read_text())["plots"]
    titled = [next(iter(p)) for p in declared if isinstance(p, dict)]
    images = [p for p in declared if isinstance(p, str)]
    n_plots = html.count("vegaEmbed('#")
    assert n_plots == len(titled) == 4, (n_plots, titled)
    assert all(f'"text": "{t}"' in html or f'"title": "{t}"' in html for t in titled), titled
    assert html.count('<img src="static/') == len(images) == 2, "forest plot and LIME contact sheet"
    assert '"<DVC_METRIC_' not in html, "an anchor of the interval template was left unfilled"

    browser = chromium()
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
            "--dump-dom",
            (out_dir / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout.count('class="vega-embed')
    assert rendered == n_plots, f"{rendered} of {n_plots} plots rendered offline"
    shot = tmp_path / "plots.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ]
        + ["--window-size=1400,1600", "--virtual-time-budget=10000", f"--screenshot={shot}"]
        + [(out_dir / "index.html").as_uri()],
        capture_output=True,
        timeout=180,
        check=True,
    )
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "a blank page"
