"""Compare: any runs and shipped references side by side, as curves, a table and a size-vs-accuracy plot."""

from __future__ import annotations

from dataclasses import dataclass, field

import lab
import pandas as pd
import plotly.express as px
import streamlit as st

from core.config import TrainConfig, config_diff
from core.reference import reference_info, reference_names, seed_recipe_info, seed_recipe_names


@dataclass
class Comparable:
    """A shipped reference (epochs known) or a stored run (epochs read once it is chosen) the page can compare."""

    model: str
    status: str
    params: int | None
    epochs: list[dict] = field(default_factory=list)  # per-epoch dicts
    run_id: int | None = None  # None for a reference
    has_epochs: bool = False  # a run with a recorded epoch: a candidate for the default choice
    config: TrainConfig | None = None


def shipped(name: str, info: dict) -> Comparable:
    return Comparable(name, "reference", info["params"], info["epochs"], config=TrainConfig.from_dict(info["config"]))


def main() -> None:
    st.title("Compare")
    store = lab.store()
    options: dict[str, Comparable] = {}  # label -> what it compares
    progression = []  # every variant's reference: what the page shows by default
    for name in reference_names():
        progression.append(f"{name} (reference)")
        options[progression[-1]] = shipped(name, reference_info(name))
    for name in seed_recipe_names():  # the seed's own recipe next to our tuned one: what the schedule did
        options[f"{name}, seed's recipe (reference)"] = shipped(name, seed_recipe_info(name))
    search = st.text_input(
        "Find runs", key="run-search", placeholder="words from the model, label, status or sweep, or a run id: e.g. Tiny4k finished"
    )
    owner = lab.listed_owner("compare-class")  # with identity on: my runs (and the references) unless the class's
    runs = store.list_runs(limit=lab.NEWEST_RUNS, search=search, owner=owner)
    listed = {lab.run_label(r): r for r in runs}
    # Runs chosen before (another search, or Sweeps' "Open in Compare") stay chosen though this listing leaves them out.
    for k in st.session_state.get("runs", []):
        if k not in options and k not in listed and (r := lab.run_of_label(store, k)):
            listed[k] = r
    for k, r in listed.items():
        options[k] = Comparable(r.model, r.status, r.params, run_id=r.id, has_epochs=r.epoch > 0, config=r.config)
    if not options:
        st.info("Nothing to compare yet. " + lab.NO_MODEL_HINT)
        return
    # By default the whole progression and the newest run with an epoch.
    default = progression + [k for k, v in options.items() if v.has_epochs][:1]
    # the choice outlives leaving the page (a widget's own state does not)
    if "runs" not in st.session_state and "compare-chosen" in st.session_state:
        st.session_state["runs"] = [k for k in st.session_state["compare-chosen"] if k in options]
    chosen = st.multiselect("Runs", list(options), default=None if "runs" in st.session_state else default, key="runs")
    st.session_state["compare-chosen"] = chosen
    if search.strip() and not runs:
        st.caption(f"No run matches {search.strip()!r}.")
    elif len(runs) == lab.NEWEST_RUNS and (total := store.count_runs(search)) > len(runs):
        st.caption(f"Listing the newest {len(runs)} of {total:,} {'matching ' if search.strip() else ''}runs.")
    if not chosen:
        st.info("Choose one or more runs above.")
        return
    runs_chosen = [options[k] for k in chosen if options[k].run_id is not None]
    per_run = store.epochs_of([c.run_id for c in runs_chosen])  # the chosen runs' epochs only
    for c in runs_chosen:
        c.epochs = per_run[c.run_id]

    series = {k: options[k].epochs for k in chosen if options[k].epochs}
    if series:
        full = st.toggle("Full accuracy range (0-100%)", False, key="full-range",
                         help="off: the axis starts 3 points below the lowest best test accuracy, where the runs differ")
        acc, loss = st.tabs(["Accuracy", "Loss"])
        acc.plotly_chart(lab.train_test_chart(series, "acc", "Accuracy: test solid, train dashed", "%", not full),
                         key="curve-acc")
        loss.plotly_chart(lab.train_test_chart(series, "loss", "Loss: test solid, train dashed", "cross-entropy (log)", False),
                          key="curve-loss")
        st.caption("Train accuracy is measured on augmented images with dropout on, so it can sit below test "
                   "accuracy; the gap between the two lines is what Dropout and augmentation change.")
    else:
        st.info("The chosen runs have no finished epoch yet.")

    table = pd.DataFrame(
        [{"run": k, "model": options[k].model, "status": options[k].status, "params": options[k].params,
          **lab.summarise(options[k].epochs)} for k in chosen]
    )
    st.subheader("Summary")
    st.dataframe(table, hide_index=True, width="stretch")
    differ = config_diff({k: options[k].config for k in chosen if options[k].config is not None})
    if len(chosen) > 1:
        st.subheader("What differs between their settings")
        if differ:
            st.dataframe(pd.DataFrame(differ).set_index("setting").astype(str), width="stretch")
        else:
            st.caption("The chosen runs share every setting.")
    st.download_button("Download CSV", table.to_csv(index=False), "mnist-lab-compare.csv", "text/csv", key="csv")

    scored = table.dropna(subset=["best test %"])
    if not scored.empty:
        fig = px.scatter(scored, x="params", y="best test %", color="model", hover_name="run", log_x=True,
                         title="Parameters vs best test accuracy")
        fig.update_traces(marker_size=12)
        st.plotly_chart(fig, key="scatter")


main()
