"""Reads for pages that watch a run live, shared by every browser session of this server.

A class with 20 tabs on one run must not mean 20 store reads and 60 rebuilt charts a second: a run and
its epochs are read together at most once per READ_TTL seconds for all sessions, a run's charts are built
once per epoch (then only serialised for each session), and the refresh interval lengthens when refreshes
get slow (a busy server).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass

import lab
import plotly.graph_objects as go
import streamlit as st

from core.runs import Run, RunStore

READ_TTL = 0.3  # seconds one read of a run serves every session (adds at most this to a new epoch's lag)
RECONCILE_S = 5.0  # seconds between checks for runs whose training process died (marks them interrupted)
REFRESH_S = 1.0  # seconds between refreshes of a live view on an idle server
MAX_REFRESH_S = 5.0  # ... and at most this, however busy the server
BUSY_FACTOR = 10.0  # refresh no more often than every BUSY_FACTOR x a recent refresh's duration


@dataclass(frozen=True)
class RunView:
    """A run and its epoch rows as of one moment (run.epoch == len(epochs) unless the store disagrees)."""

    run: Run
    epochs: list[dict]
    read_at: float  # time.monotonic() of the read

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
    return RunView(run, epochs, time.monotonic())


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


class Pace:
    """How long live refreshes take on this server lately (all sessions), and so how often to refresh."""

    def __init__(self, samples: int = 50):
        self._took: deque[float] = deque(maxlen=samples)
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        with self._lock:
            self._took.append(seconds)

    def interval(self) -> float:
        """REFRESH_S while refreshes are quick; longer, up to MAX_REFRESH_S, when they are slow (whole seconds)."""
        with self._lock:
            typical = statistics.median(self._took) if self._took else 0.0
        return float(min(MAX_REFRESH_S, max(REFRESH_S, math.ceil(BUSY_FACTOR * typical))))


shared = SharedReads()
pace = Pace()


def watch(run_id: int) -> RunView:
    """The run as every session sees it now (raises StoreError when there is no such run)."""
    return shared.view(lab.store(), run_id)


@st.cache_resource(show_spinner=False, max_entries=16)
def _charts(fingerprint: tuple, _rows: list[dict]) -> tuple[go.Figure, ...]:
    rows = {"": _rows}
    lr = lab.curves(rows, ["lr"], "Learning rate", "lr (log scale)")
    lr.update_yaxes(type="log", exponentformat="power")
    return (
        lab.curves(rows, ["train_acc", "test_acc"], "Accuracy", "%"),
        lab.curves(rows, ["train_loss", "test_loss"], "Loss", "cross-entropy"),
        lr,
    )


def training_charts(view: RunView) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Accuracy, loss and learning-rate charts of a view's epochs, built once per run and epoch list
    for all sessions (the figures are shared: draw them, do not change them)."""
    fingerprint = (view.run.id, tuple((r["epoch"], r["test_acc"], r["train_loss"]) for r in view.epochs))
    return _charts(fingerprint, view.epochs)
