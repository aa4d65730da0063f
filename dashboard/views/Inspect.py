"""Inspect: a model's layers and learned kernels, its confusion matrix and the digits behind each cell, its mistakes,
and what its conv units see of one input (feature maps, a unit's receptive field and activation)."""

from __future__ import annotations

import lab
import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.architecture import receptive_field_table
from core.data import DataError
from core.evaluation import clicked_cell, first_kernels, kernel_grid, layer_feature_maps
from core.explain import receptive_box, saliency
from core.inference import probabilities
from core.models import MODELS, build_model
from core.predict import as_picture
from core.runs import StoreError

GALLERY = 24  # digits shown per gallery (a confusion cell, the mistakes)


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


def clickable(fig: go.Figure, rows: int, cols: int, hover: str) -> go.Figure:
    """Heatmaps give plotly no selectable points (streamlit#8760): an invisible marker on every cell does."""
    ys, xs = np.mgrid[0:rows, 0:cols]
    fig.add_scatter(x=xs.ravel(), y=ys.ravel(), mode="markers", showlegend=False, hovertemplate=hover,
                    marker=dict(symbol="square", size=max(6, 300 // max(rows, cols)), opacity=0))
    fig.update_xaxes(range=[-0.5, cols - 0.5])  # the markers would pad the axes by a cell
    fig.update_yaxes(range=[rows - 0.5, -0.5], autorange=False)  # row 0 on top, as the heatmap draws it
    return fig


def on_click(chart_key: str, row_key: str, col_key: str):
    """A plotly on_select callback: the clicked cell's (row, column) into two widgets' state."""
    def choose() -> None:
        cell = clicked_cell(st.session_state[chart_key].selection.points)
        if cell is not None:
            st.session_state[row_key], st.session_state[col_key] = cell

    return choose


def slider_state(key: str, start: int, high: int) -> None:
    """A slider's value in session state (set here, by a click, or by the slider), kept inside 0..high when the
    model changes; the slider itself then takes no default (Streamlit warns when given both)."""
    value = st.session_state.get(key, start)
    if key not in st.session_state or not 0 <= value <= high:
        st.session_state[key] = min(max(int(value), 0), high)


def top_two(p: np.ndarray) -> str:
    first, second = (int(d) for d in np.argsort(-p)[:2])
    return f"{first}: {p[first]:.0%}, {second}: {p[second]:.0%}"


def probability_bars(p: np.ndarray) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(range(10)), y=p * 100, hovertemplate="digit %{x}: %{y:.1f}%<extra></extra>",
                           marker_color=["#e45756" if d == p.argmax() else "#4c78a8" for d in range(10)]))
    fig.update_layout(height=240, margin=dict(l=10, r=10, t=30, b=10), title="Probability of each digit",
                      yaxis=dict(title="%", range=[0, 100]), xaxis=dict(title="digit", dtick=1))
    return fig


def show_kernels(model) -> None:
    st.subheader("Learned 3x3 kernels")
    st.caption("One column of kernels per output channel, one row per input channel; red weights add the input "
               "under them, blue subtract it.")
    for name, w in first_kernels(model):
        grid = kernel_grid(w)
        top = float(np.abs(w).max()) or 1.0
        fig = px.imshow(grid, color_continuous_scale="RdBu_r", zmin=-top, zmax=top,
                        title=f"{name}: {w.shape[0]} output channels x {w.shape[1]} input channels")
        k = w.shape[-1]
        fig.update_xaxes(tickvals=[c * (k + 1) + (k - 1) / 2 for c in range(w.shape[0])],
                         ticktext=[str(c) for c in range(w.shape[0])], title="output channel")
        fig.update_yaxes(tickvals=[r * (k + 1) + (k - 1) / 2 for r in range(w.shape[1])],
                         ticktext=[str(r) for r in range(w.shape[1])], title="input channel")
        fig.update_layout(height=190 + 14 * grid.shape[0], margin=dict(l=10, r=10, t=40, b=10))
        st.plotly_chart(fig, key=f"kernels-{name}")


@st.fragment  # its own controls rerun it alone, not the test-set evaluation and feature maps
def show_cell(model, data, ev) -> None:
    """The picker beside the confusion matrix and the test digits behind the chosen cell."""
    if "cm-true" not in st.session_state:
        st.session_state["cm-true"], st.session_state["cm-predicted"] = ev.most_confused() or (0, 0)
    p1, p2, note = st.columns([1, 1, 4], vertical_alignment="bottom")
    true = p1.selectbox("True digit", list(range(10)), key="cm-true")
    predicted = p2.selectbox("Predicted digit", list(range(10)), key="cm-predicted")
    note.caption("Click a cell of the confusion matrix, or pick one here.")
    found = ev.cell(true, predicted)
    st.markdown(f"**{len(found)}** test digits are {true}s read as {predicted}"
                + (f"; the {GALLERY} most confident:" if len(found) > GALLERY else ":"))
    shown = found[:GALLERY].tolist()
    if not shown:
        return
    xs = data.test_x[shown]
    ps = probabilities(model, xs)
    cols = st.columns(6)
    for n, (idx, p) in enumerate(zip(shown, ps, strict=True)):
        x = xs[n : n + 1]
        cols[n % 6].image(lab.saliency_picture(as_picture(x), saliency(model, x, predicted), scale=3),
                          caption=f"#{idx}: {top_two(p)}")
    st.caption(f"Saliency of {predicted}, the predicted digit: red ink spoke for it, blue against (core/explain.py).")


@st.fragment
def show_mistakes(data, ev) -> None:
    st.subheader("Misclassified, most confident first")
    digits = [None, *range(10)]
    f1, f2, _ = st.columns([1, 1, 4])
    true = f1.selectbox("True digit", digits, format_func=lambda d: "any" if d is None else str(d), key="mistakes-true")
    predicted = f2.selectbox("Predicted digit", digits, format_func=lambda d: "any" if d is None else str(d),
                             key="mistakes-predicted")
    wrong = ev.mistakes(limit=GALLERY, true=true, predicted=predicted).tolist()
    if not wrong:
        st.write("No such mistakes on the test set.")
    cols = st.columns(8)
    for i, idx in enumerate(wrong):
        pic = as_picture(data.test_x[idx : idx + 1])
        cols[i % 8].image(enlarge(pic, 84),
                          caption=f"#{idx}: true {ev.labels[idx]} → {ev.predicted[idx]} ({ev.confidence[idx]:.0%})")


@st.fragment
def show_unit(model, x, layers: list[tuple[str, np.ndarray]]) -> None:
    """One conv unit: its channel as a clickable heatmap, its receptive field outlined on the input."""
    st.subheader("One unit and the input it sees")
    names = [name for name, _ in layers]
    if st.session_state.get("unit-layer") not in names:
        st.session_state.pop("unit-layer", None)
    st.caption("Pick a unit with the sliders or click it on its channel's map; its receptive field (the input "
               "pixels it can see, core.explain.receptive_box) is outlined on the input.")
    c1, c2, c3, c4 = st.columns(4)
    layer = c1.selectbox("Layer", names, key="unit-layer")
    maps = dict(layers)[layer]
    c, h, w = maps.shape
    # per-layer keys: each layer keeps its own unit, and a slider whose range changes is a new widget anyway
    keys = {part: f"unit-{part}-{layer}" for part in ("channel", "i", "j")}
    for part, start, high in (("channel", 0, c - 1), ("i", h // 2, h - 1), ("j", w // 2, w - 1)):
        slider_state(keys[part], start, high)
    channel = c2.slider("Channel", 0, c - 1, key=keys["channel"])
    i = c3.slider("Row i", 0, h - 1, key=keys["i"])
    j = c4.slider("Column j", 0, w - 1, key=keys["j"])
    top, left, bottom, right = receptive_box(model, layer, i, j)
    value = float(maps[channel, i, j])

    left_col, right_col = st.columns(2)
    act = px.imshow(maps[channel], color_continuous_scale="Viridis", labels=dict(x="j", y="i", color="activation"),
                    title=f"{layer}, channel {channel} ({h}x{w})")
    clickable(act, h, w, "unit (%{y}, %{x})<extra></extra>")
    act.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, line=dict(color="red", width=3))
    act.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10))
    left_col.plotly_chart(act, key="unit-map", on_select=on_click("unit-map", keys["i"], keys["j"]),
                          selection_mode="points")
    seen = px.imshow(as_picture(x), color_continuous_scale="gray", title=f"Receptive field of unit ({i}, {j}): activation {value:.3f}")
    seen.add_shape(type="rect", x0=left - 0.5, x1=right + 0.5, y0=top - 0.5, y1=bottom + 0.5,
                   line=dict(color="red", width=3), name="receptive field")
    seen.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10), coloraxis_showscale=False)
    right_col.plotly_chart(seen, key="unit-input")
    right_col.metric("Activation", f"{value:.3f}",
                     f"sees rows {top}–{bottom}, columns {left}–{right}", delta_color="off", delta_arrow="off")


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
        with st.expander("Take this model home"):
            lab.download_model(choice)
    except (StoreError, DataError) as e:
        st.error(str(e))
        return

    st.subheader("Layers")
    st.dataframe(layer_table(model), hide_index=True, width="stretch")
    show_kernels(model)

    ev = lab.evaluation_for(choice)
    st.subheader(f"Test set: {ev.accuracy:.2f}% of {len(ev.labels):,} digits")
    c1, c2 = st.columns(2)
    confusion = ev.confusion.numpy()
    cm = px.imshow(confusion, text_auto=True, color_continuous_scale="Blues", title="Confusion matrix",
                   labels=dict(x="predicted", y="true", color="digits"), x=list(range(10)), y=list(range(10)))
    clickable(cm, 10, 10, "true %{y}, predicted %{x}<extra></extra>")
    cm.update_layout(height=460, margin=dict(l=10, r=10, t=40, b=10))
    cm.update_xaxes(dtick=1, side="bottom")
    cm.update_yaxes(dtick=1)  # every digit labelled, not every other one
    c1.plotly_chart(cm, key="confusion", on_select=on_click("confusion", "cm-true", "cm-predicted"),
                    selection_mode="points")
    per_class = px.bar(x=list(range(10)), y=ev.per_class_accuracy.numpy(), title="Accuracy per digit",
                       labels=dict(x="true digit", y="%"))
    per_class.update_layout(height=460, margin=dict(l=10, r=10, t=40, b=10), yaxis_range=[max(0, ev.per_class_accuracy.min().item() - 5), 100])
    per_class.update_xaxes(dtick=1)
    c2.plotly_chart(per_class, key="per-class")

    st.subheader("The digits behind a cell")
    show_cell(model, data, ev)
    show_mistakes(data, ev)

    st.subheader("Feature maps")
    drawn = st.session_state.get("drawn")
    sources = (["the digit drawn on the Draw page"] if drawn is not None else []) + ["a test digit"]
    source = st.radio("Input", sources, horizontal=True, key="fm-source")
    if source == "a test digit":
        idx = st.columns([1, 3])[0].number_input("Test digit index (the galleries show them as #index)", 0,
                                                  len(data.test_y) - 1, 0, key="fm-index")
        x = data.test_x[int(idx) : int(idx) + 1]
        truth = f"; labelled {int(data.test_y[int(idx)])}"
    else:
        x, truth = drawn, ""
    p = probabilities(model, x)[0]
    c1, c2, c3 = st.columns([1, 1, 3])
    c1.image(enlarge(as_picture(x), 140), caption=f"input (28x28){truth}")
    c2.metric("Prediction", str(int(p.argmax())), f"{p.max() * 100:.1f}% confident", delta_color="off",
              delta_arrow="off")
    c3.plotly_chart(probability_bars(p), key="input-bars")
    layers = layer_feature_maps(model, x)
    for name, maps in layers:
        st.image(enlarge(mosaic(maps), 560), caption=f"{name.rpartition('.')[2]}: {maps.shape[0]} channels of "
                 f"{maps.shape[1]}x{maps.shape[2]}")
    show_unit(model, x, layers)


main()
