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
        try:
            deadline = time.monotonic() + 60
            while not all(0 in seen for seen in arrived) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert all(0 in seen for seen in arrived), "the sessions never showed the queued run"
            trainer = subprocess.Popen([sys.executable, "-m", "core.train", "--run-id", str(run_id), "--runs", db, "--quiet",
                                        "--data", str(data)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(EPOCHS in seen for seen in arrived):
                await asyncio.sleep(0.2)
        finally:  # the sessions end on `stop` (a cancelled one may not: Python 3.11's wait_for can swallow it)
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

