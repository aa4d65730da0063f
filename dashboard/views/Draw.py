"""Draw: a digit on a canvas (or an uploaded picture), read by the chosen model and by every variant."""

from __future__ import annotations

import lab
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.data import DataError
from core.digits import save_drawing
from core.explain import saliency
from core.identity import owner_of
from core.inference import probabilities
from core.predict import EmptyImageError, as_picture, decode_picture, read_picture
from core.runs import StoreError

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_UPLOAD_SIDE = 4000  # pixels; a bigger picture is refused rather than decoded


def clear_canvas() -> None:
    # A new key gives a fresh, empty canvas component.
    st.session_state.canvas_n = st.session_state.get("canvas_n", 0) + 1
    st.session_state.pop("drawn", None)


def read_upload(upload) -> np.ndarray | None:
    """The uploaded file as a uint8 array, or None (with a message) when it is not a usable picture."""
    if upload.size > MAX_UPLOAD_BYTES:
        st.error(f"{upload.name} is {upload.size / 1e6:.1f} MB; upload a picture under {MAX_UPLOAD_BYTES // 2**20} MB.")
        return None
    try:
        return decode_picture(upload.getvalue(), max_side=MAX_UPLOAD_SIDE)
    except ValueError as e:
        st.error(f"{upload.name}: {e}.")
        return None


def label_buttons(image: np.ndarray, choice: lab.TrainedModel, read_as: int) -> None:
    """'This is a [0-9]': the picture joins the user's labelled set (My digits), with what the model read."""

    def save() -> None:
        d = st.session_state.get("label-digit")
        st.session_state["label-digit"] = None  # a fresh row of digits for the next picture
        if d is None:
            return
        try:
            saved = save_drawing(lab.store(), image, d, read_by=choice.label, read_as=read_as,
                                 owner=owner_of(lab.current_user()))
            st.session_state["label-saved"] = f"Saved as a {d} to My digits (picture #{saved})."
        except (DataError, StoreError) as e:
            st.session_state["label-error"] = str(e)

    st.pills("Right or wrong? **This is a ...** (saves the picture to **My digits**, to fine-tune a model on)",
             list(range(10)), key="label-digit", on_change=save)
    if "label-saved" in st.session_state:
        st.success(st.session_state.pop("label-saved"))
    if "label-error" in st.session_state:
        st.error(st.session_state.pop("label-error"))


def probability_bars(p: np.ndarray) -> go.Figure:
    digits = [str(d) for d in range(10)]
    fig = go.Figure(go.Bar(x=digits, y=p * 100, marker_color=["#e45756" if d == p.argmax() else "#4c78a8" for d in range(10)],
                           hovertemplate="digit %{x}: %{y:.1f}%<extra></extra>"))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), title="Probability of each digit",
                      yaxis=dict(title="%", range=[0, 100]),
                      xaxis=dict(title="digit", type="category", tickmode="array", tickvals=digits, ticktext=digits))
    return fig


def main() -> None:
    from streamlit_drawable_canvas import st_canvas  # needs a running app: import inside the page

    st.title("Draw")
    left, right = st.columns([1, 1], gap="large")
    with left:
        st.caption("Draw one digit, white on black, as big as you like anywhere on the canvas.")
        brush = st.slider("Brush size", 6, 40, 18, key="brush")
        canvas = st_canvas(
            stroke_width=brush,
            stroke_color="#FFFFFF",
            background_color="#000000",
            height=280,
            width=280,
            drawing_mode="freedraw",
            return_image_data=True,
            key=f"canvas-{st.session_state.get('canvas_n', 0)}",
        )
        st.button("Clear", on_click=clear_canvas, key="clear")
        upload = st.file_uploader(
            "...or upload a picture of a digit (PNG, JPEG, WebP, BMP or GIF; max 2 MB)",
            type=["png", "jpg", "jpeg", "webp", "bmp", "gif"], key="upload",
        )

    image = read_upload(upload) if upload is not None else canvas.image_data
    if upload is not None:
        left.caption("Reading the uploaded picture; remove it to read the canvas again.")
    with right:
        choice = lab.pick_model("draw-model")
        if image is None:
            st.info("Draw a digit on the canvas to see what the models read.")
            return
        try:
            reading = read_picture(image)
        except EmptyImageError:
            st.info("The canvas is empty: draw a digit (or upload a picture) and the models will read it.")
            st.session_state.pop("drawn", None)
            return
        x = reading.x
        st.session_state.drawn = x  # Inspect shows the feature maps of this digit
        cleaned = "".join(f"; {note}" for note in reading.notes)
        if choice is None:
            st.image(np.kron(as_picture(x), np.ones((5, 5), np.uint8)), caption=f"What a model would see (28x28){cleaned}")
            return
        try:
            model = lab.model_for(choice)
            with st.expander("Take this model home"):
                lab.download_model(choice)
        except StoreError as e:
            st.error(str(e))
            return
        p = probabilities(model, x)[0]
        best, runner = (int(d) for d in np.argsort(-p)[:2])
        c1, c2 = st.columns([1, 1])
        c1.metric("Prediction", str(best), f"{p.max() * 100:.1f}% confident", delta_color="off", delta_arrow="off")
        c2.image(np.kron(as_picture(x), np.ones((5, 5), np.uint8)), caption=f"What the model sees (28x28){cleaned}")
        label_buttons(image, choice, best)
        st.plotly_chart(probability_bars(p), key="bars")
        s1, s2 = st.columns([1, 1])
        picture = as_picture(x)
        s1.image(lab.saliency_picture(picture, saliency(model, x, best)),
                 caption=f"Why {best}: red ink spoke for it, blue against")
        s2.image(lab.saliency_picture(picture, saliency(model, x, runner)),
                 caption=f"What spoke for {runner} ({p[runner] * 100:.1f}%), the runner-up")
        st.caption("Saliency: integrated gradients from a blank picture (core/explain.py); erasing the pixels it "
                   "ranks highest lowers the model's confidence faster than erasing random ink (tests/test_explain.py).")

    st.subheader("Every variant")
    choices = lab.trained_models(st.session_state.get("draw-model-class", lab.current_user() is None))  # as the picker
    # one per variant: its reference when shipped, else its newest trained run; the user's runs can join
    per_variant = {}
    for c in choices:
        per_variant.setdefault(c.model, c)
    row = list(per_variant.values())
    extra = [c for c in choices if not c.reference and c not in row]
    if extra:
        row += st.multiselect("Add trained runs to the row", extra, format_func=lambda c: c.label, key="draw-extra")
    for start in range(0, len(row), 6):
        cols = st.columns(6)
        for col, c in zip(cols, row[start : start + 6], strict=False):
            try:
                q = probabilities(lab.model_for(c), x)[0]
            except StoreError as e:
                col.error(str(e))
                continue
            first, second, third = (int(d) for d in np.argsort(-q)[:3])
            col.metric(c.label, str(first), f"{q[first] * 100:.1f}%", delta_color="off", delta_arrow="off")
            col.caption(f"then {second} ({q[second] * 100:.1f}%), {third} ({q[third] * 100:.1f}%)")

main()
