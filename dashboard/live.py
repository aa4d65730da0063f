"""Reads for pages that watch a run live, shared by every browser session of this server.

A class with 20 tabs on one run must not mean 20 store reads and 60 rebuilt charts a second: a run and
its epochs are read together at most once per READ_TTL seconds for all sessions, a run's charts are built
once per new data for all sessions (then only serialised for each), and the server reruns each tab's live
fragments itself (push.Pusher): a new epoch and the run's end at once, the status line's progress every
status_pace() seconds and the charts every chart_pace(), both slower as more sessions watch and spread over
that time. The fragments' own timers are a slow safety net (safety_net()) where the server pushes, and the
paces of a lone watcher where it cannot.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import lab
import plotly.graph_objects as go
import push
import streamlit as st
import svgchart

from core import estimate
from core.runs import Run, RunStore

STEP_POINTS = 600  # step points a live chart draws at most (the store thins longer runs)
READ_TTL = 0.3  # seconds one read of a run serves every session (adds at most this to a new epoch's lag)
RECONCILE_S = 5.0  # seconds between checks for runs whose training process died (marks them interrupted)
REFRESH_S = 1.0  # seconds between redraws of a live run's status line (progress, epochs recorded) for a lone watcher
SESSIONS_PER_REFRESH = 5  # with the server pushing, the status line's pace slows by REFRESH_S per this many watchers
MAX_REFRESH_S = 5.0
CHART_S = 3.0  # seconds between redraws of its charts for a lone watcher (three pictures per tab: the costly part)
SAFETY_NET_S = 10.0  # with the server pushing, a live fragment's own timer: 1-1.5x this (x2 for the charts), per tab


@dataclass(frozen=True)
class RunView:
    """A run and its epoch rows as of one moment (run.epoch == len(epochs) unless the store disagrees)."""

    run: Run
    epochs: list[dict]
    read_at: float  # time.monotonic() of the read
    steps: tuple = ()  # step points within epochs (thinned in the query: at most ~STEP_POINTS)

    @property
    def best_test_acc(self) -> float | None:
        """Best test accuracy of the epochs in this view (None before the first), never the run row's copy."""
        accs = [r["test_acc"] for r in self.epochs if r["test_acc"] is not None]
        return max(accs) if accs else None


def read_run(store: RunStore, run_id: int) -> RunView:
    """Read a run and its epochs so that they agree. The store records an epoch row and the run's epoch count
    in one transaction, so a run read after its epochs has at least as many; when it has more (an epoch landed
    between the two reads), the epochs are read once more."""
    epochs = store.epochs(run_id)
    run = store.get(run_id)  # StoreError when there is no such run
    if run.epoch > len(epochs):
        epochs = store.epochs(run_id)
    return RunView(run, epochs, time.monotonic(), tuple(store.steps(run_id, STEP_POINTS)))


class SharedReads:
    """The latest RunView of each run, shared by all sessions; a view older than `ttl` seconds is read again,
    by one session while the others wait for its result (so 20 tabs cost one read, not 20)."""

    def __init__(self, ttl: float = READ_TTL, reconcile_s: float = RECONCILE_S):
        self.ttl = ttl
        self.reconcile_s = reconcile_s
        self._lock = threading.Lock()
        self._views: dict[tuple[str, int], RunView] = {}
        self._reconciled: dict[str, float] = {}  # store URL -> time.monotonic() of its last reconcile
        self.reads = 0  # store reads done, for tests

    def reconcile(self, store: RunStore) -> None:
        """Mark runs whose training process died, at most once per `reconcile_s` per store."""
        now = time.monotonic()
        with self._lock:
            if now - self._reconciled.get(store.url, -1e9) < self.reconcile_s:
                return
            self._reconciled[store.url] = now
        store.reconcile()

    def forget(self, store: RunStore, run_id: int) -> None:
        """Drop the shared view of a run this session just changed (resumed), so the next read is fresh."""
        with self._lock:
            self._views.pop((store.url, run_id), None)

    def view(self, store: RunStore, run_id: int) -> RunView:
        self.reconcile(store)
        key = (store.url, run_id)
        with self._lock:
            view = self._views.get(key)
            if view is None or time.monotonic() - view.read_at > self.ttl:
                view = read_run(store, run_id)
                self.reads += 1
                # drop views nobody asked for in a while (runs no longer watched)
                self._views = {k: v for k, v in self._views.items() if view.read_at - v.read_at < 60}
                self._views[key] = view
            return view


shared = SharedReads()


def run_changed(run_id: int) -> None:
    """This session just started, stopped, resumed or deleted run `run_id`: the next reads of it and of the
    queue go to the store, not to a shared read from before."""
    shared.forget(lab.store(), run_id)
    lab.forget_queue()


def watch(run_id: int) -> RunView:
    """The run as every session sees it now (raises StoreError when there is no such run)."""
    return shared.view(lab.store(), run_id)


pusher = push.Pusher()


def status_pace(watchers: int) -> float:
    """Seconds between pushed redraws of a live status line's progress when `watchers` sessions watch live runs on
    this server: REFRESH_S, longer as more watch (up to MAX_REFRESH_S). Epochs and the run's end are pushed at once."""
    return min(MAX_REFRESH_S, REFRESH_S * (1 + watchers // SESSIONS_PER_REFRESH))


def chart_pace(watchers: int) -> float:
    """Seconds between pushed redraws of a live run's charts (and the queue's list): CHART_S, or twice the status
    line's pace once that has slowed further (the browsers of a class draw the charts less often)."""
    return max(CHART_S, 2 * status_pace(watchers))


def safety_net(every: float, pushed: bool | None = None) -> float:
    """Seconds for a live fragment's own timer, drawn now, that the server otherwise redraws every `every` seconds
    or sooner: with pushes, a slow net for a lost push (SAFETY_NET_S, x2 for fragments paced slower than a lone
    status line), different in each tab so that tabs opened together do not fire together; without pushes (another
    Streamlit), the timer is the pace itself. `pushed`: whether the server pushes (None: this server's pusher)."""
    if not (pusher.available if pushed is None else pushed):
        return every
    return SAFETY_NET_S * (1 if every <= REFRESH_S else 2) * (1 + random.random() / 2)


def moved(view: RunView) -> tuple:
    """What a run's status line shows that should reach its tabs at once: its epochs recorded and its status."""
    return len(view.epochs), view.run.status


def status_shows(view: RunView) -> push.State:
    """What a run's status line shows: (at once) its epochs and status; (at its pace) where in the epoch it is, a
    stop asked for and its step points, or, queued, its place and estimate (which move with the clock)."""
    run = view.run
    if run.status == "queued":  # its place and start as worded (they move with the clock and the class's queue)
        place = estimate.entry_of(lab.class_queue(), run.id)
        return moved(view), place and queue_words(place)
    return moved(view), (run.epoch, run.batch, run.stop_requested, len(view.steps))


def chart_shows(view: RunView) -> push.State:
    """What a run's training charts show (at their pace; an epoch waits for it): its step points and epochs."""
    return (), (len(view.steps), view.steps[-1]["step"] if view.steps else 0, len(view.epochs), view.run.active)


def follow(view: RunView, part: str, again: bool = False) -> None:
    """From the fragment drawing `part` ("status" or "charts") of a run: while the run is active, the server reruns
    it when the run moves (push.Pusher), at once or at its pace, rather than only on the fragment's own timer;
    `again`: once more at its pace after the run ended (the status line then redraws the whole page)."""
    if not (view.run.active or again):
        pusher.leave()
        return
    store, run_id = lab.store(), view.run.id
    shows, pace = (status_shows, status_pace) if part == "status" else (chart_shows, chart_pace)
    shown = shows(view)
    pusher.watch((store.url, run_id, part), (shown[0], None) if again else shown,
                 lambda: shows(shared.view(store, run_id)), pace)


def queue_words(e: estimate.QueueEntry) -> tuple:
    """What the page says of a run in the queue: its place, a stop asked for, and its estimates as they are worded
    (to the second under 90 s, then to the minute, and the clock it starts at): words that have not moved are not
    drawn again."""
    return (e.run.id, e.position, e.run.stop_requested, estimate.describe(e.starts_in), estimate.describe(e.ends_in),
            estimate.clock(e.starts_in) if e.position else None)


def queue_shows(entries: list[estimate.QueueEntry]) -> push.State:
    """What the queue's list says (at the charts' pace): its runs' words, in order."""
    return (), tuple(queue_words(e) for e in entries)


def _follow_at_chart_pace(name: str, shown: push.State | None, latest: Callable[[], push.State]) -> None:
    """From a fragment that drew `shown` (None: nothing live any more): the server reruns it at the charts' pace when
    `latest()` differs; not once it shows nothing live."""
    if shown is None:
        pusher.leave()
    else:
        pusher.watch((lab.store().url, name), shown, latest, chart_pace)


def follow_queue(entries: list[estimate.QueueEntry]) -> None:
    """From the fragment drawing the queue's list (`entries`): the server reruns it at the charts' pace when what it
    says moved (the class's shared read of the queue: lab.class_queue); not once the queue is empty."""
    _follow_at_chart_pace("queue", queue_shows(entries) if entries else None, lambda: queue_shows(lab.class_queue()))


def follow_clock(name: str, on: bool = True) -> None:
    """From a fragment whose content moves with the clock while `on` (a live run's layer health, read from the store
    when drawn): the server reruns it at the charts' pace; not once it is off."""
    _follow_at_chart_pace(name, ((), push.ALWAYS) if on else None, lambda: ((), push.ALWAYS))


GHOST = "rgba(120,120,120,0.45)"


def chart_series(view: RunView, step_key: str, epoch_key: str | None,
                 ghost: tuple[str, list[dict]] | None) -> list[svgchart.Series]:
    """What a training chart draws: the reference run's per-epoch train/test curves faintly behind, per-step
    points as a line (x: fractional epoch) and per-epoch test points as markers on the same axis."""
    out = []
    if ghost:
        _, rows = ghost
        for key, dash in ((step_key, "dot"), (epoch_key, "dash")):
            if key and rows and key in rows[0]:
                out.append(svgchart.Series(f"reference {key.replace('_', ' ')}", tuple(r["epoch"] for r in rows),
                                           tuple(r[key] for r in rows), GHOST, dash))
    if view.steps:
        out.append(svgchart.Series(f"{step_key.replace('_', ' ')} (per step)", tuple(r["epoch"] for r in view.steps),
                                   tuple(r[step_key] for r in view.steps), "#4c78a8"))
    if epoch_key and view.epochs:
        name = epoch_key.replace("_", " ")
        rows = [r for r in view.epochs if r[epoch_key] is not None]
        out.append(svgchart.Series(name, tuple(r["epoch"] for r in rows), tuple(r[epoch_key] for r in rows), "#e45756",
                                   markers=True, hover=tuple(f"epoch {r['epoch']}: {name} {r[epoch_key]:.4g}" for r in rows)))
    return out


def _chart(title: str, y_title: str, view: RunView, step_key: str, epoch_key: str | None,
           ghost: tuple[str, list[dict]] | None, log_y: bool = False) -> go.Figure:
    """A training chart as Plotly draws it (hover, zoom): for a run that has ended."""
    fig = go.Figure()
    series = chart_series(view, step_key, epoch_key, ghost)
    for s in series:
        fig.add_scatter(x=s.xs, y=s.ys, mode="lines+markers" if s.markers else "lines", name=s.name,
                        line=dict(color=s.color, dash=s.dash or "solid"))
    shown = epochs_shown(view)
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=y_title, height=320,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.3))
    fig.update_xaxes(range=[0, shown], tickmode="linear", tick0=0, dtick=max(1, -(-shown // 5)))
    if log_y:
        fig.update_yaxes(type="log", exponentformat="power", range=list(svgchart.log_range(series, shown)))
    return fig


def _svg(title: str, y_title: str, view: RunView, step_key: str, epoch_key: str | None,
         ghost: tuple[str, list[dict]] | None, log_y: bool = False) -> str:
    """The same chart as a light SVG: for a run that trains (every watching tab redraws it)."""
    series = chart_series(view, step_key, epoch_key, ghost)
    shown = epochs_shown(view)
    return svgchart.line_chart(title, y_title, series, (0, shown), max(1, -(-shown // 5)), log_y=log_y)


def epochs_shown(view: RunView) -> int:
    """How many epochs the charts' axis spans: all of them once the run has ended; while it trains, the epochs
    reached and one more (at least two), so that the first seconds' points fill the chart, not a sliver of it."""
    last = max(view.run.config.epochs, 1)
    if not view.run.active:
        return last
    reached = max(len(view.epochs), view.steps[-1]["epoch"] if view.steps else 0.0)
    return min(last, max(2, math.ceil(reached) + 1))


@st.cache_resource(show_spinner=False, max_entries=32)
def _charts(fingerprint: tuple, _view: RunView, _ghost) -> tuple:
    draw = _svg if _view.run.active else _chart
    return (
        draw("Accuracy", "%", _view, "train_acc", "test_acc", _ghost),
        draw("Loss", "cross-entropy", _view, "train_loss", "test_loss", _ghost),
        draw("Learning rate", "lr (log scale)", _view, "lr", None, _ghost, log_y=True),
    )


def training_charts(view: RunView, ghost: tuple[str, list[dict]] | None = None) -> tuple:
    """Accuracy, loss and learning-rate charts of a view (step points, epochs, and the reference `ghost`:
    (label, per-epoch rows) or None), built once per run, data and ghost for all sessions (the figures are
    shared: draw them, do not change them). While the run is active they are SVG strings (shown as pictures:
    cheap for every watching browser to redraw), once it has ended Plotly figures (hover, zoom)."""
    last_step = view.steps[-1]["step"] if view.steps else 0
    fingerprint = (view.run.id, view.run.active, len(view.steps), last_step, ghost[0] if ghost else None,
                   tuple((r["epoch"], r["test_acc"], r["train_loss"]) for r in view.epochs))
    return _charts(fingerprint, view, ghost)


def health_charts(store: RunStore, run_id: int) -> tuple[go.Figure | None, go.Figure | None, go.Figure | None]:
    """Layer health of a run: update-to-weight ratio per layer over training (log scale, with the ~1e-3 a
    learning layer shows), the fraction of never-firing ReLU units per block and the activation histograms
    of the newest recorded epoch. None where nothing is recorded yet."""
    rows = store.layer_health(run_id, max_steps=150)
    ratio = None
    if rows:
        ratio = go.Figure()
        for layer in dict.fromkeys(r["layer"] for r in rows):
            mine = [r for r in rows if r["layer"] == layer and r["update_ratio"] > 0]
            ratio.add_scatter(x=[r["epoch"] for r in mine], y=[r["update_ratio"] for r in mine], mode="lines", name=layer)
        ratio.add_hline(y=1e-3, line=dict(color="grey", dash="dot"), annotation_text="~1e-3: learning")
        ratio.update_layout(title="Update / weight per step, per layer", xaxis_title="epoch", height=320,
                            yaxis=dict(type="log", exponentformat="power", title="||Δw|| / ||w||"),
                            margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.3))
    acts = store.activations(run_id)
    dead = hist = None
    if acts:
        epoch = acts[0]["epoch"]
        dead = go.Figure(go.Bar(x=[a["block"] for a in acts], y=[100 * a["dead_frac"] for a in acts],
                                hovertemplate="%{x}: %{y:.1f}% never fire<extra></extra>"))
        dead.update_layout(title=f"ReLU units that never fire on 256 test digits (epoch {epoch})", yaxis_title="%",
                           height=300, margin=dict(l=10, r=10, t=40, b=10))
        hist = go.Figure()
        for a in acts:
            h = a["histogram"]
            centres = [(lo + hi) / 2 for lo, hi in zip(h["edges"], h["edges"][1:], strict=False)]
            total = sum(h["counts"]) or 1
            hist.add_scatter(x=centres, y=[c / total for c in h["counts"]], mode="lines", name=a["block"])
        hist.update_layout(title=f"Activation histograms per block (epoch {epoch})", xaxis_title="activation",
                           yaxis=dict(type="log", title="share of units", exponentformat="power"), height=300,
                           margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.3))
    return ratio, dead, hist
