"""`execute_run`: the one entry point that trains a stored run, for a subprocess, a test or a Ray worker.

It reads as its steps: check the run may start, wait for a training slot, take over SIGTERM/SIGINT, pick
up where the store and the last checkpoint say the run is, train epoch by epoch (each epoch's row first,
then its checkpoints, so a kill at any instant loses no recorded epoch), and leave the run finished,
stopped or failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator

from core.config import ConfigError, TrainConfig
from core.data import DataError, load_mnist
from core.finetune import initial_weights
from core.health import UpdateWatch, activation_stats
from core.runs import RESUME_KEYS, Run, RunStore, StoreError
from core.train import EpochResult, StopRequested, Trainer, TrainingDiverged

POLL_SECONDS = 0.5  # how often progress and a step point are written and the stop flag read
HEALTH_SECONDS = 3.0  # how often one optimizer step's layer health is measured and written
HEALTH_BATCH = 256  # test images whose activations are summarised at the end of each epoch
LOCAL_SLOTS = int(os.environ.get("MNIST_LAB_LOCAL_SLOTS", "1"))  # runs training at once on one host

Log = Callable[[str], None]


def execute_run(
    run_id: int,
    store: RunStore | str | None = None,
    data_root: str | None = None,
    *,
    max_running: int | None = LOCAL_SLOTS,
    only_if_queued: bool = False,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    log: Log = print,
) -> str:
    """Train run `run_id` of the store (a RunStore, or its URL) to its end; returns the final status.

    `only_if_queued`: for processes launched right after the run was created (dashboard, Ray): a run
    that was stopped (or started elsewhere) before this process got going is left as it is. Without
    it, a stopped or interrupted run is resumed, as `python -m core.train --run-id N` promises.
    """
    store = store if isinstance(store, RunStore) else RunStore(store)
    store.reconcile()  # a run whose process died is interrupted, and so resumable, before we look at it
    run = store.get(run_id)
    early = refuse_to_start(run, only_if_queued, log)
    if early:
        return early
    if not wait_for_slot(store, run_id, run.status, max_running, log):
        return store.get(run_id).status
    with stop_signals() as signalled:
        status, error = train(store, store.get(run_id), data_root, signalled, on_epoch, on_batch, log)
    store.finish(run_id, status, error)
    return status


def refuse_to_start(run: Run, only_if_queued: bool, log: Log) -> str | None:
    """The status to return without training (a run finished, or no longer queued when that was asked),
    else None. A run that is running elsewhere is an error."""
    if only_if_queued and run.status != "queued":
        log(f"run {run.id} is {run.status}, no longer queued; not starting it")
        return run.status
    if run.status == "finished":
        log(f"run {run.id} is already finished")
        return "finished"
    if run.status == "running":
        raise StoreError(f"run {run.id} is already running (pid {run.pid} on {run.host})")
    return None


def wait_for_slot(store: RunStore, run_id: int, status: str, max_running: int | None, log: Log) -> bool:
    """Claim the run (still in `status`), waiting while the host's slots are taken. False when it was
    stopped or taken over while waiting."""
    said = False
    while not store.claim(run_id, os.getpid(), max_running, from_status=(status,)):
        run = store.get(run_id)
        if run.status != status or run.stop_requested:
            log(f"run {run_id} is {run.status} now; not starting it")
            return False
        if not said:
            store.update(run_id, pid=os.getpid(), host=socket.gethostname())  # a dead waiter is told from a live one
            log(f"run {run_id} queued: waiting for a free training slot on this machine")
            said = True
        time.sleep(1.0)
        store.reconcile()  # a slot held by a dead process is freed
    return True


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT (Ctrl-C) set the yielded event instead of killing the process, so the run stops
    after its current batch; the previous handlers come back afterwards. Only in the main thread."""
    signalled = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: signalled.set())
    try:
        yield signalled
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ProgressReporter:
    """Per batch: at most every POLL_SECONDS, write the progress, the heartbeat and a step point (train loss
    and accuracy over the batches since the last one), and read the stop flag."""

    def __init__(self, store: RunStore, run_id: int, trainer: Trainer, signalled: threading.Event,
                 on_batch: Callable[[int, int], None] | None):
        self.store, self.run_id, self.trainer, self.signalled, self.on_batch = store, run_id, trainer, signalled, on_batch
        self.last_write = time.monotonic()  # the first point comes after POLL_SECONDS of batches
        self.last_health = self.last_write - HEALTH_SECONDS + min(1.0, HEALTH_SECONDS)  # the first after a second
        self.watch = UpdateWatch(trainer.model)
        self.stop_asked_in_store = False

    def batch_done(self, done: int, total: int) -> None:
        if self.on_batch:
            self.on_batch(done, total)
        now = time.monotonic()
        if self.watch.armed:  # the step after arming: measure it
            self.store.record_layer_health(self.run_id, *self.trainer.position(), self.watch.measure())
        elif now - self.last_health >= HEALTH_SECONDS and done < total:
            self.last_health = now
            self.watch.arm()
        if now - self.last_write >= POLL_SECONDS:
            self.last_write = now
            self.store.record_progress(self.run_id, done, total, self.trainer.window())
            self.stop_asked_in_store = self.store.stop_requested(self.run_id)

    def should_stop(self) -> bool:
        return self.signalled.is_set() or self.stop_asked_in_store


def train(
    store: RunStore, run: Run, data_root: str | None, signalled: threading.Event,
    on_epoch: Callable[[EpochResult], None] | None, on_batch: Callable[[int, int], None] | None, log: Log,
) -> tuple[str, str | None]:
    """Train the claimed run from where it is to its last epoch; returns (final status, error message)."""
    trainer = None
    try:
        resuming = store.has_checkpoint(run.id, "last")  # its weights replace any init weights
        trainer = Trainer(run.config, load_mnist(data_root), None if resuming else initial_weights(run.config, store))
        resume(store, run, trainer, log)
        store.update(run.id, epoch=trainer.epochs_done, batch=0, batches_per_epoch=trainer.steps_per_epoch)
        progress = ProgressReporter(store, run.id, trainer, signalled, on_batch)
        best_test_acc = trainer.best_test_acc
        for result in trainer.epochs(on_batch=progress.batch_done, should_stop=progress.should_stop):
            record_epoch(store, run.id, trainer, result, improved=result.test_acc > best_test_acc)
            best_test_acc = max(best_test_acc, result.test_acc)
            if on_epoch:
                on_epoch(result)
        return "finished", None
    except StopRequested:
        log(f"run {run.id} stopped after epoch {trainer.epochs_done}; finished epochs and checkpoints are kept")
        return "stopped", None
    except (DataError, ConfigError, StoreError, TrainingDiverged) as e:
        return "failed", str(e)
    except Exception as e:  # noqa: BLE001 - record any crash on the run, then let it propagate
        store.finish(run.id, "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        raise


def resume(store: RunStore, run: Run, trainer: Trainer, log: Log) -> None:
    """Load the run's last checkpoint into the trainer, and make the store's epochs agree with it.

    Epoch rows are written before the checkpoint, so the store may hold one epoch more than the
    checkpoint: that epoch is trained again (each epoch replays exactly from its seed), recorded once.
    A checkpoint one epoch ahead of the store (written by code that saved it first) brings its epoch's
    row with it. Files that are not this run's, and half-written ones, are never read."""
    for f in store.clean_temporary(run.id):
        log(f"removed {f.name}, a checkpoint half-written by a killed process")
    for folder in store.stale_checkpoint_folders(run.id):
        log(f"ignoring {folder}: checkpoints of another run numbered {run.id} (a deleted run, or another store's)")
    if not store.has_checkpoint(run.id, "last"):
        if run.saved_epoch > 0:
            raise StoreError(
                f"run {run.id} saved a checkpoint after epoch {run.saved_epoch}, but it is missing from "
                f"{store.run_dir(run.id) if store.folder else store.safe_url}; its recorded epochs are kept. Restore the "
                "checkpoint, or start a new run with these settings")
        store.truncate_epochs(run.id, 0)
        return
    state = store.load_checkpoint(run.id, "last", RESUME_KEYS)
    # Compared as parsed configs: a checkpoint written before a setting existed reads it as its default.
    if TrainConfig.from_json(state["config"]) != run.config:
        raise StoreError(f"run {run.id}'s last checkpoint was made with another config; delete it to restart")
    trainer.load_state_dict(state)
    log(f"resuming run {run.id} after epoch {trainer.epochs_done}")
    store.truncate_epochs(run.id, trainer.epochs_done)
    recorded = {e["epoch"] for e in store.epochs(run.id)}
    if trainer.epochs_done and trainer.epochs_done not in recorded and "result" in state:
        store.add_epoch(run.id, EpochResult(**state["result"]))


def record_epoch(store: RunStore, run_id: int, trainer: Trainer, result: EpochResult, improved: bool) -> None:
    """The epoch's row and activation summary, then the best checkpoint (when the test accuracy improved),
    then the last one."""
    store.add_epoch(run_id, result)
    store.record_activations(run_id, result.epoch, activation_stats(trainer.model, trainer.data.test_x[:HEALTH_BATCH]))
    state = {**trainer.state_dict(), "result": dataclasses.asdict(result)}
    if improved:
        store.save_checkpoint(run_id, "best", {**state, "epoch": result.epoch})
    store.save_checkpoint(run_id, "last", state)
