"""The server reruns the live fragments of every session watching a run (dashboard/push.py): the status line as
soon as an epoch is recorded, and the progress and the charts at a pace, not only when the session's own fragment
timers ask. Real server, real trainer process, real websocket sessions speaking Streamlit's protocol
(tests/load_sessions.py) that never answer their timers: whatever they see after the page's first run, the server
sent by itself.
"""

from __future__ import annotations

import asyncio
import os
import re
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
PROGRESS = re.compile(rb"running \xc2\xb7 epoch (\d+)/\d+, batch (\d+)/\d+")  # the status line's progress text
CHARTS = b"data:image/svg+xml;base64,"  # a live chart (an SVG picture) in a message
ENDED = b'"text":"Accuracy"'  # the Plotly chart of an ended run: the whole page was drawn again after the end


def test_sessions_that_never_answer_their_timers_see_every_epoch_at_once_and_progress_and_charts_at_a_pace(tmp_path):
    data = make_synthetic_mnist(tmp_path / "mnist", n_train=40000, n_test=500)  # epochs ~3 s: two chart paces and more
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(db)
    run_id = store.create_run(TrainConfig(model="Model2", epochs=EPOCHS, test_limit=500))
    proc, base = start_streamlit(ROOT, {**os.environ, "MNIST_LAB_DB": db, "MNIST_ROOT": str(data)}, tmp_path)
    url = base.replace("http://", "ws://") + "/_stcore/stream"
    arrived: list[dict[int, float]] = [{}, {}]
    frames: list[list[tuple[float, bytes]]] = [[], []]
    trainer = None
    started = 0.0

    async def watch() -> None:
        nonlocal trainer, started
        stop = asyncio.Event()
        tasks = [asyncio.create_task(session(url, f"run={run_id}", seen, stop, [0], timers_on=False, frames=got))
                 for seen, got in zip(arrived, frames, strict=True)]
        try:
            deadline = time.monotonic() + 60
            while not all(0 in seen for seen in arrived) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert all(0 in seen for seen in arrived), "the sessions never showed the queued run"
            started = time.time()
            trainer = subprocess.Popen([sys.executable, "-m", "core.train", "--run-id", str(run_id), "--runs", db, "--quiet",
                                        "--data", str(data)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(EPOCHS in seen for seen in arrived):
                await asyncio.sleep(0.2)
            deadline = time.monotonic() + 15  # the page's own redraw after the end comes a pace later
            while time.monotonic() < deadline and not all(any(ENDED in data for _, data in got) for got in frames):
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
    for seen, got in zip(arrived, frames, strict=True):  # without the push, nothing after the first run reaches a
        log = f"(server log: {tmp_path}/streamlit.log)"  # session that sends no timer reruns
        assert sorted(seen) == list(range(EPOCHS + 1)), f"epochs shown: {sorted(seen)} {log}"
        # between epochs, the server pushes where the epoch is (every live.REFRESH_S for a lone watcher) ...
        progress = {(int(m[1]), int(m[2])): round(t - started, 2) for t, data in got if t > started
                    for m in PROGRESS.finditer(data)}
        epochs_at = {e: round(t - started, 2) for e, t in seen.items()}
        between = [t for t in progress.values() if all(abs(t - at) > 0.1 for at in epochs_at.values())]
        assert len(between) >= 2, f"progress lines pushed: {progress}; epochs shown at {epochs_at} {log}"
        # ... and the charts' new step points (every live.CHART_S), never faster than their pace
        pictures = [t for t, data in got if t > started and CHARTS in data]  # three a redraw, one message each
        charts = [t for i, t in enumerate(pictures) if i == 0 or t - pictures[i - 1] > 0.5]
        at = [round(t - started, 2) for t in charts]
        assert len(charts) >= 2, f"charts pushed {len(charts)} time(s) while training, at {at}; epochs shown at {epochs_at} {log}"
        assert len(charts) <= (seen[EPOCHS] - started) / 3.0 + 2, f"charts pushed {len(charts)} times {log}"
        # and once the run has ended, the whole page (its Plotly charts, Resume or Delete) without a timer
        assert any(ENDED in data for t, data in got if t >= seen[EPOCHS]), f"the page was not drawn again after the end {log}"


QUEUE_LIST = rb"run (\d+) queued #(\d+), starts in"  # the queue list's caption (Train.active_runs)
QUEUED_LINE = b"in the queue; starts in"  # a queued run's status line
WORDS = re.compile(rb"#\d+[^#()]{0,40}?starts in [^()]{1,20}\([^)]{1,20}\)")  # a place, its start and its clock


def test_a_queue_is_redrawn_when_what_it_says_moves_not_at_every_pace(tmp_path):
    """A queued run's status line and the queue's list say where the runs stand and when they start: the server
    pushes them again when those words move (another run joins the queue), not at every pace while they stand
    still (before: the list every CHART_S and the status line every REFRESH_S, whatever it said)."""
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(db)
    env = {**os.environ, "MNIST_LAB_DB": db, "MNIST_LAB_LOCAL_SLOTS": "1"}
    first = store.create_run(TrainConfig(model="Model2", epochs=1))  # this process is its live creator: it stays queued
    store.create_run(TrainConfig(model="Model2", epochs=1))  # so the first's place and start stand still
    proc, base = start_streamlit(ROOT, env, tmp_path)
    url = base.replace("http://", "ws://") + "/_stcore/stream"
    frames: list[tuple[float, bytes]] = []
    marks: dict[str, float] = {}

    async def watch() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(session(url, f"run={first}", {}, stop, [0], timers_on=False, frames=frames))
        try:
            deadline = time.monotonic() + 60
            while not any(re.search(QUEUE_LIST, d) for _, d in frames) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # the first page's last messages
            marks["still"] = time.time()
            await asyncio.sleep(8.0)  # more than two of the list's paces (live.CHART_S) and eight of the status line's
            marks["moved"] = time.time()
            store.create_run(TrainConfig(model="Model2", epochs=1))  # a third run joins: the list now says more
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not any(
                    t > marks["moved"] and b"queued #2" in d and b"run 3 queued" in d for t, d in frames):
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(task)

    try:
        asyncio.run(watch())
    finally:
        stop_server(proc)
    log = f"(server log: {tmp_path}/streamlit.log)"
    assert marks, f"the page never showed the queue {log}"
    said: dict[str, tuple] = {}  # what the list and the status line said when last drawn
    again = []  # drawn again in the still window with the same words (the clock may turn a minute: new words)
    for t, d in frames:
        if t >= marks["moved"]:
            break
        kind = "list" if re.search(QUEUE_LIST, d) else "status" if QUEUED_LINE in d else None
        if kind:
            words = tuple(WORDS.findall(d))
            if t >= marks["still"] and said.get(kind) == words:
                again.append((kind, words))
            said[kind] = words
    assert len(said) == 2, f"the page showed {sorted(said)} of the list and the queued status line {log}"
    assert not again, f"redrawn {len(again)} time(s) in 8 s though what they say had not moved: {again} {log}"
    assert any(t > marks["moved"] and b"run 3 queued" in d for t, d in frames), f"the list never showed run 3 {log}"
