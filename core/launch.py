"""Start a stored run as its own training process, so nothing trains inside the caller (the dashboard).

Locally the process is `python -m core.train --run-id N`; it queues itself when the machine's training slot
is taken (core.worker.wait_for_slot), writes its progress to the store, and watches its stop flag.
With a Ray address ($MNIST_LAB_RAY) the run goes to the Ray cluster instead (core.ray_exec).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from core import PROJECT_ROOT, ray_exec
from core.config import TrainConfig
from core.runs import Run, RunStore, StoreError, pid_alive


def log_path(store: RunStore, run_id: int) -> Path:
    """Where the training process of a run writes its output."""
    if store.folder:
        store.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        return store.run_dir(run_id) / "train.log"
    return Path(tempfile.gettempdir()) / f"mnist-lab-run-{run_id}.log"


def start_run(
    store: RunStore, config: TrainConfig, data_root: str | None = None, label: str = "", ray: str | None = None
) -> int:
    """Record a new run and launch its training process, detached from the caller; returns the run id.
    `ray` (default $MNIST_LAB_RAY): a Ray address to run it on the cluster instead of a local subprocess."""
    address = ray or ray_exec.ray_address()
    store.reconcile()  # a slot held by a process that died is freed before this run queues for it
    # This process answers for the run until its training process takes over (Ray's queue owns it on Ray).
    run_id = store.create_run(config, label=label, params=config.parameter_count(), pid=None if address else os.getpid())
    launch(store, run_id, config, data_root, address)
    return run_id


def resume_run(store: RunStore, run_id: int, data_root: str | None = None, ray: str | None = None) -> None:
    """Queue a stopped, interrupted or failed run again and launch it like `start_run`: it waits for the
    machine's slot like any new run, then continues from its last checkpoint at the next epoch boundary."""
    address = ray or ray_exec.ray_address()
    store.reconcile()
    if not store.requeue(run_id, pid=None if address else os.getpid()):
        raise StoreError(f"run {run_id} is {store.get(run_id).status}: only a stopped, interrupted or failed run resumes")
    launch(store, run_id, store.get(run_id).config, data_root, address)


def launch(store: RunStore, run_id: int, config: TrainConfig, data_root: str | None, address: str | None) -> None:
    """Start the training process of a queued run: on Ray when `address` is given, else a local subprocess."""
    if address:
        try:
            ray_exec.submit_run(run_id, store.url, data_root, address, config.device, only_if_queued=True)
        except ray_exec.RayError as e:
            store.finish(run_id, "failed", str(e))
            raise
        return
    cmd = [sys.executable, "-m", "core.train", "--run-id", str(run_id), "--runs", store.url, "--quiet", "--if-queued"]
    if data_root:
        cmd += ["--data", str(data_root)]
    proc = spawn_detached(cmd, log_path(store, run_id))
    store.update(run_id, pid=proc.pid)


def spawn_detached(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start `cmd` in the project folder as its own session (a closed browser tab or a restarted dashboard
    leaves it running), its output appended to `log`; reaped by a thread when it ends (no zombie)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc


def never_started(run: Run) -> bool:
    """True for a queued run whose training process is gone before it began (see its log)."""
    return run.status == "queued" and run.started_at is None and run.pid is not None and not pid_alive(run.pid)


def stop_run(store: RunStore, run_id: int) -> None:
    """Ask the run to stop; it finishes its current batch, keeps its checkpoints and ends 'stopped'."""
    store.request_stop(run_id)
