"""How long runs take: the seconds an epoch of a config takes on this machine, and the queue's position and
estimated start and end of each active run (for the Train page), over as many training slots as the machine
(MNIST_LAB_LOCAL_SLOTS) or the Ray cluster (its CPUs / MNIST_LAB_RAY_CPUS) offers."""

from __future__ import annotations

import heapq
import statistics
import time
from dataclasses import dataclass

from core import ray_exec
from core.config import TrainConfig
from core.reference import reference_for
from core.runs import Run, RunStore
from core.worker import LOCAL_SLOTS

MNIST_TRAIN, MNIST_TEST = 60_000, 10_000


def images(config: TrainConfig) -> int:
    """Images an epoch touches: its training images, plus its test images at a fifth of the cost (no backward)."""
    train = min(config.train_limit or MNIST_TRAIN, MNIST_TRAIN)
    test = min(config.test_limit or MNIST_TEST, MNIST_TEST)
    return train + test // 5


SCALE_RANGE = 4.0  # a run with up to this many times more or fewer images is a fair yardstick: scaled linearly


def epoch_seconds(store: RunStore, config: TrainConfig) -> float | None:
    """Seconds an epoch of `config` should take here: from the newest run of the same variant in this store
    that recorded epochs with a comparable number of images (its mean epoch time, scaled by images), else from
    the shipped reference run (trained on one core), else from any run of the variant here; None when neither
    exists. A tiny run's epoch is mostly fixed costs: scaled up 100x it would promise hours for a full epoch."""
    far = None
    for run in store.list_runs(search=config.model, limit=50):
        if run.model == config.model and run.epoch > 0:
            rows = store.epochs(run.id)
            seconds = [r["seconds"] for r in rows if r["seconds"]]
            if seconds:
                ratio = images(config) / images(run.config)
                scaled = sum(seconds) / len(seconds) * ratio
                if 1 / SCALE_RANGE <= ratio <= SCALE_RANGE:
                    return scaled
                far = scaled if far is None else far
    shipped = reference_for(config)
    if shipped is None:
        return far
    info = shipped[1]
    ref = TrainConfig.from_dict(info["config"])
    return info["wall_seconds"] / max(1, len(info["epochs"])) * images(config) / images(ref)


@dataclass
class QueueEntry:
    run: Run
    position: int | None  # 1 = the next to start; None for a running run
    starts_in: float | None  # seconds from now (0 for a running run); None when unknown
    ends_in: float | None


def remaining_seconds(store: RunStore, run: Run) -> float | None:
    """Seconds a run still needs: its own recorded epoch times when it has some, else the estimate."""
    rows = store.epochs(run.id) if run.epoch else []
    seconds = [r["seconds"] for r in rows if r["seconds"]]
    per_epoch = sum(seconds) / len(seconds) if seconds else epoch_seconds(store, run.config)
    if per_epoch is None:
        return None
    done = run.epoch + (run.batch / run.batches_per_epoch if run.batches_per_epoch else 0.0)
    return max(0.0, (run.config.epochs - done) * per_epoch)


def overhead_seconds(store: RunStore, recent: int = 20) -> float:
    """Seconds a run holds its training slot beyond its epochs (loading MNIST, building the model, the last
    writes), and, when the next run was already waiting, the time the slot then stood idle (the next run's
    process still importing PyTorch): the median over this store's newest finished runs, 0 when there are none.
    A short run's slot time is mostly this (tests/load_class.py measures how far estimated starts were off)."""
    runs = sorted((r for r in store.list_runs(status="finished", limit=recent) if r.started_at and r.ended_at),
                  key=lambda r: r.started_at)
    held = []
    for i, run in enumerate(runs):
        following = runs[i + 1] if i + 1 < len(runs) else None
        spent = sum(r["seconds"] or 0.0 for r in store.epochs(run.id))
        extra = max(0.0, run.ended_at - run.started_at - spent)
        if following is not None and following.created_at < run.ended_at <= following.started_at:
            extra += following.started_at - run.ended_at  # it was waiting: the slot idled until it claimed it
        held.append(extra)
    return statistics.median(held) if held else 0.0


def queue(store: RunStore, slots: int = 1) -> list[QueueEntry]:
    """The running runs, then the queued ones in the order they will start (oldest first), each with when it
    should start and end: queued runs take the first slot to come free, and hold it for their epochs plus
    the overhead a run here has (`overhead_seconds`)."""
    overhead = overhead_seconds(store)
    running = store.list_runs(status="running")
    waiting = sorted(store.list_runs(status="queued"), key=lambda r: r.id)
    free_at = []  # when each slot comes free, seconds from now
    entries = []
    for run in running:
        left = remaining_seconds(store, run)
        entries.append(QueueEntry(run, None, 0.0, left))
        free_at.append(left if left is not None else float("inf"))
    free_at += [0.0] * max(0, slots - len(free_at))
    heapq.heapify(free_at)
    for position, run in enumerate(waiting, 1):
        start = heapq.heappop(free_at) if free_at else float("inf")
        need = remaining_seconds(store, run)
        end = start + need + overhead if need is not None else float("inf")
        heapq.heappush(free_at, end)
        entries.append(QueueEntry(run, position, None if start == float("inf") else start,
                                  None if end == float("inf") else end))
    return entries


def describe(seconds: float | None) -> str:
    """'~40 s', '~3 min', '~1.2 h', or 'unknown'."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"~{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"~{round(seconds / 60)} min"
    return f"~{seconds / 3600:.1f} h"


def training_slots(address: str | None = None) -> int:
    """Runs that train at once: MNIST_LAB_LOCAL_SLOTS on this machine; on Ray (`address`, default $MNIST_LAB_RAY)
    the cluster's CPUs over the CPUs a run asks for (at least 1), or the local figure when it cannot be reached."""
    address = address or ray_exec.ray_address()
    if not address:
        return LOCAL_SLOTS
    try:
        cpus = ray_exec.connect(address).cluster_resources().get("CPU", 0)
    except ray_exec.RayError:
        return LOCAL_SLOTS
    return max(1, int(cpus // ray_exec.CPUS_PER_RUN))


def entry_of(entries: list[QueueEntry], run_id: int) -> QueueEntry | None:
    """The queue's entry of a run (None when it is neither running nor queued)."""
    return next((e for e in entries if e.run.id == run_id), None)


def owned_by(entries: list[QueueEntry], owner: str) -> list[QueueEntry]:
    """A user's entries, in queue order (their place in the whole class's queue)."""
    return [e for e in entries if e.run.owner == owner]


def clock(seconds_from_now: float | None, now: float | None = None) -> str:
    """The wall-clock time (HH:MM, this machine's zone) that many seconds from now, or 'unknown'."""
    if seconds_from_now is None:
        return "unknown"
    return time.strftime("%H:%M", time.localtime((time.time() if now is None else now) + seconds_from_now))
