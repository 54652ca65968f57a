"""Heatmap HTML and Markdown escaping: dataset text must stay text."""
from __future__ import annotations

import html
import re

from explorer import render
from explorer.nav import Address

HOSTILE = ["<script>alert(1)</script>", ' <img src=x onerror="alert(2)">', " **b**", " $x$", "\n", "\t", "\x07"]


def test_heatmap_escapes_every_token_and_shows_whitespace():
    out = render.heatmap(HOSTILE, [0.1, 2.0, -1.0, 0.0, 0.5, 0.5, 0.5], scale=2.0, max_pos=1)
    assert "<script" not in out and "<img" not in out and 'onerror="' not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "↵</span>\n" in out and "⇥</span>\t" in out and "\\x07" in out
    spans = re.findall(r'<span class="tok"[^>]*>', out)
    assert len(spans) == len(HOSTILE) and "outline" in spans[1] and "outline" not in spans[0]
    title = re.search(r'title="([^"]*)"', spans[1]).group(1)
    assert html.unescape(title) == repr(HOSTILE[1]) + "  +2.000"
    assert "rgba(255,106,0,0.850)" in spans[1] and "rgba(31,119,180,0.425)" in spans[2]


def test_md_escape_leaves_no_markup():
    text = render.md_escape("**bold** _it_ $x^2$ <b>t</b> [a](javascript:x) `c` # h\nline")
    assert re.search(r"(?<!\\)[*_$<>\[\]`#]", text) is None
    assert text.endswith("  \nline")


def test_peak_index_uses_the_window_index_or_the_largest_activation():
    assert render.peak_index({"acts": [0, 3, 1], "max_pos": 1, "start_pos": 10}) == 1
    assert render.peak_index({"acts": [4, 3, 1], "max_pos": 1, "start_pos": 10}) == 1  # ties or rounding: trust max_pos
    assert render.peak_index({"acts": [0, 3, 1], "max_pos": 99, "start_pos": 10}) == 1
    assert render.peak_index({"acts": [5, 3, 1], "max_pos": None, "start_pos": None}) == 0


def test_neuron_url_is_shareable():
    assert Address("a b&c", 1, 2, "post").url == "neuron?model=a+b%26c&layer=1&neuron=2&site=post"


def test_whitespace_only_tokens_are_marked_and_their_text_kept():
    out = render.heatmap([" the", "   ", "\n", " "], [1.0, 1.0, 1.0, 1.0], scale=2.0)
    spans = re.findall(r'<span class="tok"[^>]*>', out)
    assert [render.SPACE_MARK in sp for sp in spans] == [False, True, False, True]
    assert ">   </span>" in out and "> </span>" in out
