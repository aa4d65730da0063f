"""How many sessions can watch one live run on the Train page, measured at the server: a bounded load measurement,
not a test.

tests/load_tabs.py opens real Chromium tabs, which on this 2-core machine also draw every page next to the server
and the trainer (20 tabs: ~1.5 cores of browsers), so its lags measure the co-located browsers as much as the
dashboard. This script stands in for the students' own machines: each session is a websocket client speaking
Streamlit's protocol (what the page's JavaScript sends): it asks for /Train?run=1, answers the server's
`auto_rerun` messages the way the browser's fragment timers do (a fragment rerun every `interval` seconds), and
notes when each "N epoch(s) recorded" caption arrives. Nothing is drawn. Reports the lag of each epoch per
session (arrived - its row appeared in the store), the server's CPU and peak RSS, from /proc.

    MNIST_ROOT=/work/shared .venv/bin/python tests/load_sessions.py --sessions 20 --json after.json
    ... --root /tmp/other-checkout   # serve another checkout of the project (e.g. the previous commit)
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.load_tabs import emit, lag_summary, proc_sample, start_server, start_trainer, watched_run_args  # noqa: E402

EPOCHS_SHOWN = re.compile(rb"(\d+) epoch\(s\) recorded")


async def session(url: str, query: str, arrived: dict[int, float], stop: asyncio.Event, reruns: list[int],
                  timers_on: bool = True, frames: list[tuple[float, bytes]] | None = None) -> None:
    """One watching session: the page's first run, then fragment reruns on the timers the server asks for
    (`timers_on`; without them, only what the server sends by itself arrives). `frames`: every message received
    is noted there, (time.time(), bytes)."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    def rerun(fragment_id: str = "") -> bytes:
        msg = BackMsg()
        msg.rerun_script.query_string = query
        msg.rerun_script.page_name = "Train"
        if page_hash:
            msg.rerun_script.page_script_hash = page_hash
        if fragment_id:
            msg.rerun_script.fragment_id = fragment_id
            msg.rerun_script.is_auto_rerun = True
        return msg.SerializeToString()

    page_hash = ""
    timers: dict[str, asyncio.Task] = {}

    async def tick(ws, fragment_id: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await ws.send(rerun(fragment_id))
            reruns[0] += 1

    async with websockets.connect(url, subprotocols=["streamlit"], max_size=None, open_timeout=60) as ws:
        await ws.send(rerun())
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            now = time.time()
            if frames is not None:
                frames.append((now, data))
            for m in EPOCHS_SHOWN.finditer(data):
                arrived.setdefault(int(m[1]), now)
            msg = ForwardMsg()
            msg.ParseFromString(data)
            kind = msg.WhichOneof("type")
            if kind == "new_session" and msg.new_session.page_script_hash:
                page_hash = msg.new_session.page_script_hash
            elif kind == "auto_rerun" and timers_on:
                old = timers.pop(msg.auto_rerun.fragment_id, None)
                if old:
                    old.cancel()
                timers[msg.auto_rerun.fragment_id] = asyncio.create_task(
                    tick(ws, msg.auto_rerun.fragment_id, msg.auto_rerun.interval))
            elif kind == "stop_auto_rerun":
                for t in timers.values():
                    t.cancel()
                timers.clear()
        for t in timers.values():
            t.cancel()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sessions", type=int, default=20, help="sessions watching the run")
    watched_run_args(p)
    a = p.parse_args()
    sys.path.insert(0, str(a.root.resolve()))
    from core.config import TrainConfig
    from core.runs import RunStore

    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-sessions-"))
    db_url = f"sqlite:///{folder / 'runs.db'}"
    store = RunStore(db_url)
    run_id = store.create_run(TrainConfig(model="Model2", epochs=a.epochs, train_limit=a.train_limit, test_limit=1000))
    server, base = start_server(a.root, db_url, folder)
    url = base.replace("http://", "ws://") + "/_stcore/stream"
    arrived: list[dict[int, float]] = [{} for _ in range(a.sessions)]
    written: dict[int, float] = {}
    samples: list[tuple[float, float, int]] = []
    reruns = [0]
    done = threading.Event()
    trainer = None

    def poll() -> None:
        while not done.is_set():
            now = time.time()
            for r in store.epochs(run_id):
                written.setdefault(r["epoch"], now)
            samples.append((time.monotonic(), *proc_sample(server.pid)))
            time.sleep(0.1)

    async def run_all() -> tuple[float, float]:
        nonlocal trainer
        stop = asyncio.Event()
        tasks = [asyncio.create_task(session(url, f"run={run_id}", arrived[i], stop, reruns)) for i in range(a.sessions)]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and not all(0 in s for s in arrived):
            await asyncio.sleep(0.2)
        open_s = time.monotonic() - t0
        print(f"{sum(0 in s for s in arrived)} of {a.sessions} sessions showed the run after {open_s:.1f} s", flush=True)
        trainer = start_trainer(a, run_id, db_url, folder)
        t_train = time.monotonic()
        while trainer.poll() is None and time.monotonic() - t_train < a.budget:
            await asyncio.sleep(0.5)
        last = max(written, default=0)
        catch_up = time.monotonic() + 10
        while time.monotonic() < catch_up and not all(last in s for s in arrived):
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return open_s, t_train

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        open_s, t_train = asyncio.run(run_all())
    finally:
        done.set()
        watcher.join()
        if trainer and trainer.poll() is None:
            trainer.terminate()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()

    lags = [s[e] - w for s in arrived for e, w in written.items() if e in s]
    per_session = [max((s[e] - w for e, w in written.items() if e in s), default=None) for s in arrived]
    missed = sum(1 for s in arrived for e in written if e not in s)
    window = [x for x in samples if x[0] >= t_train]
    span = window[-1][0] - window[0][0] if len(window) > 1 else None
    epoch_s = [written[e] - written[e - 1] for e in sorted(written) if e - 1 in written]
    report = {
        "sessions": a.sessions,
        "open_s": round(open_s, 1),
        "epochs_written": len(written),
        "seconds_per_epoch": round(statistics.mean(epoch_s), 2) if epoch_s else None,
        "epoch_lag_s": lag_summary(lags),
        "session_epochs_missed": missed,
        "sessions_within_2s": sum(1 for m in per_session if m is not None and m <= 2.0) if not missed else None,
        "server_cpu_cores": round((window[-1][1] - window[0][1]) / span, 2) if span else None,
        "server_rss_mb_peak": round(max(x[2] for x in samples) / 2**20) if samples else None,
        "fragment_reruns_sent": reruns[0],
        "log": str(folder / "streamlit.log"),
    }
    emit(report, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
