"""The HTML report in a real browser: headless Debian Chromium driven by Playwright.

Every figure must render (plotly draws an SVG), the console must stay clean, nothing may be fetched from anywhere but
the file itself, and a study's own text (name, description) must show as text, never run as script.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_report import _study

from dashboards.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
)

HOSTILE = "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"


def test_report_renders_offline_without_errors_and_shows_hostile_text_as_text(tmp_path):
    from playwright.sync_api import sync_playwright

    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0, "res=96": 0.1}, name="study")
    spec = study_dir / "study.json"
    spec.write_text(spec.read_text().replace('"<b>bold</b>"', '"' + HOSTILE.replace('"', '\\"') + '"'))
    report = write_report(study_dir)

    console_errors: list[str] = []
    outside_requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(str(e)))

        def guard(route):
            if route.request.url.startswith(("file://", "data:", "blob:")):
                return route.continue_()
            outside_requests.append(route.request.url)
            return route.abort()

        page.route("**/*", guard)
        page.goto(Path(report).as_uri())
        page.wait_for_load_state("load")
        figures = page.locator("div.plotly-graph-div")
        count = figures.count()
        assert count >= 2  # a metric against the axis, the category heat map
        page.wait_for_function(
            "n => document.querySelectorAll('div.plotly-graph-div svg.main-svg').length >= n", arg=count
        )
        for i in range(count):
            assert figures.nth(i).locator("svg.main-svg").count() >= 1, f"figure {i} did not render"
        assert page.evaluate("window.pwned") is None
        assert HOSTILE.split("<img")[0] in page.inner_text("body")  # shown, literally
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert console_errors == []
    assert outside_requests == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
