"""One neuron: label, stats, histogram, snippets as token heatmaps, logits, label editor."""
import html
import random
from urllib.parse import urlencode

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from explorer import data, nav, numbers, render
from explorer.nav import NEURON_PATH, Address
from index.measure import verdict
from index.measure.explain import Rule
from index.measure.records import held_out
from solu.errors import UserError



def navigator(sites: pd.DataFrame, addr: Address | None) -> None:
    """Model / site / layer / neuron pickers and previous / next / random buttons; for an
    address that names no neuron, the pickers start at the nearest one that exists."""
    models = list(dict.fromkeys(sites.model_id))
    current = addr or nav.nearest(st.query_params, sites)
    cols = st.columns([3, 2, 1.2, 1.4, 0.9, 0.9, 1.1], vertical_alignment="bottom")
    model_id = cols[0].selectbox("Model", models, index=models.index(current.model_id), key=f"m|{current.key}")
    model_sites = list(sites[sites.model_id == model_id].site)
    site = current.site if current.site in model_sites else nav.primary_site(sites, model_id)
    site = cols[1].selectbox("Site", model_sites, index=model_sites.index(site), key=f"s|{current.key}")
    layer = cols[2].number_input("Layer", min_value=0, value=current.layer, step=1, key=f"l|{current.key}")
    neuron = cols[3].number_input("Neuron", min_value=0, value=current.neuron, step=1, key=f"n|{current.key}")
    target = Address(model_id, int(layer), int(neuron), site)
    if target != current:
        nav.go(target)
    if cols[4].button("Prev", icon=":material/chevron_left:", width="stretch", disabled=addr is None):
        step_to(current, -1)
    if cols[5].button("Next", icon=":material/chevron_right:", icon_position="right", width="stretch",
                      disabled=addr is None):
        step_to(current, +1)
    if cols[6].button("Random", icon=":material/casino:", width="stretch"):
        row = data.query("random_neuron", current.model_id, current.site, random.randrange(1 << 30))
        nav.go(Address(current.model_id, int(row.layer[0]), int(row.neuron[0]), current.site))


def step_to(addr: Address, step: int) -> None:
    row = data.query("neighbour", addr.model_id, addr.site, addr.layer, addr.neuron, step)
    nav.go(Address(addr.model_id, int(row.layer[0]), int(row.neuron[0]), addr.site))


def histogram_chart(stats: dict) -> alt.Chart | None:
    counts = np.asarray(stats["hist_counts"] if stats["hist_counts"] is not None else [], dtype=float)
    if counts.size == 0 or not np.isfinite([stats["hist_lo"], stats["hist_hi"]]).all():
        return None
    edges = np.linspace(stats["hist_lo"], stats["hist_hi"], counts.size + 1)
    df = pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "tokens": counts})
    df = df[df["tokens"] > 0]
    return alt.Chart(df).mark_bar(color="#ff6a00").encode(
        x=alt.X("lo:Q", title="activation", bin="binned"), x2="hi:Q",
        y=alt.Y("tokens:Q", scale=alt.Scale(type="log"), title="tokens (log scale)"), y2=alt.datum(1),
        tooltip=[alt.Tooltip("lo:Q", format=".3f"), alt.Tooltip("hi:Q", format=".3f"), "tokens:Q"],
    ).properties(height=170)


def show_stats(stats: dict) -> None:
    a, b = st.columns(2)
    a.metric("Max activation", f"{stats['max_act']:.4g}")
    b.metric("Density", f"{stats['frac_active']:.2%}", help="fraction of tokens where the neuron is active")
    a.metric("Mean", f"{stats['mean_act']:.3g}")
    b.metric("Std", f"{stats['std_act']:.3g}" if pd.notna(stats.get("std_act")) else "-")
    tokens = list(stats["max_tokens"]) if stats["max_tokens"] is not None else []
    counts = list(stats["max_token_counts"]) if stats["max_token_counts"] is not None else [None] * len(tokens)
    if tokens:
        chips = " ".join(f"<code>{html.escape(repr(t))}</code>{f'×{c}' if c else ''}"
                         for t, c in zip(tokens, counts))
        st.html(f'<div style="font-size:0.8rem">Tokens it peaks on: {chips}</div>')
    chart = histogram_chart(stats)
    if chart is not None:
        st.altair_chart(chart, width="stretch")


def show_logits(logits: pd.DataFrame) -> None:
    if logits.empty:
        st.caption("No logit effects stored for this neuron.")
        return
    view = logits.assign(token=logits.token.map(repr))[["positive", "token", "weight"]]
    up, down = st.columns(2)
    for col, positive, title in ((up, True, "Boosts"), (down, False, "Suppresses")):
        col.caption(title)
        col.dataframe(view[view.positive == positive][["token", "weight"]], hide_index=True,
                      column_config={"weight": st.column_config.NumberColumn(format="%.3f")})


def label_editor(addr: Address) -> None:
    if flash := st.session_state.pop("flash", None):
        st.toast(flash, icon=":material/check:")
    current = data.fresh("current_labels", addr.model_id, addr.layer, addr.neuron)
    human = current[current.source == "human"]
    auto = current[(current.source == "auto") & (current.status.fillna("") != "rejected")]
    human_label = str(human.label.iloc[0] or "") if not human.empty else ""
    if not auto.empty and auto.label.iloc[0] != human_label:
        suggestion(addr, auto.iloc[0])
    with st.form(f"label|{addr.key}", border=True):
        label = st.text_input("Label", value=human_label, placeholder="what makes this neuron fire?")
        note = st.text_area("Note", value=str(human.note.iloc[0] or "") if not human.empty else "", height=80)
        author = st.text_input("Author (optional)", value=data.author())
        if st.form_submit_button("Save label", type="primary"):
            st.session_state["author"] = author
            save_figure(addr, "Label saved", label.strip(), note.strip(), author=author.strip() or None)
    history = data.fresh("label_history", addr.model_id, addr.layer, addr.neuron)
    latest = history[history.source == "human"].head(1)
    if not latest.empty:
        who = latest.author.iloc[0] or "someone"
        st.caption(f"Saved by {render.md_escape(who)} at {pd.Timestamp(latest.created_at.iloc[0]):%Y-%m-%d %H:%M:%S}")
    if not history.empty:
        with st.expander(f"History ({len(history)} change{'s' * (len(history) != 1)})"):
            st.dataframe(numbers.blank_missing(history, ["label", "note", "author", "score", "status"]),
                         hide_index=True)


def save_figure(addr: Address, done: str, label: str, note: str, **kwargs) -> None:
    """Save a label row and rerun the page; a refused write (a read-only database, a busy
    one, bad text) shows its one-line message instead."""
    try:
        data.save_label(addr.model_id, addr.layer, addr.neuron, label, note, **kwargs)
    except UserError as e:
        st.error(render.md_escape(str(e)))
        return
    st.session_state["flash"] = done
    st.rerun()


def suggestion(addr: Address, auto: pd.Series) -> None:
    score = f" (score {auto.score:.2f})" if pd.notna(auto.score) else ""
    st.info(f"Suggested label: {render.md_escape(auto.label)}{score}")
    a, r = st.columns(2)
    if a.button("Accept", key=f"accept|{addr.key}", width="stretch"):
        save_figure(addr, "Suggestion accepted", auto.label, "accepted automatic label", author=data.author() or None)
    if r.button("Reject", key=f"reject|{addr.key}", width="stretch"):
        save_figure(addr, "Suggestion rejected", auto.label, auto.note or "", source="auto", author=data.author() or None,
              score=auto.score, status="rejected")


def show_examples(stats: dict, examples: pd.DataFrame, run: dict) -> None:
    scale = max(float(stats["max_act"]), float(examples.max_act.max()) if not examples.empty else 0.0, 1e-6)
    top = examples[examples.kind == "top"].sort_values("rank")
    st.subheader(f"Top {len(top)} activations")
    st.caption("One snippet per document, strongest first. The outlined token is the maximum; "
               "hover a token for its activation. ↵ marks a newline, ⇥ a tab.")
    if top.empty:
        st.caption("No top examples stored.")
    else:
        st.html(render.snippets(top.to_dict("records"), scale, lambda i, r: f"#{i + 1}  {r['max_act']:.3g}"))
    bands = examples[examples.kind == "interval"]
    if not bands.empty:
        show_bands(bands, float(stats["max_act"]), scale, run)
    rand = examples[examples.kind == "random"].sort_values("rank")
    if not rand.empty:
        st.subheader("Random samples")
        st.caption("Documents drawn at random, whatever the neuron did on them.")
        st.html(render.snippets(rand.to_dict("records"), scale, lambda i, r: f"max {r['max_act']:.3g}"))


def disagreements(tokens, acts, holds, fit_mean: float) -> list[str]:
    """Per token: 'miss' where the neuron fires (at least half the rule's fit mean) and the
    rule does not hold, 'extra' where the rule holds and it fires at less than half."""
    half = 0.5 * fit_mean
    return ["extra" if h and a < half else "miss" if not h and a >= half else ""
            for a, h in zip((float(x) for x in acts), holds)]


def show_explanation(expl: pd.DataFrame, examples: pd.DataFrame, scale: float) -> None:
    st.subheader("Explanation, scored on held-out records")
    if expl.empty or pd.isna(expl.explanation.iloc[0]):
        st.caption("No explanation yet: run `solu autolabel --db FILE`.")
        return
    e = expl.iloc[0]
    says = "interpretable" if verdict.interpretable(e.top_share, e.score) else "not interpretable"
    st.markdown(f"**{render.md_escape(e.explanation)}** ({e.kind.replace('_', ' ')}) · held-out score "
                f"**{e.score:.2f}** [{e.score_low:.2f}, {e.score_high:.2f}] · paper's rule: top share "
                f"{e.top_share:.2f} · sample share {e.sample_share:.2f} · fit score {e.fit_score:.2f} · **{says}** "
                f"(top share >= {verdict.TOP_SHARE:g} and held-out score >= {verdict.SCORE:g})")
    rule = Rule(e.kind, tuple(e.args))
    held = examples[held_out(examples.doc_id.to_numpy())] if not examples.empty else examples
    rows = []
    for r in held.to_dict("records"):
        tokens = list(r["tokens"])
        r["marks"] = disagreements(tokens, r["acts"], rule.mask(tokens), float(e.fit_mean))
        rows.append(r)
    st.caption(f"The rule predicts {e.fit_mean:.3g} where it holds and 0 elsewhere (its mean on the fit records). "
               "Below, the held-out windows (the score also reads the held-out half of the activation sample): "
               "a solid blue underline marks a token that fires without the rule, a dotted orange one a token "
               "where the rule holds and the neuron stays below half the prediction.")
    if rows:
        with st.expander(f"Held-out windows ({len(rows)}), marked where prediction and activation disagree"):
            st.html(render.snippets(rows, scale, lambda i, r: f"{r['kind']} {r['max_act']:.3g}"))


def neuron_link(model_id: str, layer: int, neuron: int) -> str:
    """A markdown link to a neuron's page at its primary site (the page's default)."""
    query = urlencode({"model": model_id, "layer": layer, "neuron": neuron})
    return f"[{render.md_escape(f'{model_id} L{layer}/N{neuron}')}]({NEURON_PATH}?{query})"


def show_connections(addr: Address, n_layers: int) -> None:
    st.subheader("Connections")
    if n_layers < 2:
        st.caption("A one-layer model has no other MLP layer to connect to: no connections.")
        return
    rows = data.query("connections", addr.model_id, addr.layer, addr.neuron)
    if rows.empty:
        st.caption("No connections stored (index with `--connection-k` above 0).")
        return
    st.caption("Virtual weights: this neuron's output direction, through the reading block's LayerNorm "
               "weight, into the other neuron's input (downstream), or the other way round (upstream).")
    for direction in ("downstream", "upstream"):
        mine = rows[rows.direction == direction]
        if mine.empty:
            continue
        lines = [f"- {neuron_link(addr.model_id, r.other_layer, r.other_neuron)} {r.weight:+.3f}"
                 for r in mine.sort_values("weight", key=abs, ascending=False).head(6).itertuples()]
        st.markdown(f"**{direction}**\n" + "\n".join(lines))


def show_matches(addr: Address) -> None:
    rows = data.query("matches", addr.model_id, addr.layer, addr.neuron)
    if rows.empty:
        return
    st.subheader("Matches in other models")
    lines = [f"- {neuron_link(r.other_model, r.other_layer, r.other_neuron)}, r = {r.r:.2f}"
             for r in rows.itertuples()]
    st.markdown("\n".join(lines))
    st.caption("Correlation of activations over the shared activation sample's tokens (`solu match`).")


def show_ln_agreement(addr: Address) -> None:
    rows = data.query("ln_agreement", addr.model_id, addr.layer, addr.neuron)
    if rows.empty or pd.isna(rows.overlap.iloc[0]):
        return
    r = rows.iloc[0]
    corr = f", rank correlation {r.rank_corr:.2f}" if pd.notna(r.rank_corr) else ""
    st.subheader("LayerNorm caveat")
    st.caption(f"{r.overlap * r.top_k:.0f} of the {int(r.top_k)} top examples before SoLU's LayerNorm (pre_ln) "
               "are also "
               f"top examples after it (post_ln){corr}. Low agreement: small activations carry other features "
               "through the LayerNorm.")


def show_ablation(addr: Address, examples: pd.DataFrame, scale: float, primary: bool) -> None:
    effects = data.query("ablation", addr.model_id, addr.layer, addr.neuron)
    if not primary and not effects.empty:  # measured on the primary site's top examples, not this site's
        st.caption("The ablation effect is measured on the top examples of this neuron's primary site: open "
                   "its page without a site to see it.")
        return
    if effects.empty:
        st.caption("No ablation effect stored: index with `--ablation on` to measure it.")
        return
    st.subheader("Ablation effect")
    mode = st.segmented_control("Colour the top examples by", ["activation", "loss effect (zeroed)",
                                                               "loss effect (mean)"],
                                default="loss effect (zeroed)", key=f"ablation|{addr.key}")
    top = examples[examples.kind == "top"].set_index("rank")
    rows = []
    for e in effects.itertuples():
        if e.rank not in top.index:
            continue
        ex = top.loc[e.rank].to_dict()
        first = int(e.first_pos)
        tokens = list(ex["tokens"])[first:first + len(e.delta_zero)]
        values = list(ex["acts"])[first:] if mode == "activation" else list(
            e.delta_mean if mode == "loss effect (mean)" else e.delta_zero)
        rows.append({"tokens": tokens, "acts": values, "max_pos": int(ex["max_pos"]) - first,
                     "max_act": ex["max_act"], "loss_change": float(np.nansum(e.delta_zero))})
    effect_scale = max((abs(float(x)) for r in rows for x in r["acts"] if x == x), default=1e-6)
    st.caption("Next-token loss change on each token when the neuron is ablated (orange: harder to predict, "
               "blue: easier; the "
               "window after BOS is the context). Total per example beside it.")
    st.html(render.snippets(rows, scale if mode == "activation" else effect_scale,
                            lambda i, r: f"#{i + 1}  Δloss {r['loss_change']:+.3f}"))


def show_bands(bands: pd.DataFrame, max_act: float, scale: float, run: dict) -> None:
    n = int(run["bands"]) if pd.notna(run.get("bands")) else int(bands.band.max()) + 1
    st.subheader("Across the activation range")
    st.caption(f"Random documents from each of {n} equal-width activation intervals (not quantiles), "
               f"highest band first.")
    blocks = []
    for band in sorted(bands.band.dropna().unique(), reverse=True):
        rows = bands[bands.band == band].sort_values("rank").to_dict("records")
        span = f" · {band / n * max_act:.3g} to {(band + 1) / n * max_act:.3g}" if max_act > 0 else ""
        blocks.append(f'<div style="font-size:0.75rem;opacity:0.7;margin-top:0.5rem">band {int(band) + 1} of {n}'
                      f"{html.escape(span)}</div>")
        blocks.append(render.snippets(rows, scale, lambda i, r: f"max {r['max_act']:.3g}"))
    st.html("".join(blocks))


def page() -> None:
    data.require_db()
    sites = data.query("sites")
    addr, problem = nav.parse(st.query_params, sites)
    navigator(sites, addr)
    if problem:
        st.warning(f"{render.md_escape(problem)} The pickers above start at the nearest neuron there is.")
        st.page_link("views/neurons.py", label="Browse all neurons", icon=":material/table_rows:")
        return
    stats_df = data.query("neuron", addr.model_id, addr.layer, addr.neuron, addr.site)
    if stats_df.empty:
        st.warning(f"Neuron {render.md_escape(addr.title)} is not in this index.")
        return
    stats = stats_df.iloc[0].to_dict()
    labels = data.fresh("current_labels", addr.model_id, addr.layer, addr.neuron)
    human = labels[labels.source == "human"]
    label = str(human.label.iloc[0]) if not human.empty and human.label.iloc[0] else None
    models = data.query("models").set_index("model_id")
    act_fn = models.act_fn.get(addr.model_id, "?")
    run = models.loc[addr.model_id].to_dict() if addr.model_id in models.index else {}
    st.html(render.header(addr.title, label, f"{act_fn} model · layer {addr.layer} · neuron {addr.neuron} · "
                                             f"site {addr.site}"))
    st.page_link("views/probe.py", label="Probe this neuron with your own text", icon=":material/keyboard:",
                 query_params=addr.params())
    left, right = st.columns([2.3, 1], gap="large")
    with right:
        label_editor(addr)
        st.subheader("Stats")
        show_stats(stats)
        st.subheader("Logit effects")
        show_logits(data.query("logits", addr.model_id, addr.layer, addr.neuron))
        show_connections(addr, int(models.n_layers.get(addr.model_id, 1)))
        show_matches(addr)
        show_ln_agreement(addr)
    with left:
        examples = data.query("examples", addr.model_id, addr.layer, addr.neuron, addr.site)
        scale = max(float(stats["max_act"]), float(examples.max_act.max()) if not examples.empty else 0.0, 1e-6)
        show_explanation(data.query("explanation", addr.model_id, addr.layer, addr.neuron, addr.site), examples,
                         scale)
        show_examples(stats, examples, run)
        show_ablation(addr, examples, scale, addr.site == nav.primary_site(sites, addr.model_id))


page()
