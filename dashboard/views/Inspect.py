"""Inspect: a model's layers, its confusion matrix and mistakes on the test set, and its feature maps."""

from __future__ import annotations

import lab
import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from core.architecture import receptive_field_table
from core.data import DataError
from core.inference import feature_maps
from core.models import MODELS, build_model
from core.predict import as_picture
from core.runs import StoreError


def layer_table(model) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"layer": r.name, "kind": r.kind, "kernel": r.kernel, "stride": r.stride,
             "output (C, H, W)": str(r.out_shape), "params": r.params, "receptive field": r.rf, "jump": r.jump}
            for r in receptive_field_table(model)
        ]
    )


def mosaic(maps: np.ndarray, per_row: int = 8) -> np.ndarray:
    """(C, H, W) activations -> one uint8 picture, channels tiled left to right, each scaled to its own range."""
    c, h, w = maps.shape
    rows = -(-c // per_row)
    out = np.full((rows * (h + 1), per_row * (w + 1)), 90, dtype=np.uint8)  # grey lines between channels
    for i, m in enumerate(maps):
        span = m.max() - m.min()
        tile = (m - m.min()) / span * 255 if span > 0 else np.zeros_like(m)
        r, col = divmod(i, per_row)
        out[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = tile
    return out


def enlarge(pic: np.ndarray, side: int = 280) -> np.ndarray:
    k = max(1, side // max(pic.shape))
    return np.kron(pic, np.ones((k, k), np.uint8))


def main() -> None:
    st.title("Inspect")
    choice = lab.pick_model("inspect-model")
    if choice is None:
        name = st.selectbox("Variant (untrained: layers only)", list(MODELS), key="inspect-variant")
        st.subheader("Layers")
        st.dataframe(layer_table(build_model(name)), hide_index=True, width="stretch")
        return
    try:
        model = lab.model_for(choice)
        data = lab.mnist()
    except (StoreError, DataError) as e:
        st.error(str(e))
        return

    st.subheader("Layers")
    st.dataframe(layer_table(model), hide_index=True, width="stretch")

    ev = lab.evaluation_for(choice)
    st.subheader(f"Test set: {ev.accuracy:.2f}% of {len(ev.labels):,} digits")
    c1, c2 = st.columns(2)
    cm = px.imshow(ev.confusion.numpy(), text_auto=True, color_continuous_scale="Blues", title="Confusion matrix",
                   labels=dict(x="predicted", y="true", color="digits"), x=list(range(10)), y=list(range(10)))
    cm.update_layout(height=460, margin=dict(l=10, r=10, t=40, b=10))
    cm.update_xaxes(dtick=1, side="bottom")
    cm.update_yaxes(dtick=1)  # every digit labelled, not every other one
    c1.plotly_chart(cm, key="confusion")
    per_class = px.bar(x=list(range(10)), y=ev.per_class_accuracy.numpy(), title="Accuracy per digit",
                       labels=dict(x="true digit", y="%"))
    per_class.update_layout(height=460, margin=dict(l=10, r=10, t=40, b=10), yaxis_range=[max(0, ev.per_class_accuracy.min().item() - 5), 100])
    per_class.update_xaxes(dtick=1)
    c2.plotly_chart(per_class, key="per-class")

    st.subheader("Misclassified, most confident first")
    wrong = ev.mistakes(limit=24).tolist()
    if not wrong:
        st.write("No mistakes on the test set.")
    cols = st.columns(8)
    for i, idx in enumerate(wrong):
        pic = as_picture(data.test_x[idx : idx + 1])
        cols[i % 8].image(enlarge(pic, 84), caption=f"true {ev.labels[idx]} → {ev.predicted[idx]} ({ev.confidence[idx]:.0%})")

    st.subheader("Feature maps")
    drawn = st.session_state.get("drawn")
    sources = (["the digit drawn on the Draw page"] if drawn is not None else []) + ["a test digit"]
    source = st.radio("Input", sources, horizontal=True, key="fm-source")
    if source == "a test digit":
        idx = st.number_input("Test digit index", 0, len(data.test_y) - 1, 0, key="fm-index")
        x = data.test_x[int(idx) : int(idx) + 1]
    else:
        x = drawn
    c1, c2 = st.columns([1, 4])
    c1.image(enlarge(as_picture(x), 140), caption="input (28x28)")
    with c2:
        for name, maps in feature_maps(model, x):
            st.image(enlarge(mosaic(maps), 560), caption=f"{name}: {maps.shape[0]} channels of {maps.shape[1]}x{maps.shape[2]}")


main()
