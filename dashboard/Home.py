"""The dashboard's entry point: `streamlit run dashboard/Home.py`. A router over the pages in views/.

(Not `pages/`: Streamlit treats a `pages/` folder as the old automatic multipage layout and would run a page
without this router when its URL is opened first.)
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # `core` lives one level up; `lab` sits next to this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import lab  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from core.models import variant_rows  # noqa: E402
from core.reference import best_test_by_model, reference_names  # noqa: E402

# The variants table as Home shows it (variant_rows also has the output's receptive field).
VARIANT_COLUMNS = ["variant", "params", "RF of last 3x3 conv", "idea", "seed's test %", "our best test %"]


def home() -> None:
    st.title("MNIST CNN lab")
    st.markdown(
        "Small CNNs for MNIST, each variant adding one idea to the last (BatchNorm, Dropout, Global Average "
        "Pooling, an LR schedule), under an 8k-parameter budget. **Train** a variant live, **Compare** runs, "
        "**Draw** a digit for the models to read, and **Inspect** what a model gets wrong and what its layers see."
    )
    store = lab.store()
    st.subheader("Variants")
    variants = pd.DataFrame(variant_rows(best_test_by_model(store)))[VARIANT_COLUMNS]
    st.dataframe(variants, hide_index=True, width="stretch")
    if not reference_names():
        st.caption("No reference runs shipped yet: `python -m core.reference` trains one per variant.")

    st.subheader("Training now")
    owner = lab.listed_owner("home-class")  # with identity on: my runs unless the class's are asked for
    active = store.list_runs(status="running", owner=owner) + store.list_runs(status="queued", owner=owner)
    if not active:
        st.write("Nothing is training.")
    for run in active:
        st.write(f"Run {run.id} · {run.model} · {run.status} · epoch {run.epoch}/{run.config.epochs}")
        st.progress(run.progress)

    st.subheader("Pages")
    cols = st.columns(6)
    cols[0].page_link("views/Ideas.py", label="Learn the ideas", icon=":material/lightbulb:")
    cols[1].page_link("views/Train.py", label="Train a variant", icon=":material/model_training:")
    cols[2].page_link("views/Compare.py", label="Compare runs", icon=":material/compare_arrows:")
    cols[3].page_link("views/Draw.py", label="Draw a digit", icon=":material/draw:")
    cols[4].page_link("views/Inspect.py", label="Inspect a model", icon=":material/search:")
    cols[5].page_link("views/Sweeps.py", label="Sweep recipes", icon=":material/tune:")


def main() -> None:
    st.set_page_config(page_title="MNIST CNN lab", page_icon=":material/neurology:", layout="wide")
    lab.page_style()  # progress bars jump rather than glide: cheaper for a class's browsers
    lab.identity_bar()  # who is signed in, when the lab runs for a class (core.identity)
    pages = [
        st.Page(home, title="Home", icon=":material/home:", default=True),
        st.Page("views/Ideas.py", title="Ideas", icon=":material/lightbulb:"),
        st.Page("views/Train.py", title="Train", icon=":material/model_training:"),
        st.Page("views/Compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page("views/Draw.py", title="Draw", icon=":material/draw:"),
        st.Page("views/Digits.py", title="My digits", icon=":material/collections:"),
        st.Page("views/Inspect.py", title="Inspect", icon=":material/search:"),
        st.Page("views/Sweeps.py", title="Sweeps", icon=":material/tune:"),
    ]
    st.navigation(pages).run()


main()
