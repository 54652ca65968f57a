"""The explorer's entry point: it only routes. Run it with `solu app --db FILE`."""
from pathlib import Path

import streamlit as st

from explorer.nav import NEURON_PAGE, NEURON_PATH

HERE = Path(__file__).parent

# a file of our own: a ":material/..." page icon makes the browser fetch the favicon from a font host
st.set_page_config(page_title="SoLU Neuron Explorer", page_icon=str(HERE / "favicon.svg"), layout="wide")

pages = [
    # Streamlit serves the default page at / only; the hidden twin answers at /neurons too
    st.Page("views/neurons.py", title="Neurons", icon=":material/table_rows:", url_path="home", default=True),
    st.Page("views/neurons.py", title="Neurons", icon=":material/table_rows:", url_path="neurons",
            visibility="hidden"),
    st.Page(NEURON_PAGE, title="Neuron", icon=":material/neurology:", url_path=NEURON_PATH),
    st.Page("views/probe.py", title="Text probe", icon=":material/keyboard:", url_path="probe"),
    st.Page("views/sql.py", title="SQL", icon=":material/database:", url_path="sql"),
    st.Page("views/models.py", title="Models", icon=":material/monitoring:", url_path="models"),
]
if (HERE / "views" / "study.py").exists():
    pages.append(st.Page("views/study.py", title="Study", icon=":material/science:", url_path="study"))

st.navigation(pages, position="top").run()
