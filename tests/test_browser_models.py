"""The Models page in a real browser, on a real index of two models with automatic labels:
every chart the page declares draws, none shows an error, and no request leaves the
machine. The screenshot goes to screenshots/models-charts.png."""
from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from helpers.browser_app import LOCAL, browser, chromium_path, record_hosts, running_app
from helpers.explorer_fixtures import app_at, copy_db, no_exception

pytestmark = [
    pytest.mark.browser, pytest.mark.integration,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (apt-get install chromium)"),
]

SHOTS = Path(__file__).resolve().parents[1] / "screenshots"


@pytest.fixture(scope="module")
def scored_db(real_index, tmp_path_factory) -> Path:
    from index.measure.autolabel import autolabel

    db = copy_db(real_index, tmp_path_factory.mktemp("browser-models") / "index.duckdb")
    autolabel(db)
    return db


def declared_charts(db: Path, monkeypatch) -> int:
    """How many charts the Models page asks Streamlit to draw (its script, run by AppTest)."""
    monkeypatch.setenv("SOLU_DB", str(db))
    at = app_at("models")
    no_exception(at)
    return len(at.get("vega_lite_chart"))


def test_every_chart_of_the_models_page_draws(scored_db, monkeypatch):
    charts = declared_charts(scored_db, monkeypatch)
    assert charts >= 8  # loss curves, two bars, density, a max-activation panel per model, the comparison's
    SHOTS.mkdir(exist_ok=True)
    with running_app(scored_db, scored_db.with_name("app.log")) as url, browser() as b:
        page = b.new_page(viewport={"width": 1440, "height": 6000})  # the whole page in view
        hosts = record_hosts(page)
        page.goto(f"{url}/models")
        page.get_by_text("GELU and SoLU side by side").wait_for(timeout=30_000)
        containers = page.locator('[data-testid="stVegaLiteChart"]')
        expect(containers).to_have_count(charts, timeout=30_000)
        for i in range(charts):  # each scrolled into view, in case a chart waits until it is seen
            containers.nth(i).scroll_into_view_if_needed(timeout=30_000)
        drawn = containers.filter(has=page.locator(".marks"))  # vega's canvas or svg, once drawn
        expect(drawn).to_have_count(charts, timeout=30_000)
        for i in range(charts):
            box = drawn.nth(i).locator(".marks").first.bounding_box()
            assert box and box["width"] > 50 and box["height"] > 50, f"chart {i} is drawn empty: {box}"
        assert page.get_by_test_id("stException").count() == 0
        assert page.locator('[data-testid="stVegaLiteChart"]').filter(has_text="Error").count() == 0
        page.screenshot(path=SHOTS / "models-charts.png", full_page=True)
    assert hosts <= LOCAL, f"the page asked other hosts: {sorted(hosts - LOCAL)}"
