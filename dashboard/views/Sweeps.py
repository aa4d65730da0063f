"""Sweeps: search recipe fields for a variant with Ray Tune + ASHA, and watch the trials fill in live from the store."""

from __future__ import annotations

import math
import os

import lab
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.config import SCHEDULERS, ConfigError
from core.identity import NotAllowed, check_may_sweep, settings
from core.models import MODELS
from core.ray_exec import RayError
from core.runs import Run, StoreError
from core.sweep import SEARCHABLE, SweepSpec, launch_sweep, new_sweep_id, search_space, sweep_log


def launch_form() -> None:
    st.subheader("New sweep")
    user = lab.current_user()  # from the request; None: identity off
    try:
        check_may_sweep(user, settings())
    except NotAllowed as e:
        st.info(f"{e}.")  # who may launch sweeps is a setting (MNIST_LAB_SWEEPS); everyone may watch them
        return
    model = st.selectbox("Variant", list(MODELS), index=list(MODELS).index("Model3"), key="sw-model")
    c1, c2, c3 = st.columns(3)
    recipe = c1.radio("Base recipe", ["reference", "seed"], horizontal=True, key="sw-recipe")
    search = c2.radio("Search", ["grid", "random"], horizontal=True, key="sw-search",
                      help="grid: every combination; random: draws from the values below")
    samples = c3.number_input("Random trials", 1, 200, 8, key="sw-samples", disabled=search == "grid")
    lr = c1.text_input("Learning rates", "0.01, 0.05", key="sw-lr")
    batch = c2.text_input("Batch sizes (empty = the recipe's)", "", key="sw-bs")
    dropout = c3.text_input("Dropout (empty = the model's own)", "", key="sw-dropout")
    scheds = c1.multiselect("LR schedules (none chosen = the recipe's)", SCHEDULERS, key="sw-sched")
    augment = c2.multiselect("Augment (none chosen = the recipe's)", [True, False], key="sw-aug")
    seeds = c3.text_input("Seeds (empty = the recipe's)", "", key="sw-seed")
    epochs = c1.number_input("Epochs per trial (ASHA's max)", 1, 50, 6, key="sw-epochs")
    train_limit = c2.number_input("Training images (0 = all)", 0, 60_000, 5000, step=1000, key="sw-tl")
    test_limit = c3.number_input("Test images (0 = all)", 0, 10_000, 2000, step=1000, key="sw-vl")
    if not st.button("Launch sweep", type="primary", key="sw-launch"):
        return
    try:
        space = search_space({"lr": lr, "batch_size": batch, "dropout": dropout, "scheduler": scheds,
                              "augment": augment, "seed": seeds})
        spec = SweepSpec(model=model, recipe=recipe, search=search, samples=int(samples), space=space,
                         base={"epochs": int(epochs), "train_limit": int(train_limit), "test_limit": int(test_limit)})
        lab.mnist()  # refuse before launching a sweep that could not train
        sweep_id = launch_sweep(spec, lab.store().url, os.environ.get("MNIST_ROOT"), new_sweep_id(), user=user)
    except (ConfigError, StoreError, RayError, NotAllowed) as e:
        st.error(str(e))
        return
    st.query_params["sweep"] = sweep_id  # a reload, or another server behind the balancer, shows the same sweep
    st.session_state["sw-pick"] = sweep_id
    st.rerun()


def trial_table(trials: list[Run]) -> pd.DataFrame:
    rows = []
    for t in trials:
        c = t.config
        rows.append({"run": t.id, "status": t.status, "epoch": f"{t.epoch}/{c.epochs}",
                     "best test %": t.best_test_acc, **{k: getattr(c, k) for k in SEARCHABLE}})
    return pd.DataFrame(rows)


def parallel_coordinates(table: pd.DataFrame) -> go.Figure:
    """One line per trial across the recipe fields the sweep varied, coloured by its best test accuracy."""
    done = table.dropna(subset=["best test %"])
    varied = [col for col in SEARCHABLE if table[col].nunique(dropna=False) > 1] or ["lr"]  # fixed ones say nothing
    dims = []
    for col in varied:
        values = done[col]
        if col == "scheduler":
            dims.append(dict(label=col, values=[SCHEDULERS.index(v) for v in values],
                             tickvals=list(range(len(SCHEDULERS))), ticktext=list(SCHEDULERS)))
        elif col == "augment":
            dims.append(dict(label=col, values=values.astype(int), tickvals=[0, 1], ticktext=["off", "on"]))
        elif col == "lr":
            dims.append(dict(label="lr (log10)", values=[math.log10(v) for v in values]))
        else:
            dims.append(dict(label=col, values=values.fillna(-1)))  # dropout -1: the model's own
    dims.append(dict(label="best test %", values=done["best test %"]))
    fig = go.Figure(go.Parcoords(line=dict(color=done["best test %"], colorscale="Viridis", showscale=True),
                                 dimensions=dims))
    fig.update_layout(height=360, margin=dict(l=60, r=40, t=90, b=20), title="Recipe vs best test accuracy")
    return fig


def open_best(best: Run) -> None:
    """Buttons that show the best trial on Compare or Draw (their pickers, preset through session state)."""
    c1, c2 = st.columns(2)
    if c1.button(f"Open run {best.id} in Compare", key="sw-compare"):
        st.session_state["runs"] = [lab.run_label(best)]
        st.switch_page("views/Compare.py")
    if c2.button(f"Open run {best.id} in Draw", key="sw-draw", disabled=best.status not in ("finished", "stopped")):
        choice = next((c for c in lab.trained_models() if c.run_id == best.id), None)
        if choice is None:
            st.warning(f"Run {best.id} has no saved checkpoint yet.")
            return
        st.session_state["draw-model"] = choice
        st.switch_page("views/Draw.py")


def live(sweep_id: str) -> None:
    """The sweep's trials, re-read from the store; nothing here trains."""
    trials = lab.store().list_runs(sweep=sweep_id)
    active = any(t.active for t in trials)
    owner = next((t.owner for t in trials if t.owner), None)
    st.subheader(f"{sweep_id}: {len(trials)} trial(s)" + (f" · {owner}'s" if owner else "") + (" · running" if active else ""))
    if not trials:
        st.info(f"Waiting for the first trial to start (Ray starts in a few seconds). The sweep's output: {sweep_log(sweep_id)}")
        return
    table = trial_table(trials)
    st.dataframe(table, hide_index=True, width="stretch", key="sw-table")
    if table["best test %"].notna().any():
        st.plotly_chart(parallel_coordinates(table), key="sw-parcoords")
        best = max((t for t in trials if t.best_test_acc is not None), key=lambda t: t.best_test_acc)
        st.caption(f"Best so far: run {best.id}, {best.best_test_acc:.2f}% ({best.status}). "
                   "ASHA stops weak trials early: they show as 'stopped'.")
        open_best(best)
    was_active = st.session_state.get(f"sw-active-{sweep_id}")
    st.session_state[f"sw-active-{sweep_id}"] = active
    if was_active and not active:
        st.rerun(scope="app")  # the sweep ended: stop polling


def main() -> None:
    st.title("Sweeps")
    st.caption("A grid or random search run by Ray Tune with ASHA early stopping; every trial is an ordinary run.")
    launch_form()
    sweeps = lab.store().sweeps()
    wanted = st.query_params.get("sweep")
    if wanted and wanted not in sweeps:
        sweeps.insert(0, wanted)  # just launched: no trial in the store yet
    if not sweeps:
        st.info("No sweep yet: choose a search space above and press Launch sweep.")
        return
    if st.session_state.get("sw-pick") not in sweeps:
        st.session_state["sw-pick"] = wanted or sweeps[0]
    sweep_id = st.selectbox("Sweep", sweeps, key="sw-pick")
    st.query_params["sweep"] = sweep_id
    trials = lab.store().list_runs(sweep=sweep_id)
    polling = not trials or any(t.active for t in trials)
    st.fragment(live, run_every=2.0 if polling else None)(sweep_id)


main()
