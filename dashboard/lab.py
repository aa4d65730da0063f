"""What every page shares: the run store, MNIST and trained models, each loaded once per server (st.cache_resource)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch.nn as nn

from core import estimate
from core.config import OPTIMIZERS, SCHEDULERS, TrainConfig
from core.data import MNIST, load_mnist
from core.evaluation import Evaluation, evaluate_classes
from core.export import checkpoint_bytes, onnx_bytes
from core.identity import User, settings, user_from_headers, user_named
from core.models import EMA_DECAY, MODELS
from core.reference import (
    load_reference_model,
    model_from_state,
    reference_info,
    reference_names,
    seed_recipe_info,
    seed_recipe_names,
)
from core.runs import Run, RunStore, StoreError, default_url

# Pages list at most this many of the newest runs (each rerun reads them; 10,000 runs take ~0.65 s).
NEWEST_RUNS = 300
NO_MODEL_HINT = (
    "No trained model yet. Train one on the **Train** page (a minute with a few thousand images), "
    "or ship the reference models with `python -m core.reference`."
)


def run_label(run: Run) -> str:
    """A run as Compare lists it. No status in it: the label (and so the choice) survives the run finishing."""
    return f"run {run.id}: {run.model}" + (f" {run.label}" if run.label else "")


def run_of_label(s: RunStore, label: str) -> Run | None:
    """The run a `run_label` names, read afresh (None for other labels, or a run that is gone)."""
    head = label.split(":", 1)[0]
    if not (head.startswith("run ") and head[4:].isdigit()):
        return None
    try:
        run = s.get(int(head[4:]))
    except StoreError:
        return None
    return run if run_label(run) == label else None


@st.cache_resource(show_spinner=False)
def _store(url: str) -> RunStore:
    return RunStore(url)


def store() -> RunStore:
    """The run store at $MNIST_LAB_DB (else runs/runs.db), opened once per URL. A store that cannot be opened
    ends the page with its one-line message."""
    try:
        s = _store(default_url())
        s.reconcile_if_due(5.0)  # runs whose process died show as interrupted, checked at most every 5 s
        return s
    except StoreError as e:
        st.error(str(e))
        st.stop()


@st.cache_resource(show_spinner="Loading MNIST...")
def mnist() -> MNIST:
    return load_mnist()


@dataclass(frozen=True)
class TrainedModel:
    """A trained model the pages can pick: a shipped reference or a run's best checkpoint."""

    label: str
    model: str  # variant name
    reference: bool
    run_id: int | None = None
    seed_recipe: bool = False  # a reference trained with the seed's own recipe (core/shipped/seed-recipe/)


def trained_models(everyone: bool = True) -> list[TrainedModel]:
    """Shipped references first, then finished or stopped runs that saved a checkpoint, newest first
    (from the newest NEWEST_RUNS runs): with identity on and not `everyone`, the signed-in user's runs only."""
    s = store()
    choices = [TrainedModel(f"{n} (reference)", n, True) for n in reference_names()]
    choices += [
        TrainedModel(f"{n}, seed's recipe (reference)", n, True, seed_recipe=True) for n in seed_recipe_names(True)
    ]
    with_best = s.runs_with_checkpoint("best")
    user = current_user()
    owner = None if everyone or user is None else user.name
    for run in s.list_runs(limit=NEWEST_RUNS, owner=owner):
        if run.status in ("finished", "stopped") and run.id in with_best:
            acc = f", {run.best_test_acc:.2f}%" if run.best_test_acc is not None else ""
            whose = f" ({run.owner})" if run.owner and user is not None and run.owner != user.name else ""
            choices.append(TrainedModel(f"{run_label(run)}{whose}{acc}", run.model, False, run.id))
    return choices


# ---- who is using the page (issue 17) -------------------------------------------------------------------
def current_user() -> User | None:
    """Who this request comes from: the name a trusted proxy put in its header (MNIST_LAB_TRUST_PROXY), else
    Streamlit's own login when secrets.toml has an [auth] section, else None (identity off: a single-user lab).
    Read from the request only, never from a widget or the URL."""
    try:
        config = settings()
    except ValueError as e:
        st.error(str(e))
        st.stop()
    user = user_from_headers(st.context.headers, config)
    if user is not None:
        return user
    logged_in = st.user.get("is_logged_in")  # present only when st.login is configured
    if logged_in is None:
        return None
    return user_named((st.user.get("email") or st.user.get("name")) if logged_in else None, config)


# Streamlit animates every move of a progress bar for 0.5 s (a CSS transform transition): ~30 frames drawn per
# update, which on a live page (the bar moves at each epoch and every few seconds between) was about a quarter of
# a watching tab's browser CPU (tests/profile_tab.py: 3.1-3.3 s -> 2.3-2.5 s over 20 s of an epoch every 0.5 s). The
# bar jumps instead. Sent with every page, as style only (no space taken).
STYLE = "<style>[data-testid='stProgressBarTrack'] > div { transition: none !important; }</style>"


def page_style() -> None:
    st.html(STYLE)


def identity_bar() -> None:
    """In the sidebar: who is signed in (and a log in/out button with Streamlit's login); nothing with identity off."""
    user = current_user()
    if user is None:
        return
    oidc = st.user.get("is_logged_in") is not None and not settings().trust_proxy
    if user.signed_in:
        st.sidebar.caption(f"Signed in as **{user.name}**" + (" (teacher)" if user.teacher else ""))
        if oidc:
            st.sidebar.button("Log out", on_click=st.logout, key="logout")
    else:
        st.sidebar.warning("Not signed in: you can look, not train." if not oidc else "Log in to train.")
        if oidc:
            st.sidebar.button("Log in", on_click=st.login, key="login")


@st.cache_resource(ttl=3, show_spinner=False)
def _queue(url: str, slots: int) -> list[estimate.QueueEntry]:
    return estimate.queue(_store(url), slots)


@st.cache_resource(ttl=60, show_spinner=False)
def _slots() -> int:
    return estimate.training_slots()


def class_queue() -> list[estimate.QueueEntry]:
    """The runs training, then those queued in the order they will start (the whole class's), with estimated
    times over this machine's (or the Ray cluster's) training slots; one read every 3 s serves every session."""
    return _queue(default_url(), _slots())


def forget_queue() -> None:
    """The next class_queue() reads the store: a session started, stopped, resumed or deleted a run, or saw one
    end, and the shared read may be from before (up to 3 s old)."""
    _queue.clear()


def class_toggle(key: str) -> bool:
    """With identity on, a toggle for the class's runs next to my own (off: mine and the references); True with
    identity off (every run is mine)."""
    if current_user() is None:
        return True
    return st.toggle("The class's runs too", False, key=key, help="off: your own runs and the shipped references")


def listed_owner(key: str) -> str | None:
    """Whose runs a list shows: the signed-in user's own, or everyone's (None) with identity off or the class's
    toggle (class_toggle(key)) on."""
    user = current_user()
    return None if class_toggle(key) else user.name


@st.cache_resource(show_spinner="Loading the model...", max_entries=16)
def load_model(choice: TrainedModel, store_url: str) -> nn.Module:
    if choice.reference:
        return load_reference_model(choice.model, choice.seed_recipe)
    state = _store(store_url).load_checkpoint(choice.run_id, "best", ("model", "config"))
    return model_from_state(state, f"run {choice.run_id}'s best checkpoint")


def model_for(choice: TrainedModel) -> nn.Module:
    return load_model(choice, default_url())


@st.cache_data(show_spinner="Exporting to ONNX (about 10 s)...", max_entries=8)
def _onnx(choice: TrainedModel, store_url: str) -> bytes:
    return onnx_bytes(load_model(choice, store_url))


def download_model(choice: TrainedModel, where=st) -> None:
    """Downloads of the chosen model: a PyTorch checkpoint (state_dict + config) at once, ONNX on request
    (exporting takes seconds). The README shows how to run the ONNX file with onnxruntime alone."""
    name = f"run{choice.run_id}" if choice.run_id else choice.model.lower() + ("-seed-recipe" if choice.seed_recipe else "")
    if choice.run_id:
        config = TrainConfig.from_json(_store(default_url()).load_checkpoint(choice.run_id, "best", ("config",))["config"])
    else:
        config = TrainConfig.from_dict((seed_recipe_info if choice.seed_recipe else reference_info)(choice.model)["config"])
    c1, c2 = where.columns(2)
    c1.download_button("Download PyTorch checkpoint", checkpoint_bytes(model_for(choice), config), f"{name}.pt",
                       key=f"dl-pt-{name}", help="torch.load(f, weights_only=True): {'model': state_dict, 'config': ...}")
    key = f"onnx-ready-{name}"
    if st.session_state.get(key):
        c2.download_button("Download ONNX", _onnx(choice, default_url()), f"{name}.onnx", key=f"dl-onnx-{name}",
                           help="input (N, 1, 28, 28) normalised as MNIST, output (N, 10) logits")
    elif c2.button("Export to ONNX", key=f"export-{name}"):
        st.session_state[key] = True
        st.rerun()


@st.cache_resource(show_spinner="Running the model over the 10,000 test digits...", max_entries=8)
def _evaluation(choice: TrainedModel, store_url: str) -> Evaluation:
    data = mnist()
    return evaluate_classes(load_model(choice, store_url), data.test_x, data.test_y)


def evaluation_for(choice: TrainedModel) -> Evaluation:
    return _evaluation(choice, default_url())


def pick_model(key: str, label: str = "Model") -> TrainedModel | None:
    """A selectbox of trained models; None (and a hint) when there is none. Draw and Inspect share the
    choice: the model picked on one is the one the other opens with (per browser session)."""
    choices = trained_models(class_toggle(f"{key}-class"))
    if not choices:
        st.info(NO_MODEL_HINT)
        return None
    shared = st.session_state.get("shared-model")
    index = next((i for i, c in enumerate(choices) if c == shared), None)
    if st.session_state.get(key) not in choices:  # a choice that is gone (deleted run) is not kept
        st.session_state.pop(key, None)
    choice = st.selectbox(label, choices, index=default_choice(choices) if index is None else index,
                          format_func=lambda c: c.label, key=key)
    st.session_state["shared-model"] = choice
    return choice


def remember_my_run(run_id: int) -> None:
    """A run this browser session started (or resumed): the pickers default to the newest of these."""
    st.session_state.setdefault("my-runs", []).append(run_id)


def default_choice(choices: list[TrainedModel]) -> int:
    """The newest run this session trained when it has a model (what a user who just trained wants to look
    at; not another user's), else the Model3 reference (the lab's flagship), else the first."""
    mine = set(st.session_state.get("my-runs", []))
    for i, c in enumerate(choices):
        if not c.reference and c.run_id in mine:
            return i
    return next((i for i, c in enumerate(choices) if c.model == "Model3" and not c.seed_recipe), 0)


def curves(series: dict[str, list[dict]], metrics: list[str], title: str, y_title: str) -> go.Figure:
    """One line per (series, metric) over epochs; `series` maps a name to per-epoch dicts."""
    fig = go.Figure()
    for name, rows in series.items():
        for metric in metrics:
            label = f"{name} {metric.replace('_', ' ')}" if len(series) > 1 or len(metrics) > 1 else name
            fig.add_scatter(
                x=[r["epoch"] for r in rows], y=[r[metric] for r in rows], mode="lines+markers", name=label
            )
    fig.update_layout(
        title=title, xaxis_title="epoch", yaxis_title=y_title, height=320, margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", y=-0.25),
    )
    # Ticks on whole epochs only, at most ~8 of them ("d" formatting alone printed 1 2 2 3 3 for 3 epochs).
    last = max((r["epoch"] for rows in series.values() for r in rows), default=1)
    fig.update_xaxes(tickmode="linear", tick0=1, dtick=max(1, -(-last // 8)))
    return fig


TIME_COLUMN = "wall time (s; moves with the machine's load)"
COLOURS = ["#4c78a8", "#e45756", "#54a24b", "#f58518", "#b279a2", "#72b7b2", "#eeca3b", "#ff9da6", "#9d755d", "#bab0ac"]


def train_test_chart(series: dict[str, list[dict]], kind: str, title: str, y_title: str, zoom: bool) -> go.Figure:
    """Train (dashed) and test (solid) `kind` ("acc" or "loss") of each series over epochs, one colour per
    series, so the gap between them (what Dropout changes) shows. `zoom`: accuracy axes start where the
    runs differ (3 points below the lowest best test accuracy), not at 0."""
    fig = go.Figure()
    for n, (name, rows) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        for split, dash in (("test", "solid"), ("train", "dash")):
            fig.add_scatter(x=[r["epoch"] for r in rows], y=[r[f"{split}_{kind}"] for r in rows], mode="lines+markers",
                            name=f"{name} {split}", line=dict(color=colour, dash=dash), marker=dict(size=4),
                            legendgroup=name)
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=y_title, height=420,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    last = max((r["epoch"] for rows in series.values() for r in rows), default=1)
    fig.update_xaxes(tickmode="linear", tick0=1, dtick=max(1, -(-last // 8)))
    bests = [max(r[f"test_{kind}"] for r in rows) for rows in series.values() if rows]
    if zoom and kind == "acc" and bests:
        fig.update_yaxes(range=[max(0.0, min(bests) - 3.0), 100.0])
    if kind == "loss":
        fig.update_yaxes(type="log")
    return fig


def summarise(rows: list[dict]) -> dict:
    """Best test acc, its epoch, mean of the last three epochs and total time for one run's epochs."""
    if not rows:
        return {"best test %": None, "epoch of best": None, "last-3 test %": None, "epochs": 0, TIME_COLUMN: None}
    best = max(rows, key=lambda r: r["test_acc"])
    last3 = [r["test_acc"] for r in rows[-3:]]
    return {
        "best test %": round(best["test_acc"], 2),
        "epoch of best": best["epoch"],
        "last-3 test %": round(sum(last3) / len(last3), 2),
        "epochs": len(rows),
        TIME_COLUMN: round(sum(r["seconds"] or 0 for r in rows), 1),
    }


def saliency_picture(picture: np.ndarray, scores: np.ndarray, scale: int = 5) -> np.ndarray:
    """A 28x28 reading (uint8, white ink) with a saliency map laid over it, as an RGB picture `scale` times
    larger: red where a pixel's ink spoke for the digit, blue where it spoke against, grey ink elsewhere."""
    grey = picture.astype(np.float32) / 255.0 * 0.45
    top = float(np.abs(scores).max()) or 1.0
    pos, neg = np.clip(scores / top, 0, 1), np.clip(-scores / top, 0, 1)
    rgb = np.stack([grey + pos * 0.9, grey, grey + neg * 0.9], axis=-1)
    rgb = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    return np.kron(rgb, np.ones((scale, scale, 1), np.uint8))


# ---- The Train form in the link ---------------------------------------------------------------------------
# A reload starts a new session (session_state is gone), so the form's values live in the URL too: the page
# writes them as they change and starts from them. A value the form would refuse is dropped, never used.
FORM_BOUNDS = {"epochs": (1, 100), "batch_size": (8, 2048), "seed": (0, 10_000), "lr": (1e-5, 1.0),
               "train_limit": (0, 60_000), "test_limit": (0, 10_000)}  # the form's widgets take theirs from here
FORM_CHOICES = {"model": tuple(MODELS), "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}
LABEL_MAX = 200  # characters of a label a link may carry
LINK_PARAMS = ("model", "recipe", *FORM_BOUNDS, "optimizer", "scheduler", "augment", "average", "label")


def parse_form_params(params: dict[str, str]) -> tuple[dict, list[str]]:
    """The Train form's values in URL parameters, each checked as the form checks it: (values, names of the
    parameters refused). Parameters that are not the form's (`run`) are left alone."""
    values, refused = {}, []
    for name in LINK_PARAMS:
        if name in params:
            try:
                values[name] = _form_value(name, params[name])
            except (ValueError, KeyError):
                refused.append(name)
    return values, refused


def _form_value(name: str, text: str):
    if name in FORM_CHOICES:
        if text not in FORM_CHOICES[name]:
            raise ValueError(text)
        return text
    if name == "recipe":  # seed | reference | run-N (the settings of run N)
        if text in ("seed", "reference") or (text.startswith("run-") and text[4:].isdigit()):
            return text
        raise ValueError(text)
    if name in ("augment", "average"):
        return {"1": True, "true": True, "0": False, "false": False}[text.lower()]
    if name == "label":
        if len(text) > LABEL_MAX:
            raise ValueError("label too long")
        return text
    low, high = FORM_BOUNDS[name]
    value = float(text) if name == "lr" else int(text)
    if not low <= value <= high:  # also refuses nan
        raise ValueError(text)
    return value


def form_from_link() -> tuple[dict, list[str]]:
    """The values the Train form starts from: the link's (a reload, or a link someone shared), else those this
    session last left the form with (back from another page); and the link's parameters that were refused.
    A link naming run N's settings brings them back when this session has copied none."""
    values, refused = parse_form_params(st.query_params.to_dict())
    if not values and not refused:
        values = dict(st.session_state.get("train-form", {}))
    recipe_ = values.get("recipe", "")
    if recipe_.startswith("run-") and "copied" not in st.session_state:
        try:
            run = store().get(int(recipe_[4:]))
            st.session_state["copied"] = (run.id, run.config)
        except StoreError:
            values.pop("recipe")
            refused.append("recipe")
    return values, refused


def preset_of_link(recipe_: str | None) -> str | None:
    """The Train page's recipe choice a link's `recipe` names ("run-5" -> "run 5's")."""
    if recipe_ and recipe_.startswith("run-"):
        return f"run {recipe_[4:]}'s"
    return recipe_


def link_settings(base: TrainConfig, values: dict, model: str, preset: str) -> TrainConfig:
    """`base` with the link's settings where they still apply: the link's variant and recipe are the form's."""
    if values.get("model", "Model3") != model or preset_of_link(values.get("recipe", "seed")) != preset:
        return base
    changes = {k: v for k, v in values.items() if k in FORM_BOUNDS or k in ("optimizer", "scheduler", "augment")}
    if "average" in values:
        changes["ema"] = averaged(base, values["average"])
    return base.replace(**changes)


def averaged(base: TrainConfig, on: bool) -> float:
    """The `ema` a run gets from the Train form's Average box: the recipe's own decay where it has one, else
    EMA_DECAY; 0 (no average) when the box is off."""
    return (base.ema or EMA_DECAY) if on else 0.0


def form_to_link(values: dict) -> None:
    """Keep the form's values in the link (writing only what changed) and in this session. `values` as
    parse_form_params returns them, the recipe as the page names it."""
    values = {**values, "recipe": values["recipe"].replace("run ", "run-").removesuffix("'s")}
    st.session_state["train-form"] = values
    for name, value in values.items():
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        if name == "label" and not text:
            if "label" in st.query_params:
                del st.query_params["label"]
        elif st.query_params.get(name) != text:
            st.query_params[name] = text
