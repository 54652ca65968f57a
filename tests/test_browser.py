"""The explorer in a real browser: `solu app` driven by Playwright and Debian's Chromium.

Screenshots of every page go to screenshots/ at the repository root.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import duckdb
import pytest

from browser_app import browser, chromium_path, running_app
from index.synthetic import HOSTILE_MAX_POS, HOSTILE_TOKENS, build_synthetic_index

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (apt-get install chromium)"),
]

SHOTS = Path(__file__).resolve().parents[1] / "screenshots"
GELU, SOLU = "gelu-tiny", "solu-tiny"
HOSTILE_LABEL = "**not bold** $x^2$ <b>tag</b> <img src=x onerror=alert(3)>"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_checkpoints):
    """`solu app` on a synthetic index whose models point at the tiny trained checkpoints."""
    root = tmp_path_factory.mktemp("browser")
    models = ((GELU, "gelu"), (SOLU, "solu_ln"))
    db = build_synthetic_index(root / "index.duckdb", models=models, post_ln=True)
    con = duckdb.connect(str(db))
    for model_id, act in models:
        con.execute("UPDATE models SET source = ? WHERE model_id = ?", [str(tiny_checkpoints[act]), model_id])
    con.close()
    with running_app(db, root / "app.log") as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    SHOTS.mkdir(exist_ok=True)
    with browser() as b:
        pg = b.new_page(viewport={"width": 1440, "height": 1300})
        dialogs: list[str] = []
        pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        pg.dialogs = dialogs
        yield pg
    assert not dialogs, f"a script ran in the page: {dialogs}"


def open_neuron(page, app_url, model=GELU, layer=0, neuron=0, site="post") -> float:
    start = time.perf_counter()
    page.goto(f"{app_url}/neuron?model={model}&layer={layer}&neuron={neuron}&site={site}")
    page.get_by_text("Top 10 activations").wait_for(timeout=30_000)
    return time.perf_counter() - start


def visible(token: str) -> str:
    return token.replace("\n", "↵\n").replace("\t", "⇥\t")


def test_neurons_table_click_opens_the_neuron(page, app_url):
    page.goto(app_url)
    page.get_by_text("neurons match").wait_for(timeout=30_000)
    page.screenshot(path=SHOTS / "neurons.png")
    grid = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
    page.mouse.click(grid["x"] + 15, grid["y"] + 35 + 17)  # the first row's selector
    page.wait_for_function("location.pathname.endsWith('/neuron')", timeout=15_000)
    page.get_by_text("Top 10 activations").wait_for(timeout=30_000)
    assert re.search(r"model=[\w-]+&layer=\d+&neuron=\d+&site=\w+", page.url)


def test_heatmap_shows_the_tokens_as_inert_text(page, app_url):
    seconds = open_neuron(page, app_url)
    assert seconds < 10, f"the neuron page took {seconds:.1f} s"
    first = page.locator(".snippet .heatmap").first
    assert first.inner_text() == "".join(visible(t) for t in HOSTILE_TOKENS)
    tokens = first.locator(".tok")
    assert tokens.count() == len(HOSTILE_TOKENS)
    peak = tokens.nth(HOSTILE_MAX_POS)
    assert "outline" in peak.get_attribute("style")
    assert peak.get_attribute("title").endswith("+9.000")
    peak.hover()
    for selector in ("script", "img", "strong", "em", "a", "code", "h1", ".katex"):
        assert page.locator(f".heatmap {selector}").count() == 0, selector
    page.screenshot(path=SHOTS / "neuron-hostile-text.png")


def test_label_saves_and_survives_a_reload(page, app_url):
    open_neuron(page, app_url, GELU, 1, 3)
    page.get_by_label("Label", exact=True).fill(HOSTILE_LABEL)
    page.get_by_label("Author (optional)").fill("browser")
    page.get_by_role("button", name="Save label").click()
    page.get_by_text("Label saved").wait_for(timeout=15_000)
    page.reload()
    page.get_by_text("Top 10 activations").wait_for(timeout=30_000)
    header = page.locator(".neuron-header")
    header.get_by_text(HOSTILE_LABEL).wait_for(timeout=15_000)
    assert header.locator("b, img, strong, .katex").count() == 0
    assert page.get_by_label("Label", exact=True).input_value() == HOSTILE_LABEL
    page.screenshot(path=SHOTS / "neuron-labeled.png", full_page=True)


def test_unknown_neuron_is_a_message(page, app_url):
    page.goto(f"{app_url}/neuron?model={GELU}&layer=7&neuron=0")
    page.get_by_text("No neuron L7 N0").wait_for(timeout=30_000)
    assert page.get_by_text("Traceback").count() == 0


def test_sql_query_runs_and_writes_are_refused(page, app_url):
    pytest.importorskip("index.sqlguard", reason="the SQL engine (index/sqlguard.py) has not landed yet")
    page.goto(f"{app_url}/sql")
    query = page.get_by_label("Query")
    query.wait_for(timeout=30_000)
    query.fill("SELECT model_id, count(*) AS neurons FROM neurons GROUP BY model_id ORDER BY model_id")
    page.get_by_role("button", name="Run query").click()
    page.get_by_text("2 rows").wait_for(timeout=30_000)
    page.get_by_role("button", name="Download CSV").wait_for()
    page.screenshot(path=SHOTS / "sql.png")
    query.fill("DROP TABLE labels")
    page.get_by_role("button", name="Run query").click()
    page.locator('[data-testid="stAlert"]').first.wait_for(timeout=30_000)
    assert page.get_by_text("Traceback").count() == 0


def test_probe_and_models_pages(page, app_url):
    page.goto(f"{app_url}/probe?model={SOLU}&layer=1&neuron=5&site=pre_ln")
    page.get_by_text("Neurons that fire most on this text").wait_for(timeout=60_000)
    page.screenshot(path=SHOTS / "probe.png")
    page.goto(f"{app_url}/models")
    page.get_by_text("GELU and SoLU side by side").wait_for(timeout=30_000)
    page.wait_for_timeout(1000)  # let the charts draw
    page.screenshot(path=SHOTS / "models.png")
