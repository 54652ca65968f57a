"""The demo's SoLU base64 neuron in a real browser: its page shows that a one-layer model
has no connections, the loss effect of ablating it, and its best GELU match. Slow: it
builds the demo (or reuses SOLU_DEMO_DIR). The screenshot goes to screenshots/."""
from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest
from playwright.sync_api import expect

from helpers.browser_app import browser, chromium_path, running_app

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration,
              pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed")]

SHOTS = Path(__file__).resolve().parents[1] / "screenshots"


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    from explorer.demo import run_demo

    out = os.environ.get("SOLU_DEMO_DIR") or tmp_path_factory.mktemp("demo")
    return run_demo(Path(out))


def test_the_solu_base64_neuron_shows_its_relations(demo_db, tmp_path):
    con = duckdb.connect(str(demo_db), read_only=True)
    layer, neuron, site = con.execute("""
        SELECT layer, neuron, site FROM best_concepts WHERE model_id = 'solu-1l' AND concept = 'base64'
        ORDER BY top_share DESC, sample_share DESC LIMIT 1""").fetchone()
    match = con.execute("SELECT other_layer, other_neuron, r FROM neuron_matches WHERE model_id = 'solu-1l' "
                        "AND layer = ? AND neuron = ? AND rank = 1", [layer, neuron]).fetchone()
    ablated = con.execute("""
        SELECT count(DISTINCT a.rank) FROM ablations a JOIN examples e USING (model_id, layer, neuron, rank)
        WHERE a.model_id = 'solu-1l' AND a.layer = ? AND a.neuron = ? AND e.kind = 'top' AND e.site = ?""",
                          [layer, neuron, site]).fetchone()[0]
    con.close()
    assert match is not None and ablated > 0
    SHOTS.mkdir(exist_ok=True)
    with running_app(demo_db, tmp_path / "app.log") as url, browser() as b:
        page = b.new_page(viewport={"width": 1440, "height": 2400})
        page.goto(f"{url}/neuron?model=solu-1l&layer={layer}&neuron={neuron}&site={site}")
        page.get_by_text("Ablation effect").wait_for(timeout=60_000)
        page.get_by_text("no other MLP layer to connect to").wait_for(timeout=10_000)
        page.get_by_text("Matches in other models").wait_for(timeout=10_000)
        link = page.get_by_role("link", name=f"gelu-1l L{match[0]}/N{match[1]}")
        assert link.count() >= 1 and f"r = {match[2]:.2f}" in page.content()
        # one row per ablated top example, each with its loss change (they draw after the matches panel)
        expect(page.locator(".snippet").filter(has_text="Δloss")).to_have_count(ablated, timeout=30_000)
        page.screenshot(path=SHOTS / "demo-solu-base64-relations.png", full_page=True)
