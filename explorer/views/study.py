"""The blinded study: rate randomly sampled neurons without knowing their model.

The rating view shows no model id, layer or neuron number, and activations relative to
the neuron's own maximum; the only place the models are named is the results section
at the bottom, which stays closed until the rater unblinds it.
"""
import time

import altair as alt
import pandas as pd
import streamlit as st

from explorer import data, db, render
from index.measure import study
from solu.errors import UserError


def new_study_form(path, models: list[str], existing: int) -> None:
    with st.form("new-study"):
        name = st.text_input("Study name", value=f"study-{existing + 1}")
        chosen = st.multiselect("Models (two or more)", models, default=models[:2])
        cols = st.columns(3)
        per_model = cols[0].number_input("Neurons per model", min_value=1, max_value=5000, value=50)
        snippets = cols[1].number_input("Snippets per neuron", min_value=1, max_value=100, value=20)
        seed = cols[2].number_input("Seed", min_value=0, max_value=study.INT32_MAX, value=0)
        if st.form_submit_button("Create study"):
            try:
                db.write(path, study.create_study, name, chosen, int(per_model), int(seed), int(snippets))
            except UserError as e:
                st.error(render.md_escape(str(e)))
                return
            st.session_state["study"] = name.strip()
            st.rerun()


def pick_study(path) -> str | None:
    studies = db.read(path, study.studies)
    models = list(data.query("models").model_id)
    with st.expander("Start a new study", expanded=studies.empty):
        new_study_form(path, models, len(studies))
    if studies.empty:
        st.info("No study yet: create one above, then rate its neurons here.")
        return None
    names = list(studies.study)
    current = st.session_state.get("study")
    return st.selectbox("Study", names, index=names.index(current) if current in names else len(names) - 1)


def rate(path, name: str, rater: str, item: dict, n_snippets: int, total: int) -> None:
    st.subheader(f"Neuron {int(item['item'])} of {total}")
    snippets = db.read(path, study.blinded_snippets, item, n_snippets)
    st.caption(f"Its {len(snippets)} strongest snippets, one per document. The outlined token is the "
               "maximum; colour is activation relative to this neuron's strongest (1.0).")
    st.html(render.snippets(snippets.to_dict("records"), 1.0, lambda i, r: f"#{i + 1}"))
    key = f"{name}|{rater}|{int(item['item'])}"
    shown = st.session_state.setdefault(f"shown|{key}", time.monotonic())
    with st.form(f"answer|{key}", clear_on_submit=True):
        answer = st.radio(study.QUESTION, study.ANSWERS, index=None, horizontal=True)
        label = st.text_input("Label (optional): the rule, if there is one")
        if st.form_submit_button("Submit and next", type="primary"):
            if answer is None:
                st.warning("Pick yes, no or unsure first.")
                return
            db.write(path, study.record_answer, name, rater, item, answer, label,
                     round(time.monotonic() - shown, 1))
            st.rerun()


def results(path, name: str) -> None:
    summary = db.read(path, study.summary, name)
    st.dataframe(summary, hide_index=True, column_config={
        "frac_interpretable": st.column_config.NumberColumn("interpretable", format="percent"),
        "ci_low": st.column_config.NumberColumn("95% CI low", format="percent"),
        "ci_high": st.column_config.NumberColumn("95% CI high", format="percent")})
    shown = summary.dropna(subset=["frac_interpretable"])
    if shown.empty:
        return
    base = alt.Chart(shown).encode(x=alt.X("model_id:N", title=None, axis=alt.Axis(labelAngle=0)))
    bars = base.mark_bar().encode(y=alt.Y("frac_interpretable:Q", title="fraction interpretable",
                                          scale=alt.Scale(domain=[0, 1])), color=alt.Color("act_fn:N"))
    st.altair_chart((bars + base.mark_rule().encode(y="ci_low:Q", y2="ci_high:Q")).properties(height=240),
                    width="stretch")


def page() -> None:
    path = data.require_db()
    st.title("Blinded study")
    st.caption("The SoLU paper's protocol: neurons sampled at random from two or more models, shown in "
               "random order without saying which model. For each, decide whether one rule explains "
               "80% or more of its strongest firings.")
    name = pick_study(path)
    if name is None:
        return
    rater = st.text_input("Your name (answers are stored per rater)", value=st.session_state.get("rater", ""))
    st.session_state["rater"] = rater.strip()
    if not rater.strip():
        st.info("Enter your name to start rating.")
    else:
        queue = db.read(path, study.rater_queue, name, rater.strip())
        settings = db.read(path, study.studies).set_index("study").loc[name]
        done = int(queue.answer.notna().sum())
        st.progress(done / max(len(queue), 1), text=f"{done} of {len(queue)} rated")
        item = study.first_unrated(queue)
        if item is None:
            st.success("You have rated every neuron in this study. Thank you!")
        else:
            rate(path, name, rater.strip(), item, int(settings.snippets), len(queue))
    st.divider()
    with st.expander("Results (unblinds the models)"):
        if st.toggle("Show results per model", key=f"unblind|{name}"):
            results(path, name)


page()
