"""Ideas: the seed's progression one step at a time: what changed, what it cost, what it did in our runs."""

from __future__ import annotations

import lab
import pandas as pd
import streamlit as st

from core.ideas import BASELINE, accuracy_floor, fit_rows, overview_rows, step_diff, step_runs, steps


def main() -> None:
    st.title("Ideas")
    st.markdown(
        "Each step of the progression adds one idea to the last model. Pick a step: the page shows what "
        "changed in the architecture and in the training recipe, the parameters before and after, the two "
        "shipped reference runs' accuracy curves, and what the step did in our runs."
    )
    with st.expander("Every step at a glance"):
        st.dataframe(pd.DataFrame(overview_rows()), hide_index=True, width="stretch")
    labels = {f"{i}. {before} → {after}": (before, after) for i, (before, after) in enumerate(steps(), 1)}
    label = st.radio("Step", list(labels), key="step", horizontal=True)
    diff = step_diff(*labels[label])
    before, after, idea = diff["before"], diff["after"], diff["idea"]

    st.header(f"{before} → {after}: {idea.title}")
    st.info(idea.what_it_is)
    if before == "Model1":
        st.markdown(f"**Where it starts, Model1.** {BASELINE.replace(chr(10), ' ')}")
    st.markdown(f"**What it did in our runs.** {idea.what_it_did.replace(chr(10), '  ' + chr(10))}")

    params = diff["parameters"]
    cols = st.columns(3)
    cols[0].metric(f"{before} parameters", f"{params['before']:,}")
    cols[1].metric(
        f"{after} parameters",
        f"{params['after']:,}",
        delta=f"{params['after'] - params['before']:+,}",
        delta_color="off",
    )
    cols[2].metric("Conv layers added / removed", f"{len(diff['added'])} / {len(diff['removed'])}")

    st.subheader("What changed")
    left, right = st.columns(2)
    with left:
        st.markdown("**Architecture** (read from the modules)")
        if diff["architecture"]:
            st.dataframe(pd.DataFrame(diff["architecture"]).astype(str), hide_index=True, width="stretch")
        else:
            st.caption("The same architecture.")
    with right:
        for which, title in (("seed recipe", "The seed's recipe"), ("reference recipe", "The shipped runs' recipe")):
            st.markdown(f"**{title}** (training settings that differ)")
            if diff[which]:
                st.dataframe(pd.DataFrame(diff[which]).astype(str), hide_index=True, width="stretch")
            else:
                st.caption("The same settings for both.")
    with st.expander("Layer by layer (parameters include the BatchNorm after a conv)"):
        rows = diff["layers"]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=35 * (len(rows) + 1) + 3)

    st.subheader("The shipped runs")
    runs = step_runs(before, after)
    if not runs:
        st.caption("No reference runs shipped yet: `python -m core.reference` trains one per variant.")
        return
    st.caption(
        "Train accuracy is measured on augmented images with dropout on, test accuracy on the plain test set "
        "with dropout off: train above test is over-fitting, train below test means the net is held back "
        "(regularised or under-fitting). The first epochs may start below the chart."
    )
    acc = lab.curves(runs, ["train_acc", "test_acc"], "Train (dotted) and test accuracy", "accuracy (%)")
    acc.for_each_trace(lambda t: t.update(line_dash="dot") if t.name.endswith("train acc") else None)
    acc.update_yaxes(range=[accuracy_floor(runs), 100])
    st.plotly_chart(acc, key="acc")
    st.dataframe(pd.DataFrame(fit_rows(runs)), hide_index=True, width="stretch")
    left, right = st.columns(2)
    lr = lab.curves(runs, ["lr"], "Learning rate after each epoch (the next one starts with it)", "lr (log scale)")
    left.plotly_chart(lr.update_yaxes(type="log"), key="lr")
    right.plotly_chart(lab.curves(runs, ["test_loss"], "Test loss", "loss"), key="loss")


main()
