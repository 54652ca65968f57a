"""The explorer in a real browser: `solu app` on a real `solu index` output, driven by
Playwright and Debian's Chromium. Screenshots of every page go to screenshots/. No page
asks anything of a host beyond this machine.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from helpers.browser_app import LOCAL, browser, chromium_path, record_hosts, running_app
from helpers.explorer_fixtures import IMG_PATTERNS, MARKDOWN_PATTERNS, SCRIPT_PATTERNS, copy_db, hostile_snippet

pytestmark = [
    pytest.mark.browser, pytest.mark.integration,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (apt-get install chromium)"),
]

SHOTS = Path(__file__).resolve().parents[1] / "screenshots"
HOSTILE_LABEL = "**not bold** $x^2$ <b>tag</b> <img src=x onerror=alert(3)>"


@pytest.fixture(scope="module")
def db(real_index, tmp_path_factory) -> Path:
    return copy_db(real_index, tmp_path_factory.mktemp("browser") / "index.duckdb")


@pytest.fixture(scope="module")
def app_url(db):
    with running_app(db, db.with_name("app.log")) as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    SHOTS.mkdir(exist_ok=True)
    with browser() as b:
        pg = b.new_page(viewport={"width": 1440, "height": 1300})
        dialogs: list[str] = []
        pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        hosts = record_hosts(pg)
        yield pg
    assert not dialogs, f"a script ran in the page: {dialogs}"
    assert hosts <= LOCAL, f"the pages asked hosts beyond this machine: {sorted(hosts - LOCAL)}"


def neuron_url(app_url, model_id, layer, neuron, site) -> str:
    return f"{app_url}/neuron?model={model_id}&layer={layer}&neuron={neuron}&site={site}"


def wait_neuron_page(page) -> None:
    page.get_by_text(re.compile(r"^Top \d+ activations$")).wait_for(timeout=30_000)


def visible(token: str) -> str:
    return token.replace("\n", "↵\n").replace("\t", "⇥\t")


def test_the_neurons_page_answers_at_its_own_name(page, app_url):
    page.goto(f"{app_url}/neurons")
    page.get_by_text("neurons match").wait_for(timeout=30_000)
    assert page.get_by_text("Page not found").count() == 0


def test_neurons_table_click_opens_the_neuron(page, app_url):
    page.goto(app_url)
    page.get_by_text("neurons match").wait_for(timeout=30_000)
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
    page.get_by_text("Search labels").wait_for(timeout=30_000)
    page.wait_for_timeout(1000)  # let the table draw
    page.screenshot(path=SHOTS / "neurons.png")
    grid = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
    page.mouse.click(grid["x"] + 15, grid["y"] + 35 + 17)  # the first row's selector
    page.wait_for_function("location.pathname.endsWith('/neuron')", timeout=15_000)
    wait_neuron_page(page)
    assert re.search(r"model=[\w-]+&layer=\d+&neuron=\d+&site=\w+", page.url)


HOSTILE = {"script": SCRIPT_PATTERNS, "img": IMG_PATTERNS, "markdown-latex": MARKDOWN_PATTERNS}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_heatmap_shows_the_snippet_tokens_as_inert_text(page, app_url, db, kind):
    patterns = HOSTILE[kind]
    snippet = hostile_snippet(db, patterns)
    assert snippet["hits"] == len(patterns), f"no neuron's top snippet holds all of {patterns}"
    start = time.perf_counter()
    page.goto(neuron_url(app_url, *(snippet[k] for k in ("model_id", "layer", "neuron", "site"))))
    wait_neuron_page(page)
    seconds = time.perf_counter() - start
    heatmap = page.locator(".snippets").first.locator(".snippet").nth(snippet["position"]).locator(".heatmap")
    text = heatmap.inner_text()
    assert text == "".join(visible(t) for t in snippet["tokens"])
    assert all(p in text for p in patterns)
    tokens = heatmap.locator(".tok")
    assert tokens.count() == len(snippet["tokens"])
    marked = [i for i in range(tokens.count()) if "outline" in (tokens.nth(i).get_attribute("style") or "")]
    peak = max(range(len(snippet["acts"])), key=lambda i: snippet["acts"][i])
    assert marked == [peak]
    assert tokens.nth(peak).get_attribute("title").endswith(f"{snippet['acts'][peak]:+.3f}")
    tokens.nth(peak).hover()
    for selector in ("script", "img", "strong", "em", "a", "code", "h1", ".katex", "math"):
        assert page.locator(f".heatmap {selector}").count() == 0, selector
    page.screenshot(path=SHOTS / f"neuron-hostile-{kind}.png")
    assert seconds < 10, f"the neuron page took {seconds:.1f} s"


def test_label_saves_and_survives_a_reload(page, app_url):
    page.goto(neuron_url(app_url, "gelu-tiny", 1, 3, "post"))
    wait_neuron_page(page)
    page.get_by_label("Label", exact=True).fill(HOSTILE_LABEL)
    page.get_by_label("Author (optional)").fill("browser")
    page.get_by_role("button", name="Save label").click()
    page.get_by_text("Label saved").wait_for(timeout=15_000)
    page.reload()
    wait_neuron_page(page)
    header = page.locator(".neuron-header")
    header.get_by_text(HOSTILE_LABEL).wait_for(timeout=15_000)
    assert header.locator("b, img, strong, .katex").count() == 0
    expect(page.get_by_label("Label", exact=True)).to_have_value(HOSTILE_LABEL, timeout=15_000)
    page.screenshot(path=SHOTS / "neuron-labeled.png", full_page=True)


def test_unknown_neuron_is_a_message(page, app_url):
    page.goto(f"{app_url}/neuron?model=gelu-tiny&layer=7&neuron=0")
    page.get_by_text("No neuron L7 N0").wait_for(timeout=30_000)
    assert page.get_by_text("Traceback").count() == 0


def test_sql_query_runs_and_writes_are_refused(page, app_url):
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
    page.get_by_text("only queries are allowed").wait_for(timeout=30_000)
    assert page.get_by_text("Traceback").count() == 0


def test_probe_and_models_pages(page, app_url):
    page.goto(f"{app_url}/probe?model=solu_ln-tiny&layer=1&neuron=5&site=pre_ln")
    page.get_by_text("Neurons that fire most on this text").wait_for(timeout=60_000)
    page.screenshot(path=SHOTS / "probe.png")
    page.goto(f"{app_url}/models")
    page.get_by_text("GELU and SoLU side by side").wait_for(timeout=30_000)
    page.wait_for_timeout(1000)  # let the charts draw
    page.screenshot(path=SHOTS / "models.png")
