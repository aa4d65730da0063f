"""The server reruns the status line of every session watching a live run as soon as an epoch is recorded
(dashboard/push.py), not only when the session's own fragment timer asks. Real server, real trainer process,
real websocket sessions speaking Streamlit's protocol (tests/load_sessions.py) that never answer their timers:
whatever they see after the page's first run, the server sent by itself.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from core.config import TrainConfig
from core.runs import RunStore
from tests.conftest import make_synthetic_mnist, start_streamlit, stop_server
from tests.load_sessions import session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "dashboard"))
import live  # noqa: E402

EPOCHS = 3


def test_sessions_that_never_answer_their_timers_see_every_epoch_of_a_live_run(tmp_path):
    data = make_synthetic_mnist(tmp_path / "mnist", n_train=6000, n_test=500)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(db)
    run_id = store.create_run(TrainConfig(model="Model2", epochs=EPOCHS, test_limit=500))
    proc, base = start_streamlit(ROOT, {**os.environ, "MNIST_LAB_DB": db, "MNIST_ROOT": str(data)}, tmp_path)
    url = base.replace("http://", "ws://") + "/_stcore/stream"
    arrived: list[dict[int, float]] = [{}, {}]
    trainer = None

    async def watch() -> None:
        nonlocal trainer
        stop = asyncio.Event()
        tasks = [asyncio.create_task(session(url, f"run={run_id}", seen, stop, [0], timers_on=False)) for seen in arrived]
        deadline = time.monotonic() + 60
        while not all(0 in seen for seen in arrived) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert all(0 in seen for seen in arrived), "the sessions never showed the queued run"
        trainer = subprocess.Popen([sys.executable, "-m", "core.train", "--run-id", str(run_id), "--runs", db, "--quiet",
                                    "--data", str(data)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(EPOCHS in seen for seen in arrived):
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(watch())
        assert trainer.wait(timeout=120) == 0
    finally:
        if trainer and trainer.poll() is None:
            trainer.kill()
        stop_server(proc)
    assert [r["epoch"] for r in store.epochs(run_id)] == list(range(1, EPOCHS + 1))
    for seen in arrived:  # without the push, nothing after the first run reaches a session that sends no timer reruns
        assert sorted(seen) == list(range(EPOCHS + 1)), f"epochs shown: {sorted(seen)} (server log: {tmp_path}/streamlit.log)"


def test_tabs_drawn_before_a_class_arrived_slow_their_timers_as_more_watch(tmp_path):
    """A tab's timers are set when its page is drawn: the first tab on a run (alone then) must still slow its
    status line once a class watches the same run, or twenty tabs drawn one by one keep the fastest pace."""
    data = make_synthetic_mnist(tmp_path / "mnist", n_train=3000, n_test=100)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(db)
    run_id = store.create_run(TrainConfig(model="Model2", epochs=500))  # live for the whole test (killed)
    proc, base = start_streamlit(ROOT, {**os.environ, "MNIST_LAB_DB": db, "MNIST_ROOT": str(data)}, tmp_path)
    url = base.replace("http://", "ws://") + "/_stcore/stream"
    first: list[float] = []  # the timer intervals the server set in the first tab
    trainer = subprocess.Popen([sys.executable, "-m", "core.train", "--run-id", str(run_id), "--runs", db, "--quiet",
                                "--data", str(data)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    async def watch() -> None:
        deadline = time.monotonic() + 60
        while store.get(run_id).status != "running" and time.monotonic() < deadline:  # a queued run with no process
            await asyncio.sleep(0.2)  # is shown interrupted (and not refreshed)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(session(url, f"run={run_id}", {}, stop, [0], intervals=first))]
        deadline = time.monotonic() + 60
        while not first and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert first and min(first) == live.REFRESH_S, f"the first tab, alone, got timers {first}"
        # a class arrives: enough tabs that the status line's pace is one step slower
        tasks += [asyncio.create_task(session(url, f"run={run_id}", {}, stop, [0])) for _ in range(live.SESSIONS_PER_REFRESH)]
        deadline = time.monotonic() + 60
        while 2 * live.REFRESH_S not in first and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(watch())
    finally:
        trainer.kill()
        stop_server(proc)
    assert 2 * live.REFRESH_S in first, f"the first tab's timers stayed at {sorted(set(first))} s (server log: {tmp_path}/streamlit.log)"
