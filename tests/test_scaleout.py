"""Scale-out on real components: runs on a local Ray instance writing to a real PostgreSQL store, and a
Ray Tune sweep with ASHA whose trials are ordinary runs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from core.config import TrainConfig
from core.launch import start_run, stop_run
from core.runs import RunStore
from tests.conftest import make_synthetic_mnist

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'ray[tune]==2.60.0'")


@pytest.fixture(scope="module")
def ray_local():
    from core.ray_exec import connect

    connect("local", num_cpus=2)
    yield "local"
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    return str(make_synthetic_mnist(tmp_path_factory.mktemp("mnist"), n_train=256, n_test=64))


def tiny(epochs: int, seed: int = 1) -> TrainConfig:
    return TrainConfig(model="Model1", epochs=epochs, batch_size=64, lr=0.05, scheduler="none", augment=False,
                       seed=seed, device="cpu")


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_two_runs_on_ray_finish_into_postgresql(ray_local, pg_url, tiny_mnist):
    store = RunStore(pg_url)
    ids = [start_run(store, tiny(2, seed), data_root=tiny_mnist, ray=ray_local) for seed in (1, 2)]
    wait_until(lambda: all(store.get(i).status == "finished" for i in ids), 120, "both runs to finish")
    for i in ids:
        assert [e["epoch"] for e in store.epochs(i)] == [1, 2]
        assert store.has_checkpoint(i, "best") and store.folder is None  # checkpoints are rows, not files
    started = [(store.get(i).started_at, store.get(i).ended_at) for i in ids]
    assert started[0][0] < started[1][1] and started[1][0] < started[0][1]  # they trained at the same time


def test_ray_run_stops_on_request_and_a_killed_worker_leaves_it_interrupted(ray_local, pg_url, tiny_mnist):
    store = RunStore(pg_url)
    to_stop = start_run(store, tiny(200), data_root=tiny_mnist, ray=ray_local)
    to_kill = start_run(store, tiny(200, seed=2), data_root=tiny_mnist, ray=ray_local)
    # an epoch's row comes before its checkpoint: wait for the checkpoint (saved_epoch), not just the row
    wait_until(lambda: all(store.get(i).saved_epoch >= 1 for i in (to_stop, to_kill)), 120, "both runs to checkpoint an epoch")

    stop_run(store, to_stop)
    wait_until(lambda: store.get(to_stop).status == "stopped", 60, "the stop request to be honoured")

    run = store.get(to_kill)
    assert run.status == "running" and run.pid != os.getpid()
    os.kill(run.pid, signal.SIGKILL)  # the Ray worker process that claimed the run
    # reads do not reconcile: what the pages (every 5 s) and the CLI do, explicitly
    wait_until(lambda: store.reconcile() >= 0 and store.get(to_kill).status == "interrupted", 30,
               "the killed run to count as interrupted")
    assert store.has_checkpoint(to_kill, "last")  # resumable: `python -m core.train --run-id N` continues it
    assert store.get(to_stop).epoch < 200


def test_sweep_with_asha_stops_a_weak_trial_early_and_every_trial_is_a_run(ray_local, pg_url, tiny_mnist):
    from core.sweep import SweepSpec, run_sweep

    spec = SweepSpec(
        model="Model1", recipe="seed", space={"lr": [0.01, 1e-5, 0.02, 1e-6]},  # two that learn, two that cannot
        base={"epochs": 3, "optimizer": "adam", "batch_size": 32, "scheduler": "none", "augment": False, "device": "cpu"},
        search="grid", grace=1, reduction=2, max_concurrent=2,
    )
    trials = run_sweep(spec, pg_url, tiny_mnist, ray_local, sweep_id="sweep-test")
    assert len(trials) == 4 and {t.config.lr for t in trials} == {0.01, 1e-5, 0.02, 1e-6}
    store = RunStore(pg_url)
    assert store.sweeps() == ["sweep-test"]
    assert all(t.status in ("finished", "stopped") for t in trials), [(t.id, t.status, t.error) for t in trials]
    early = [t for t in trials if t.status == "stopped"]
    assert early and all(t.epoch < 3 for t in early)  # ASHA stopped at least one before its last epoch
    assert any(t.status == "finished" and t.epoch == 3 for t in trials)
    for t in trials:
        assert [e["epoch"] for e in store.epochs(t.id)] == list(range(1, t.epoch + 1))


# ---- the Sweeps page (streamlit AppTest, headless) ------------------------------------------------------
HOME = str(Path(__file__).resolve().parent.parent / "dashboard" / "Home.py")


@pytest.fixture
def page_store(tmp_path, monkeypatch) -> RunStore:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    monkeypatch.setenv("MNIST_LAB_DB", url)
    return RunStore(url)


def sweeps_page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(HOME, default_timeout=120)
    at.run()
    at.switch_page("views/Sweeps.py")
    at.run()
    assert not at.exception, at.exception
    return at


def test_sweeps_page_shows_trials_chart_and_opens_the_best_in_compare(page_store):
    from core.train import EpochResult

    ids = []
    for lr, acc in ((0.01, 97.5), (0.05, 98.7), (1e-5, 11.0)):
        rid = page_store.create_run(tiny(3).replace(lr=lr), label=f"sweep-x lr={lr}", sweep="sweep-x")
        page_store.add_epoch(rid, EpochResult(1, 0.3, acc - 1, 0.2, acc, lr, 1.0))
        page_store.finish(rid, "finished" if acc > 50 else "stopped")
        ids.append(rid)
    from core.models import build_model

    best = tiny(3).replace(lr=0.05)
    page_store.save_checkpoint(ids[1], "best", {"model": build_model("Model1").state_dict(), "config": best.to_json()})
    at = sweeps_page()
    assert at.selectbox(key="sw-pick").value == "sweep-x"
    table = at.dataframe[0].value
    assert sorted(table["run"]) == sorted(ids) and set(table["status"]) == {"finished", "stopped"}
    assert "best test %" in table.columns and table["lr"].tolist()
    parcoords = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.proto.spec and "parcoords" in c.proto.spec]
    axes = [d["label"] for d in parcoords[0]["data"][0]["dimensions"]]
    assert axes == ["lr (log10)", "best test %"]  # only what the sweep varied: the other fields were fixed
    at.button(key="sw-compare").click().run()
    assert at.multiselect(key="runs").value == [f"run {ids[1]}: Model1 sweep-x lr=0.05"]
    at.switch_page("views/Sweeps.py").run()
    at.button(key="sw-draw").click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="draw-model").value.run_id == ids[1]


def test_sweeps_page_launches_a_tiny_sweep_and_its_trials_appear(page_store, tiny_mnist, monkeypatch):
    monkeypatch.setenv("MNIST_ROOT", tiny_mnist)
    monkeypatch.delenv("MNIST_LAB_RAY", raising=False)  # the sweep process starts its own local Ray
    at = sweeps_page()
    at.selectbox(key="sw-model").set_value("Model1")
    at.text_input(key="sw-lr").input("0.01, 0.05")
    at.text_input(key="sw-bs").input("64")  # searched; the other fields keep the recipe
    at.number_input(key="sw-epochs").set_value(2)
    at.number_input(key="sw-tl").set_value(0)
    at.number_input(key="sw-vl").set_value(0)
    at.button(key="sw-launch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    sweep_id = at.query_params["sweep"][0] if isinstance(at.query_params["sweep"], list) else at.query_params["sweep"]
    wait_until(lambda: len(page_store.list_runs(sweep=sweep_id)) == 2
               and not any(t.active for t in page_store.list_runs(sweep=sweep_id)), 240, "the sweep's two trials")
    at.run()
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["status"]) <= {"finished", "stopped"}


# ---- the Sweeps page in a real browser (Playwright + Debian's Chromium against `streamlit run`) -------------
@pytest.mark.browser
def test_browser_launches_a_sweep_and_its_trials_fill_the_table(tmp_path, tiny_mnist):
    from tests.conftest import start_streamlit

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's Chromium is not installed (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    root = Path(__file__).resolve().parent.parent
    shots = root / "test-artifacts" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {**os.environ, "MNIST_LAB_DB": url, "MNIST_ROOT": tiny_mnist}
    env.pop("MNIST_LAB_RAY", None)
    server, base = start_streamlit(root, env, tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(f"{base}/Sweeps")
            page.get_by_text("No sweep yet").wait_for(timeout=60_000)
            for label, value in (("Learning rates", "0.01, 0.05"), ("Epochs per trial", "2"),
                                 ("Training images", "0"), ("Test images", "0")):
                box = page.get_by_label(label, exact=False)
                box.fill(value)
                box.press("Enter")
            page.get_by_role("button", name="Launch sweep").click()
            page.get_by_text("2 trial(s)").wait_for(timeout=120_000)
            page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)  # the parallel-coordinates chart
            wait_until(lambda: page.get_by_text("2 trial(s) · running").count() == 0, 180, "the sweep to end")
            page.screenshot(path=str(shots / "sweeps-browser.png"), full_page=True)
            assert page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').count() == 0
            browser.close()
        store = RunStore(url)
        trials = store.list_runs(sweep=store.sweeps()[0])
        assert len(trials) == 2 and all(t.status in ("finished", "stopped") for t in trials)
    finally:
        server.terminate()
        server.wait(timeout=20)
