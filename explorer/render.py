"""HTML and Markdown for untrusted text: token heatmaps and escaped labels.

Tokens arrive as the text they stand for (solu.tokenizer.token_strings decodes
byte-level and sentencepiece pieces alike); here newlines and tabs get a faint mark
and a token of spaces only a dotted underline, so no whitespace token is invisible.

Everything that came from a dataset or a user (tokens, labels, notes) passes through
html.escape before it reaches st.html, or through md_escape before st.markdown, so
markup in the data is shown as the characters it is made of.
"""
from __future__ import annotations

import html
import math
import re

POS_RGB, NEG_RGB = (255, 106, 0), (31, 119, 180)
MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$&:])")
VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}

SPACE_MARK = "text-decoration:underline dotted rgba(128,128,128,0.8);"  # a whitespace-only token stays visible
TOKENS_CSS = ("font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.82rem; "
              "line-height: 1.55; white-space: pre-wrap; word-break: break-word")


def md_escape(text: str) -> str:
    """Text safe for st.markdown: Markdown, HTML and LaTeX ($) characters backslash-escaped."""
    text = "".join(ch if ch.isprintable() or ch in "\n\t" else f"\\x{ord(ch):02x}" for ch in str(text))
    return MARKDOWN_SPECIALS.sub(r"\\\1", text).replace("\n", "  \n")


def _visible(token: str) -> str:
    """The token as escaped HTML, whitespace kept as written and newlines/tabs marked."""
    out = []
    for ch in token:
        if ch in VISIBLE:
            mark = f'<span style="opacity:0.45">{VISIBLE[ch]}</span>'
            out.append(mark + ("\n" if ch == "\n" else "\t" if ch == "\t" else ""))
        elif not ch.isprintable() and ch != " ":
            out.append(f'<span style="opacity:0.45">\\x{ord(ch):02x}</span>')
        else:
            out.append(html.escape(ch, quote=True))
    return "".join(out)


def colour(act: float, scale: float) -> str:
    """A background colour: orange for positive activations, blue for negative ones."""
    if not math.isfinite(act) or scale <= 0:
        return "transparent"
    strength = max(-1.0, min(1.0, act / scale))
    r, g, b = POS_RGB if strength >= 0 else NEG_RGB
    return f"rgba({r},{g},{b},{abs(strength) * 0.85:.3f})"


def token_title(token: str, act: float) -> str:
    return html.escape(f"{token!r}  {act:+.3f}", quote=True)


MARKS = {"miss": "border-bottom:3px solid #1f77b4;", "extra": "border-bottom:3px dotted #ff7f0e;"}


def heatmap(tokens, acts, scale: float, max_pos: int | None = None, marks=None) -> str:
    """One snippet as a row of coloured tokens; hover shows each token and its activation.
    marks[i] ('miss', 'extra' or '') underlines a token where a prediction disagrees."""
    spans = []
    for i, (tok, act) in enumerate(zip(tokens, acts)):
        act = float(act) if act is not None else float("nan")
        mark = "outline:2px solid #c0392b;outline-offset:-1px;font-weight:600;" if i == max_pos else ""
        mark += MARKS.get(marks[i], "") if marks is not None else ""
        if str(tok) and str(tok).strip(" ") == "":
            mark += SPACE_MARK
        spans.append(f'<span class="tok" data-act="{act:.4f}" title="{token_title(str(tok), act)}" '
                     f'style="background:{colour(act, scale)};{mark}border-radius:2px">'
                     f"{_visible(str(tok))}</span>")
    return f'<div class="heatmap" style="{TOKENS_CSS}">{"".join(spans)}</div>'


def snippet_row(caption: str, tokens, acts, scale: float, max_pos: int | None, marks=None) -> str:
    return ('<div class="snippet" style="display:flex;gap:0.8rem;padding:0.35rem 0;'
            'border-bottom:1px solid rgba(128,128,128,0.2)">'
            f'<div style="min-width:7.5rem;font-size:0.75rem;opacity:0.7;font-family:monospace">'
            f"{html.escape(caption)}</div>"
            f'<div style="flex:1">{heatmap(tokens, acts, scale, max_pos, marks)}</div></div>')


def snippets(rows, scale: float, caption) -> str:
    """Several snippets (dicts with tokens, acts, max_pos, start_pos) in one block;
    caption(i, row) labels the i-th (from 0); a row's optional "marks" underline tokens."""
    body = "".join(snippet_row(caption(i, r), list(r["tokens"]), list(r["acts"]), scale, peak_index(r),
                               r.get("marks"))
                   for i, r in enumerate(rows))
    return f'<div class="snippets">{body}</div>'


def peak_index(row) -> int | None:
    """Where in a snippet's window its max is: max_pos is the 0-based index of the max
    within the window (the indexer's convention); without one, the largest activation."""
    acts = [float(a) if a is not None else float("-inf") for a in row["acts"]]
    if not acts:
        return None
    max_pos = _int(row.get("max_pos"))
    if max_pos is not None and 0 <= max_pos < len(acts):
        return max_pos
    return max(range(len(acts)), key=acts.__getitem__)


def _int(value) -> int | None:
    try:
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)
    except (TypeError, ValueError):
        return None


def header(title: str, label: str | None, sub: str = "") -> str:
    """The neuron page's title block: address, label (or a muted 'no label yet')."""
    label_html = (f'<span style="font-size:1.25rem">{html.escape(label)}</span>' if label
                  else '<span style="font-size:1.05rem;opacity:0.5">no label yet</span>')
    return (f'<div class="neuron-header" style="margin-bottom:0.3rem">'
            f'<div style="font-size:1.6rem;font-weight:700;font-family:monospace">{html.escape(title)}</div>'
            f"<div>{label_html}</div>"
            f'<div style="font-size:0.8rem;opacity:0.65">{html.escape(sub)}</div></div>')

