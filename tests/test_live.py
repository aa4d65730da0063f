"""Watching a run live: the Train page reads a run and its epochs so they agree, every session shares one read
of the store per interval, and every tab on a live run sees every epoch."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from core.config import TrainConfig
from core.runs import RunStore
from tests.conftest import live_svgs

ROOT = Path(__file__).resolve().parent.parent
HOME = str(ROOT / "dashboard" / "Home.py")
sys.path.insert(0, str(ROOT / "dashboard"))

import live  # noqa: E402
import push  # noqa: E402
import svgchart  # noqa: E402


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    monkeypatch.setenv("MNIST_LAB_DB", url)
    return RunStore(url)


def epoch(n: int, test_acc: float) -> SimpleNamespace:
    """What the training loop hands the store after epoch n (an EpochResult's fields)."""
    return SimpleNamespace(epoch=n, train_loss=0.5 / n, train_acc=test_acc - 1, test_loss=0.4 / n, test_acc=test_acc,
                           lr=0.01, seconds=2.0)


def train_page(run_id: int) -> AppTest:
    at = AppTest.from_file(HOME, default_timeout=60)
    at.query_params["run"] = str(run_id)
    at.switch_page("views/Train.py")
    return at.run()


def test_train_page_takes_the_best_from_the_epochs_it_shows(store):
    """The run row's best_test_acc can lag its epoch rows (read apart, at an epoch boundary): the page used to
    format that None and fail with a TypeError."""
    run_id = store.create_run(TrainConfig(model="Model2", epochs=4))
    store.claim(run_id, os.getpid())
    store.add_epoch(run_id, epoch(1, 97.25))
    store.add_epoch(run_id, epoch(2, 98.5))
    store.update(run_id, best_test_acc=None)  # the run row as read just before its epoch's transaction
    at = train_page(run_id)
    assert not at.exception, at.exception
    assert any(c.value == "2 epoch(s) recorded · best test 98.50%" for c in at.caption), [c.value for c in at.caption]
    store.finish(run_id, "finished")


def test_a_run_with_no_epochs_shows_no_best(store):
    run_id = store.create_run(TrainConfig(model="Model2", epochs=4))
    store.update(run_id, best_test_acc=99.0)  # a stale copy with no epoch rows behind it
    at = train_page(run_id)
    assert not at.exception, at.exception
    assert any(c.value == "0 epoch(s) recorded" for c in at.caption), [c.value for c in at.caption]


def test_a_run_and_its_epochs_are_read_to_agree(store):
    """An epoch recorded between reading the epochs and reading the run is read too, so the count and the best
    shown come from the same rows."""
    run_id = store.create_run(TrainConfig(model="Model2", epochs=4))
    store.add_epoch(run_id, epoch(1, 97.0))

    class EpochLandsBetweenReads:
        def __init__(self):
            self.landed = False

        def epochs(self, rid):
            rows = store.epochs(rid)
            if not self.landed:
                self.landed = True
                store.add_epoch(rid, epoch(2, 98.0))
            return rows

        def get(self, rid):
            return store.get(rid)

        def steps(self, rid, max_points):
            return store.steps(rid, max_points)

    view = live.read_run(EpochLandsBetweenReads(), run_id)
    assert view.run.epoch == len(view.epochs) == 2
    assert view.best_test_acc == 98.0


def test_sessions_watching_a_run_share_one_read_per_interval(store):
    run_id = store.create_run(TrainConfig(model="Model2", epochs=4))

    class CountingStore:
        url = store.url
        reconciles = 0

        def reconcile(self):
            self.reconciles += 1
            return store.reconcile()

        def get(self, rid):
            return store.get(rid)

        def epochs(self, rid):
            return store.epochs(rid)

        def steps(self, rid, max_points):
            return store.steps(rid, max_points)

    counting = CountingStore()
    reads = live.SharedReads(ttl=0.5, reconcile_s=60)
    views = []
    sessions = [threading.Thread(target=lambda: views.append(reads.view(counting, run_id))) for _ in range(20)]
    for t in sessions:
        t.start()
    for t in sessions:
        t.join()
    assert len(views) == 20 and reads.reads == 1 and counting.reconciles == 1
    store.add_epoch(run_id, epoch(1, 97.0))
    assert reads.view(counting, run_id).epochs == []  # still the shared read
    time.sleep(0.6)
    assert len(reads.view(counting, run_id).epochs) == 1 and reads.reads == 2 and counting.reconciles == 1


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian's Chromium is not installed")
def test_every_tab_on_a_live_run_sees_every_epoch(store, tmp_path):
    """Four tabs on one run while this test records three epochs as a training process would; every tab shows
    every epoch count (no timing asserted: tests/load_tabs.py measures the lag)."""
    from load_tabs import ARGS, CHROMIUM, WATCHER, start_server
    from playwright.sync_api import sync_playwright

    run_id = store.create_run(TrainConfig(model="Model2", epochs=3))
    assert store.claim(run_id, os.getpid())  # this test process "trains"
    server, base = start_server(ROOT, store.url, tmp_path)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_init_script(WATCHER)
            tabs = [context.new_page() for _ in range(4)]
            for tab in tabs:
                tab.set_default_timeout(60_000)
                tab.goto(f"{base}/Train?run={run_id}")
            for tab in tabs:
                tab.get_by_text("0 epoch(s) recorded").wait_for()
            for n in (1, 2, 3):
                store.add_epoch(run_id, epoch(n, 95.0 + n))
                # the next epoch once every tab shows this one, or after a generous 30 s (a busy shared machine)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not all(t.evaluate(f"'{n}' in window.__epochs") for t in tabs):
                    tabs[0].wait_for_timeout(250)
            store.finish(run_id, "finished")
            seen = [sorted(int(k) for k in t.evaluate("window.__epochs")) for t in tabs]
            shown = [t.evaluate("window.__progress.map(p => p[1])") for t in tabs]
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert seen == [[0, 1, 2, 3]] * 4, f"epochs shown per tab: {seen}; progress lines: {shown}"


def test_a_training_runs_charts_span_the_epochs_reached_and_one_more(store):
    """In the first seconds the step points fill the charts (0-2 epochs), not a sliver of a 15-epoch axis;
    an ended run's charts span all its epochs."""
    from core.train import StepPoint

    run_id = store.create_run(TrainConfig(model="Model2", epochs=15))
    assert store.claim(run_id, os.getpid())
    store.record_progress(run_id, 30, 469, StepPoint(30, 30 / 469, 1.5, 60.0, 0.01))
    view = live.read_run(store, run_id)
    assert live.epochs_shown(view) == 2
    acc, _, lr = live.training_charts(view)  # live: SVGs
    assert re.findall(r'text-anchor="middle" fill="#555">([\d.]+)</text>', acc) == ["0", "1", "2"]  # the x axis
    low, high = svgchart.log_range(live.chart_series(view, "lr", None, None), 2)
    assert low < -2 < high and ">10⁻²<" in lr  # a constant lr sits inside the plot, not on its edge
    for n in range(1, 5):
        store.add_epoch(run_id, epoch(n, 95.0 + n / 10))
    store.record_progress(run_id, 200, 469, StepPoint(4 * 469 + 200, 4 + 200 / 469, 0.1, 98.0, 0.01))
    assert live.epochs_shown(live.read_run(store, run_id)) == 6
    store.finish(run_id, "stopped")
    assert live.epochs_shown(live.read_run(store, run_id)) == 15


def test_a_run_that_just_started_shows_the_reference_it_races_before_its_first_point(store):

    run_id = store.create_run(TrainConfig(model="Model3", epochs=15))
    assert store.claim(run_id, os.getpid())  # the training process is loading MNIST: no step point yet
    at = train_page(run_id)
    assert not at.exception, at.exception
    assert any(c.value.startswith("The first points come") for c in at.caption)
    acc = live_svgs(at)[0]  # a live run's charts are SVG pictures
    names = re.findall(r"<title>([^<]*)</title>", acc)
    assert 'data-chart="Accuracy"' in acc and names and all(n.startswith("reference") for n in names)
    store.finish(run_id, "stopped")


def test_the_live_paces_slow_down_as_more_sessions_watch_and_the_timers_are_a_net_when_the_server_pushes():
    few = live.SESSIONS_PER_REFRESH - 1
    assert live.status_pace(0) == live.status_pace(few) == live.REFRESH_S
    assert live.status_pace(few + 1) == 2 * live.REFRESH_S
    assert live.status_pace(10_000) == live.MAX_REFRESH_S
    assert live.chart_pace(0) == live.CHART_S
    assert live.chart_pace(10_000) == 2 * live.MAX_REFRESH_S  # the charts slow down with it
    assert push.Pusher().available  # this Streamlit's runtime has what the push needs
    nets = {live.safety_net(live.REFRESH_S, pushed=True) for _ in range(20)}
    assert all(live.SAFETY_NET_S <= t <= 1.5 * live.SAFETY_NET_S for t in nets) and len(nets) > 1  # differs per tab
    assert all(2 * live.SAFETY_NET_S <= live.safety_net(live.CHART_S, pushed=True) <= 3 * live.SAFETY_NET_S
               for _ in range(20))
    # where the server cannot push (another Streamlit), the timers are the paces of a lone watcher
    assert live.safety_net(live.REFRESH_S, pushed=False) == live.REFRESH_S
    assert live.safety_net(live.CHART_S, pushed=False) == live.CHART_S
