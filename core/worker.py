"""`execute_run`: the one entry point that trains a stored run, for a subprocess, a test or a Ray worker.

It claims the run, resumes from its last checkpoint when there is one, writes every epoch and
checkpoint to the store, watches the store's stop flag, and leaves the run finished, stopped or failed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable

from core.config import ConfigError
from core.data import DataError, load_mnist
from core.runs import RunStore, StoreError, epochs_table
from core.train import EpochResult, StopRequested, Trainer, TrainingDiverged

POLL_SECONDS = 0.5  # how often progress is written and the stop flag read
LOCAL_SLOTS = int(os.environ.get("MNIST_LAB_LOCAL_SLOTS", "1"))  # runs training at once on one host


class _Throttle:
    """Call fn at most every `seconds`; used so a batch costs no database round trip."""

    def __init__(self, seconds: float):
        self.seconds, self.last = seconds, 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last = now
            return True
        return False


def wait_for_slot(store: RunStore, run_id: int, status: str, max_running: int | None, log: Callable[[str], None]) -> bool:
    """Claim the run (still in `status`), waiting while the host's slots are taken. False when it was
    stopped or taken over while waiting."""
    said = False
    while not store.claim(run_id, os.getpid(), max_running, from_status=(status,)):
        run = store.get(run_id)
        if run.status != status or run.stop_requested:
            log(f"run {run_id} is {run.status} now; not starting it")
            return False
        if not said:
            log(f"run {run_id} queued: waiting for a free training slot on this machine")
            said = True
        store.update(run_id, pid=os.getpid())  # so a dead waiter can be told from a live one
        time.sleep(1.0)
    return True


def execute_run(
    run_id: int,
    store_url: str | None = None,
    data_root: str | None = None,
    *,
    max_running: int | None = LOCAL_SLOTS,
    only_if_queued: bool = False,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Train run `run_id` of the store to its end; returns the final status.

    `only_if_queued`: for processes launched right after the run was created (dashboard, Ray): a run
    that was stopped (or started elsewhere) before this process got going is left as it is. Without
    it, a stopped or interrupted run is resumed, as `python -m core.train --run-id N` promises.
    """
    store = RunStore(store_url)
    run = store.get(run_id)
    if only_if_queued and run.status != "queued":
        log(f"run {run_id} is {run.status}, no longer queued; not starting it")
        return run.status
    if run.status == "finished":
        log(f"run {run_id} is already finished")
        return "finished"
    if run.status == "running":
        raise StoreError(f"run {run_id} is already running (pid {run.pid} on {run.host})")
    if not wait_for_slot(store, run_id, run.status, max_running, log):
        return store.get(run_id).status

    stop_signal = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop_signal.set())

    throttle = _Throttle(POLL_SECONDS)
    stop_cache = [False]

    def batch_hook(done: int, total: int) -> None:
        if on_batch:
            on_batch(done, total)
        if throttle.due():
            store.update(run_id, batch=done, batches_per_epoch=total, heartbeat=time.time())
            stop_cache[0] = store.stop_requested(run_id)

    def should_stop() -> bool:
        return stop_signal.is_set() or stop_cache[0]

    try:
        trainer = Trainer(run.config, load_mnist(data_root))
        if store.has_checkpoint(run_id, "last"):
            state = store.load_checkpoint(run_id, "last")
            if state["config"] != run.config.to_json():
                raise StoreError(f"run {run_id}'s last checkpoint was made with another config; delete it to restart")
            trainer.load_state_dict(state)
            log(f"resuming run {run_id} after epoch {trainer.epochs_done}")
        with store.engine.begin() as c:  # epochs past the checkpoint were not saved with it: redo them
            c.execute(epochs_table.delete().where(epochs_table.c.run_id == run_id, epochs_table.c.epoch > trainer.epochs_done))
        store.update(run_id, epoch=trainer.epochs_done, batch=0, batches_per_epoch=trainer.steps_per_epoch)
        best_before = trainer.best_test_acc
        for result in trainer.epochs(on_batch=batch_hook, should_stop=should_stop):
            state = trainer.state_dict()
            if result.test_acc > best_before:
                best_before = result.test_acc
                store.save_checkpoint(run_id, "best", {**state, "epoch": result.epoch})
            store.save_checkpoint(run_id, "last", state)
            store.add_epoch(run_id, result)
            if on_epoch:
                on_epoch(result)
        status, error = "finished", None
    except StopRequested:
        status, error = "stopped", None
        log(f"run {run_id} stopped after epoch {trainer.epochs_done}; finished epochs and checkpoints are kept")
    except (DataError, ConfigError, StoreError, TrainingDiverged) as e:
        status, error = "failed", str(e)
    except Exception as e:  # noqa: BLE001 - record any crash on the run, then let it propagate
        store.finish(run_id, "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    store.finish(run_id, status, error)
    return status

