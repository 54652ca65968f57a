"""The Study page: create a study, rate blinded neurons, unblind the results."""
from __future__ import annotations

import duckdb
import pytest

from helpers.explorer_fixtures import app_at, html_text, no_exception
from helpers.measure_db import build_measure_db


@pytest.fixture
def study_db(tmp_path, monkeypatch):
    db = build_measure_db(tmp_path / "study.duckdb")
    monkeypatch.setenv("SOLU_DB", str(db))
    return db


def answers(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT rater, model_id, answer, label FROM study_answers ORDER BY answer_id").fetchall()
    finally:
        con.close()


def test_study_page_blinded_rating(study_db):
    at = app_at("study")
    no_exception(at)
    assert any("No study yet" in i.value for i in at.info)
    at.text_input[0].input("pilot")
    at.number_input[0].set_value(3)
    at.button[0].click().run()  # create
    no_exception(at)
    assert at.selectbox[0].value == "pilot"
    rater = [t for t in at.text_input if t.label.startswith("Your name")][0]
    rater.input("ana").run()
    no_exception(at)
    body = html_text(at)
    assert body.count('class="snippet"') == 5  # the index keeps top 5 per neuron
    page_text = body + " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption) \
        + " ".join(s.value for s in at.subheader)
    assert "gelu-m" not in page_text and "solu-m" not in page_text  # blinded
    assert at.subheader[0].value == "Neuron 1 of 6"
    at.radio[0].set_value("yes")
    [t for t in at.text_input if t.label.startswith("Label")][0].input("base64")
    [b for b in at.button if b.label == "Submit and next"][0].click().run()
    no_exception(at)
    assert at.subheader[0].value == "Neuron 2 of 6"
    got = answers(study_db)
    assert len(got) == 1 and got[0][0] == "ana" and got[0][2:] == ("yes", "base64")
    at.toggle[0].set_value(True).run()
    no_exception(at)
    summary = at.dataframe[-1].value
    assert set(summary.model_id) == {"gelu-m", "solu-m"} and summary.answers.sum() == 1
