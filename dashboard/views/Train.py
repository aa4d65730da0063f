"""Train: pick a variant and its settings, start a training process, watch it live, stop it."""

from __future__ import annotations

import os

import lab
import live
import streamlit as st

from core import estimate
from core.config import OPTIMIZERS, SCHEDULERS, ConfigError, recipe
from core.data import DataError
from core.identity import NotAllowed, may_change
from core.launch import delete_run, never_started, resume_run, start_run, stop_run
from core.models import MODELS
from core.ray_exec import RayError
from core.reference import reference_for
from core.runs import StoreError


def settings_form() -> None:
    st.subheader("New run")
    link, refused = lab.form_from_link()  # the form's values survive a reload in the URL
    model = st.selectbox("Variant", list(MODELS), index=list(MODELS).index(link.get("model", "Model3")), key="model")
    copied = st.session_state.get("copied")  # (run id, its config) from "New run with these settings"
    presets = ["seed", "reference"] + ([f"run {copied[0]}'s"] if copied and copied[1].model == model else [])
    if st.session_state.get("preset") not in presets:
        st.session_state.pop("preset", None)
    linked = lab.preset_of_link(link.get("recipe"))
    preset = st.radio("Recipe", presets, index=presets.index(linked) if linked in presets else 0, horizontal=True,
                      key="preset", format_func=lambda p: RECIPE_NAMES.get(p, p),
                      help="the seed's recipe: plain SGD at lr 0.01 with a plateau schedule, as the seed project "
                           "trained; our tuned recipe: Nesterov SGD with a one-cycle schedule and shifts (for Model3 "
                           "also an average of the weights as the model), what our reference runs use; run N's: the "
                           "settings of the run you copied")
    base = copied[1] if preset not in ("seed", "reference") else recipe(model, preset)
    k = f"{model}-{preset}"  # widgets reset to the recipe's values when the variant or recipe changes
    start = lab.link_settings(base, link, model, preset)  # ... or to the link's, where its variant and recipe are these
    bounds = lab.FORM_BOUNDS
    c1, c2, c3 = st.columns(3)
    epochs = c1.number_input("Epochs", *bounds["epochs"], start.epochs, key=f"epochs-{k}")
    batch_size = c2.number_input("Batch size", *bounds["batch_size"], start.batch_size, step=32, key=f"bs-{k}")
    seed = c3.number_input("Seed", *bounds["seed"], start.seed, key=f"seed-{k}")
    optimizer = c1.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(start.optimizer), key=f"opt-{k}")
    lr = c2.number_input("Learning rate", *bounds["lr"], start.lr, format="%.4f", key=f"lr-{k}")
    scheduler = c3.selectbox("LR schedule", SCHEDULERS, index=SCHEDULERS.index(start.scheduler), key=f"sched-{k}")
    augment = c1.checkbox("Augment", start.augment, key=f"aug-{k}",
                          help="random rotation (and the recipe's shifts/zoom) of each training batch")
    average = c1.checkbox("Average", start.ema > 0, key=f"avg-{k}",
                          help="average the weights: test and keep an exponential moving average of them, as our tuned "
                               "Model3 recipe does (steadier test accuracy while the lr is still high); SGD's own "
                               "weights keep learning")
    # the image counts and the label apply to any variant and recipe: kept when those change
    if copied and preset not in ("seed", "reference") and st.session_state.get("copied-applied") != copied[0]:
        st.session_state["tl"], st.session_state["vl"] = base.train_limit, base.test_limit
        st.session_state["copied-applied"] = copied[0]
    train_limit = c2.number_input("Training images (0 = all 60,000)", *bounds["train_limit"], step=1000, key="tl",
                                  value=None if "tl" in st.session_state else link.get("train_limit", 0))
    test_limit = c3.number_input("Test images (0 = all 10,000)", *bounds["test_limit"], step=1000, key="vl",
                                 value=None if "vl" in st.session_state else link.get("test_limit", 0))
    label = st.text_input("Label (optional)", key="label", value=None if "label" in st.session_state else link.get("label", ""))
    lab.form_to_link(dict(model=model, recipe=preset, epochs=int(epochs), batch_size=int(batch_size), seed=int(seed),
                          optimizer=optimizer, lr=float(lr), scheduler=scheduler, augment=bool(augment),
                          average=bool(average),
                          train_limit=int(train_limit or 0), test_limit=int(test_limit or 0), label=label or ""))
    if refused:
        st.caption(f"Not taken from the link (a value the form does not accept): {', '.join(refused)}.")
    try:
        planned = base.replace(epochs=int(epochs), batch_size=int(batch_size), train_limit=int(train_limit or 0),
                               test_limit=int(test_limit or 0))
        per_epoch = estimate.epoch_seconds(lab.store(), planned)
        st.caption(f"Estimated time on this machine: {estimate.describe(per_epoch * planned.epochs if per_epoch else None)}"
                   " (from this variant's recorded epochs here, else its shipped run), plus any wait in the queue.")
    except ConfigError:
        pass
    user = lab.current_user()  # from the request (a trusted proxy's header, or st.login); None: identity off
    if not st.button("Start", type="primary", key="start", disabled=user is not None and not user.signed_in):
        return
    try:
        lab.mnist()  # refuse before recording a run that could not train
        config = base.replace(
            epochs=int(epochs), batch_size=int(batch_size), seed=int(seed), optimizer=optimizer,
            lr=float(lr), scheduler=scheduler, augment=augment, ema=lab.averaged(base, average),
            train_limit=int(train_limit or 0),
            test_limit=int(test_limit or 0),
        ).validate()
        run_id = start_run(lab.store(), config, data_root=os.environ.get("MNIST_ROOT"), label=label, user=user)
    except (ConfigError, DataError, StoreError, RayError, NotAllowed) as e:
        st.error(str(e))
        return
    lab.remember_my_run(run_id)
    live.run_changed(run_id)
    st.query_params["run"] = str(run_id)  # a reload, or this URL in another browser, shows the same run
    st.rerun()


RECIPE_NAMES = {"seed": "the seed's recipe", "reference": "our tuned recipe"}


def copy_settings(run) -> None:
    """Fill the form with a run's settings (a button callback: it runs before the form's widgets exist)."""
    st.session_state.copied = (run.id, run.config)
    st.session_state.model = run.model
    st.session_state.preset = f"run {run.id}'s"


def forget_run(run_id: int) -> None:
    """After a delete: the page shows another run (the URL and this session no longer name this one)."""
    live.run_changed(run_id)
    if st.query_params.get("run") == str(run_id):
        del st.query_params["run"]
    st.session_state.pop("train-run", None)
    st.toast(f"Run {run_id} deleted.")


def chosen_run_id() -> int | None:
    """The run in the URL, else the one this page showed last, else the newest active run, else the newest run
    (with identity on: of the user's own runs)."""
    wanted = st.query_params.get("run")
    if wanted and wanted.isdigit():
        return int(wanted)
    if st.session_state.get("train-run") is not None:
        return st.session_state["train-run"]
    store = lab.store()
    live.shared.reconcile(store)  # a run whose process died is not "running" any more
    user = lab.current_user()
    mine = None if user is None else user.name
    active = store.list_runs(status="running", limit=1, owner=mine) or store.list_runs(status="queued", limit=1, owner=mine)
    newest = active or store.list_runs(limit=1, owner=mine)
    return newest[0].id if newest else None


def live_run(run_id: int, every: float | None) -> None:
    """Where the run is (status, progress, epochs recorded), redrawn while it is active (`every`: its own timer;
    None: drawn once): the server reruns it at once when the run records an epoch or ends, and at a pace for the
    progress (live.follow). Only what moves is in here. All sessions share one read of the store (live.watch);
    nothing here trains."""
    try:
        view = live.watch(run_id)
    except StoreError as e:
        st.error(str(e))
        return
    run = view.run
    done = f"epoch {run.epoch}/{run.config.epochs}"
    if run.active and run.batches_per_epoch:
        done += f", batch {run.batch}/{run.batches_per_epoch}"
    if run.active and run.stop_requested:
        done += " · stopping after the current batch"
    st.progress(run.progress, text=f"{run.status} · {done}")
    if never_started(run):
        st.error("The training process ended before it started; its output is in the run's train.log.")
    elif run.status == "queued":
        place = estimate.entry_of(lab.class_queue(), run.id)
        when = (f" #{place.position} in the queue; starts in {estimate.describe(place.starts_in)} (about "
                f"{estimate.clock(place.starts_in)})") if place and place.position else ""
        st.info(f"Queued{when}: the training slots are taken. It starts as soon as one comes free.")
    elif run.status in ("failed", "interrupted"):
        st.error(f"The run {run.status}: {run.error}")
    elif run.status == "stopped":
        st.warning("Stopped on request; the finished epochs and checkpoints are kept.")
    rows, best = view.epochs, view.best_test_acc
    st.caption(f"{len(rows)} epoch(s) recorded" + (f" · best test {best:.2f}%" if best is not None else "")
               + (f" · {len(view.steps)} step point(s)" if view.steps else ""))
    stop_control(run)
    # a new epoch or the run's end reaches this tab at once, not on its next tick; once ended, one more redraw
    live.follow(view, "status", again=bool(every) and not run.active and st.session_state.get("ended") != run.id)
    if every and not run.active:  # the run ended: after one more refresh showing how (and its last epoch), the
        if st.session_state.get("ended") == run.id:  # whole page reruns (its buttons, the model pickers elsewhere)
            if estimate.entry_of(lab.class_queue(), run.id):  # the queue's shared read is from before the end
                lab.forget_queue()
            st.rerun(scope="app")
        st.session_state["ended"] = run.id


def stop_control(run) -> None:
    """Stop, drawn with the status line (on its timer, and pushed) so that it goes the moment the run ends rather
    than with the page's rerun a refresh later. Only for the run's owner or a teacher; core checks again."""
    if not run.active or never_started(run):
        return
    user = lab.current_user()
    if run.stop_requested:
        st.caption("Stopping after the current batch...")
    elif not may_change(user, run.owner):
        st.caption(f"Only {run.owner or 'a teacher'}{' or a teacher' if run.owner else ''} can stop this run.")
    elif st.button("Stop", key=f"stop-{run.id}"):
        try:
            stop_run(lab.store(), run.id, user)
        except NotAllowed as e:
            st.error(str(e))
        else:
            live.run_changed(run.id)
            st.rerun(scope="app")


def run_controls(run) -> None:
    """Resume, New run with these settings and Delete: drawn with the page, not on a timer (the page reruns when
    they are pressed and when the run ends). Resume and Delete only for the run's owner or a teacher; core checks
    again."""
    user = lab.current_user()
    b1, b2, b3 = st.columns([1, 2, 1])
    mine = may_change(user, run.owner)
    if run.status in ("stopped", "interrupted", "failed") and run.epoch < run.config.epochs and mine:
        if b1.button("Resume", key=f"resume-{run.id}", help="continue from its last checkpoint, same run id"):
            try:
                resume_run(lab.store(), run.id, data_root=os.environ.get("MNIST_ROOT"), user=user)
            except (StoreError, RayError, NotAllowed) as e:
                st.error(str(e))
            else:
                lab.remember_my_run(run.id)
                live.run_changed(run.id)
                st.rerun(scope="app")
    b2.button("New run with these settings", key=f"copy-{run.id}", on_click=copy_settings, args=(run,))
    if not run.active and mine:
        with b3.popover("Delete", help="remove this run: its epochs, charts and checkpoints"):
            st.caption(f"Run {run.id}'s epochs, charts and checkpoints go for good.")
            if st.button(f"Delete run {run.id}", type="primary", key=f"delete-{run.id}"):
                try:
                    delete_run(lab.store(), run.id, user)
                except (StoreError, NotAllowed) as e:
                    st.error(str(e))
                else:
                    forget_run(run.id)
                    st.rerun(scope="app")


def live_charts(run_id: int, ghost: tuple | None) -> None:
    """The run's three training charts, redrawn at their own, slower pace (live.chart_pace) while it is active, as
    pictures (SVG) while it trains and as Plotly charts (hover, zoom) once it has ended: re-sending and redrawing
    three Plotly charts in every tab cost the browsers most of a refresh. `ghost`: the reference run drawn behind."""
    try:
        view = live.watch(run_id)
    except StoreError:
        return  # live_run says so
    if view.run.active and not view.steps:
        st.caption("The first points come a few seconds after the training process starts (it loads MNIST first).")
    live.follow(view, "charts")
    acc, loss, lr = live.training_charts(view, (ghost[0], ghost[1]["epochs"]) if ghost else None)
    for col, chart, key in zip(st.columns(3), (acc, loss, lr), ("acc", "loss", "lr"), strict=True):
        if isinstance(chart, str):  # live: an SVG, shown as a picture (no DOM or React work per redraw)
            col.image(chart, width="stretch")
        else:
            col.plotly_chart(chart, key=key)


def layer_health(run_id: int, active: bool) -> None:
    """Layer health charts, read from the store when drawn (at the charts' pace while the run is `active`)."""
    live.follow_clock(f"health-{run_id}", active)
    ratio, dead, hist = live.health_charts(lab.store(), run_id)
    if ratio is None and dead is None:
        st.caption("Nothing recorded yet: the training process measures a step every few seconds.")
    for fig, key in ((ratio, "ratio"), (dead, "dead"), (hist, "hist")):
        if fig is not None:
            st.plotly_chart(fig, key=f"health-{key}")


def watched_run(run_id: int) -> None:
    """A run's page: its title, the status line and its charts (rerun by the server while the run is active: at
    once on a new epoch, every few seconds for progress and step points), its buttons and, drawn with the page,
    the chart options, layer health and config."""
    try:
        run = live.watch(run_id).run
    except StoreError as e:
        st.error(str(e))
        return
    user = lab.current_user()
    st.subheader(f"Run {run.id}: {run.model}" + (f" · {run.label}" if run.label else "")
                 + (f" · {run.owner}'s" if user is not None and run.owner else ""))
    every = live.safety_net(live.REFRESH_S) if run.active else None  # own timer while queued or training
    if run.active:
        st.session_state.pop("ended", None)
    st.fragment(live_run, run_every=every)(run_id, every)
    run_controls(run)
    reference = reference_for(run.config)  # what this run is measured against, from the first second
    ghost = reference if reference and st.session_state.get("ghost", True) else None
    charts_every = live.safety_net(live.CHART_S) if run.active else None
    st.fragment(live_charts, run_every=charts_every)(run_id, ghost)
    if reference:
        st.toggle("Show the reference run (grey, behind)", True, key="ghost",
                  help="the shipped run of the same variant, under the same recipe where one ships")
        if ghost:
            st.caption(f"Grey, behind: {ghost[0]}, the shipped run this one is measured against.")
    if st.toggle("Layer health", False, key=f"health-{run.id}", help="is every layer learning? read from the store when shown"):
        st.fragment(layer_health, run_every=charts_every)(run_id, run.active)
    with st.expander("Config"):
        st.json(run.config.to_json())


def active_runs(current: int | None) -> None:
    """The runs training or queued on this machine, with queue position and estimated times; picking one
    shows it (and puts it in the URL). With identity on: the user's own, unless the class's are asked for
    (positions are always in the whole class's queue)."""
    entries = lab.class_queue()
    live.follow_queue(entries)  # redrawn when what it says moves (places, estimates as worded)
    user = lab.current_user()
    owner = lab.listed_owner("queue-class")
    if owner is not None:
        entries = estimate.owned_by(entries, owner)
    if not entries:
        return

    def name(e: estimate.QueueEntry) -> str:
        return (f"run {e.run.id}: {e.run.model}" + (f" {e.run.label}" if e.run.label else "")
                + (f" · {e.run.owner}" if user is not None and e.run.owner else ""))

    def when(e: estimate.QueueEntry) -> str:
        if e.position is None:
            if e.run.stop_requested:  # until its process stops it and the page's next rerun drops it from the list
                return f"run {e.run.id} stopping after its current batch"
            return f"run {e.run.id} training, ends in {estimate.describe(e.ends_in)}"
        return f"run {e.run.id} queued #{e.position}, starts in {estimate.describe(e.starts_in)} (~{estimate.clock(e.starts_in)})"

    # the options' labels stay the same while the estimates move: a selectbox sends back the label it showed,
    # and a label no longer among the options came back as that text instead of a run id
    labels = {e.run.id: name(e) for e in entries}
    ids = list(labels)
    st.session_state["active-runs"] = current if current in ids else None  # shows the run on display
    st.selectbox("Training and queued on this machine", ids, format_func=labels.get, key="active-runs",
                 placeholder="choose a run to watch", on_change=watch_picked)
    shown = [when(e) for e in entries[:QUEUE_SHOWN]]
    more = f"; {len(entries) - QUEUE_SHOWN} more" if len(entries) > QUEUE_SHOWN else ""
    st.caption("; ".join(shown) + more)


QUEUE_SHOWN = 5  # runs whose estimates the queue's caption spells out


def watch_picked() -> None:
    picked = st.session_state.get("active-runs")
    if isinstance(picked, int):  # a run id (never a label the selectbox could not match)
        st.query_params["run"] = str(picked)
        st.session_state["train-run"] = picked


def main() -> None:
    st.title("Train")
    st.caption("Training runs in its own process and writes to the run store; this page only reads it.")
    run_id = chosen_run_id()
    st.session_state["train-run"] = run_id  # the page stays on this run (a Stop, or a Start elsewhere, does not move it)
    left, right = st.columns([2, 3], gap="large")
    with left:
        settings_form()
    with right:
        # the queue's places and times move while runs train: redrawn at the charts' pace while it has runs
        st.fragment(active_runs, run_every=live.safety_net(live.CHART_S) if lab.class_queue() else None)(run_id)
        if run_id is None:
            st.info("No run yet: choose a variant and press Start.")
            return
        watched_run(run_id)


main()
