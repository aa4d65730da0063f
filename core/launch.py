"""Start a stored run as its own training process, so nothing trains inside the caller (the dashboard).

Locally the process waits for its turn without PyTorch (`python -m core.slotwait`), then becomes
`python -m core.train --run-id N`, which takes the machine's training slot when it is free
(core.worker.wait_for_slot), writes its progress to the store, and watches its stop flag.
With a Ray address ($MNIST_LAB_RAY) the run goes to the Ray cluster instead (core.ray_exec).

Starting, stopping, resuming and deleting take the acting user (core.identity.User; None = identity off, all
allowed): only a run's owner or a teacher may change it, and a user may have at most RUNS_PER_USER runs
queued or training at once. The same rules hold on Ray: they are checked here, before anything is submitted.
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
from core.identity import NotAllowed, User, check_may_change, check_may_start, owner_of
from core.runs import Run, RunStore, StoreError, pid_alive

# runs one user may have queued or training at once (0 = no cap; teachers and identity-off are never capped)
RUNS_PER_USER = int(os.environ.get("MNIST_LAB_RUNS_PER_USER", "0") or 0)


class QueueFull(NotAllowed):
    """The user already has their share of the queue; the message says how to get a place."""


def log_path(store: RunStore, run_id: int) -> Path:
    """Where the training process of a run writes its output."""
    if store.folder:
        store.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        return store.run_dir(run_id) / "train.log"
    return Path(tempfile.gettempdir()) / f"mnist-lab-run-{run_id}.log"


def start_run(
    store: RunStore, config: TrainConfig, data_root: str | None = None, label: str = "", ray: str | None = None,
    user: User | None = None, runs_per_user: int | None = None,
) -> int:
    """Record a new run of `user` and launch its training process, detached from the caller; returns the run id.
    `ray` (default $MNIST_LAB_RAY): a Ray address to run it on the cluster instead of a local subprocess.
    QueueFull when the user already has `runs_per_user` (default RUNS_PER_USER) runs queued or training."""
    check_may_start(user)
    address = ray or ray_exec.ray_address()
    store.reconcile()  # a slot held by a process that died is freed before this run queues for it
    owner = owner_of(user)
    # This process answers for the run until its training process takes over (Ray's queue owns it on Ray).
    run_id = store.create_run(config, label=label, params=config.parameter_count(), pid=None if address else os.getpid(),
                              owner=owner)
    cap = RUNS_PER_USER if runs_per_user is None else runs_per_user
    # Counted after the insert, over the runs up to this one: of two made at once, the later is the one refused.
    if owner and cap and not user.teacher and store.active_count(owner, up_to=run_id) > cap:
        store.delete_run(run_id)
        raise QueueFull(queue_full_message(owner, cap))
    launch(store, run_id, config, data_root, address)
    return run_id


def queue_full_message(owner: str, cap: int) -> str:
    return (f"{owner} already has {cap} run{'s' if cap != 1 else ''} queued or training, the most one user may have "
            "here at once: wait for one to end, or stop one")


def resume_run(
    store: RunStore, run_id: int, data_root: str | None = None, ray: str | None = None, user: User | None = None,
    runs_per_user: int | None = None,
) -> None:
    """Queue a stopped, interrupted or failed run again and launch it like `start_run`: it waits for the
    machine's slot like any new run, then continues from its last checkpoint at the next epoch boundary.
    Only its owner or a teacher may (NotAllowed); it counts against its owner's share of the queue."""
    address = ray or ray_exec.ray_address()
    store.reconcile()
    run = store.get(run_id)
    check_may_change(user, run.owner, f"run {run_id}", "resume")
    cap = RUNS_PER_USER if runs_per_user is None else runs_per_user
    if run.owner and user is not None and cap and not user.teacher and store.active_count(run.owner) >= cap:
        raise QueueFull(queue_full_message(run.owner, cap))
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
    cmd = [sys.executable, "-m", "core.slotwait", "--run-id", str(run_id), "--runs", store.url]
    if data_root:
        cmd += ["--data", str(data_root)]
    proc = spawn_detached(cmd, log_path(store, run_id))  # the same pid trains the run when its turn comes
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


def stop_run(store: RunStore, run_id: int, user: User | None = None) -> None:
    """Ask the run to stop; it finishes its current batch, keeps its checkpoints and ends 'stopped'.
    Only its owner or a teacher may (NotAllowed)."""
    check_may_change(user, store.get(run_id).owner, f"run {run_id}", "stop")
    store.request_stop(run_id)


def delete_run(store: RunStore, run_id: int, user: User | None = None) -> None:
    """Delete an ended run with its epochs and checkpoints. Only its owner or a teacher may (NotAllowed);
    a queued or training run is stopped first (StoreError)."""
    run = store.get(run_id)
    check_may_change(user, run.owner, f"run {run_id}", "delete")
    if run.active:
        raise StoreError(f"run {run_id} is {run.status}: stop it before deleting it")
    store.delete_run(run_id)
