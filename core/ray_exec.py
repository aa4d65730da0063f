"""Run a stored run on a Ray cluster instead of a local subprocess.

Each run is one detached Ray actor that asks for its CPUs (and a GPU when the cluster has one) and calls
core.worker.execute_run, the same entry point as a local training process. When the cluster is full, Ray
queues the actor until resources free up: there is no queue of our own. Stop goes through the store's
flag as locally; a worker that dies leaves the run 'running' with a dead pid (same host) or a stale
heartbeat (other hosts), which RunStore.reconcile marks 'interrupted', and it resumes from its checkpoint.

    MNIST_LAB_RAY=auto             # join the cluster of `ray start` on this machine
    MNIST_LAB_RAY=ray://head:10001 # a remote cluster (its nodes run this project's image)
    MNIST_LAB_RAY=local            # a private Ray instance started by this process
"""

from __future__ import annotations

import os

from core import PROJECT_ROOT

NAMESPACE = "mnist-lab"
CPUS_PER_RUN = float(os.environ.get("MNIST_LAB_RAY_CPUS", "1"))


class RayError(RuntimeError):
    """Ray is not installed or the cluster cannot be reached; the message says what to do."""


def ray_address() -> str | None:
    """The configured Ray address ($MNIST_LAB_RAY), or None for local subprocesses."""
    address = os.environ.get("MNIST_LAB_RAY", "").strip()
    return None if address.lower() in ("", "none", "off") else address


def connect(address: str, num_cpus: int | None = None):
    """ray.init once per process; 'local' starts a private instance (num_cpus: its size)."""
    try:
        import ray
    except ImportError:
        raise RayError("Ray is not installed: pip install 'ray[tune]==2.60.0', or unset MNIST_LAB_RAY") from None
    if ray.is_initialized():
        return ray
    # workers import `core` from the project; on other nodes the same path must hold the project (one image)
    env = {"env_vars": {"PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"}}
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, namespace=NAMESPACE, runtime_env=env,
                     log_to_driver=False)
        else:
            ray.init(address=address, namespace=NAMESPACE, runtime_env=env, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayError(f"cannot reach the Ray cluster at {address!r}: {' '.join(str(e).split())[:300]}") from None
    return ray


def _worker_class(ray):
    @ray.remote(max_restarts=0)
    class RunWorker:
        """One run's training process on the cluster; exits when the run ends."""

        def train(self, run_id: int, store_url: str, data_root: str | None, only_if_queued: bool) -> str:
            from core.worker import execute_run

            try:
                return execute_run(run_id, store_url, data_root, max_running=None, only_if_queued=only_if_queued)
            finally:
                ray.actor.exit_actor()

    return RunWorker


def submit_run(
    run_id: int, store_url: str, data_root: str | None, address: str, device: str = "auto", only_if_queued: bool = False
) -> None:
    """Start run `run_id` of the store on the Ray cluster at `address` and return at once
    (`only_if_queued`: see core.worker.execute_run)."""
    ray = connect(address)
    gpus = 1 if device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    worker = _worker_class(ray).options(
        name=f"run-{run_id}-{os.getpid()}",
        lifetime="detached",  # keeps training when the dashboard or CLI that submitted it exits
        num_cpus=CPUS_PER_RUN,
        num_gpus=gpus,
    ).remote()
    worker.train.remote(run_id, store_url, data_root, only_if_queued)
