"""Load test of a class on one machine (issue 17): N users each start a tiny run within a minute, through
core.launch.start_run with their own identity (what the Train page's Start calls), on loopback only.

    python tests/load_class.py --users 30 --within 30 --slots 1      # bounded: --timeout seconds in all

Checks, and prints as figures: every run is queued or trained and none lost (all N end 'finished'); none mixed
(each run's owner is the user who started it, its label says so, it has its own epochs); the per-user cap
(MNIST_LAB_RUNS_PER_USER-style, here --cap) refuses a second run while the first is active; queue positions
are right (runs start in the order of their positions, never more than --slots at once); how far the
estimated start was from the real one; RSS of this process (standing in for the dashboard server) before and
after, and of the training processes (each queued run waits in its own process) at their peak.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import estimate  # noqa: E402
from core.config import TrainConfig  # noqa: E402
from core.identity import settings, user_named  # noqa: E402
from core.launch import QueueFull, start_run  # noqa: E402
from core.runs import RunStore  # noqa: E402
from tests.conftest import make_synthetic_mnist  # noqa: E402

TINY = TrainConfig(epochs=1, batch_size=64, train_limit=256, test_limit=64, device="cpu")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def available_mb() -> float:
    """The machine's MemAvailable in MB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--users", type=int, default=30)
    p.add_argument("--within", type=float, default=30.0, help="seconds over which the users arrive (evenly, shuffled)")
    p.add_argument("--slots", type=int, default=1, help="runs training at once (MNIST_LAB_LOCAL_SLOTS)")
    p.add_argument("--cap", type=int, default=1, help="runs one user may have queued or training (0 = none)")
    p.add_argument("--timeout", type=float, default=540.0, help="seconds for the whole test")
    p.add_argument("--min-free-mb", type=float, default=3000.0,
                   help="a user who arrives when the machine has less memory available gives up (counted, a failure)")
    p.add_argument("--runs", default=None, help="run store URL (default: a fresh SQLite file in a temp folder)")
    args = p.parse_args(argv)

    os.environ["MNIST_LAB_LOCAL_SLOTS"] = str(args.slots)  # read by the training processes this starts
    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-class-"))
    data = make_synthetic_mnist(folder / "mnist", n_train=256, n_test=64)
    store = RunStore(args.runs or f"sqlite:///{folder / 'runs.db'}")
    config = settings({"MNIST_LAB_TRUST_PROXY": "1", "MNIST_LAB_TEACHERS": "teacher"})
    users = [user_named(f"student{i:02d}", config) for i in range(args.users)]
    rss_before = rss_mb(os.getpid())
    print(f"{args.users} users, arriving over {args.within:.0f} s; {args.slots} training slot(s); cap {args.cap} per user; "
          f"store {store.safe_url}; this process {rss_before:.0f} MB before", flush=True)

    started: dict[int, str] = {}  # run id -> the user who started it
    refused: list[str] = []
    second_allowed: list[str] = []
    predicted: dict[int, float] = {}  # run id -> estimated start (unix time) when it was created
    errors: list[str] = []
    lock = threading.Lock()
    t0 = time.time()
    offsets = [args.within * i / args.users for i in range(args.users)]
    random.Random(0).shuffle(offsets)

    def student(user, offset: float) -> None:
        time.sleep(offset)
        if available_mb() < args.min_free_mb:  # each queued run waits in a process of ~0.55 GB: do not sink the machine
            with lock:
                errors.append(f"{user.name}: gave up, {available_mb():.0f} MB available")
            return
        try:
            run_id = start_run(store, TINY, data_root=str(data), label=f"by {user.name}", user=user, runs_per_user=args.cap)
            entry = estimate.entry_of(estimate.queue(store, args.slots), run_id)
            with lock:
                started[run_id] = user.name
                if entry is not None and entry.starts_in is not None:
                    predicted[run_id] = time.time() + entry.starts_in
            try:  # at once a second one: over the cap while the first is queued or training
                extra = start_run(store, TINY, data_root=str(data), label=f"by {user.name}", user=user, runs_per_user=args.cap)
                with lock:
                    started[extra] = user.name
                    second_allowed.append(user.name)
            except QueueFull:
                with lock:
                    refused.append(user.name)
        except Exception as e:  # noqa: BLE001 - a load test reports every failure
            with lock:
                errors.append(f"{user.name}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=student, args=(u, o)) for u, o in zip(users, offsets, strict=True)]
    for t in threads:
        t.start()

    # watch: positions, concurrency, memory
    peak_training = peak_queue = 0
    peak_rss = peak_procs = 0.0
    least_free = available_mb()
    order_errors: list[str] = []
    deadline = t0 + args.timeout
    while time.time() < deadline:
        store.reconcile()
        runs = store.list_runs()
        running = [r for r in runs if r.status == "running"]
        queued = sorted((r for r in runs if r.status == "queued"), key=lambda r: r.id)
        peak_training, peak_queue = max(peak_training, len(running)), max(peak_queue, len(queued))
        if len(running) > args.slots:
            order_errors.append(f"{len(running)} runs training at once with {args.slots} slot(s)")
        entries = estimate.queue(store, args.slots)
        positions = [(e.run.id, e.position) for e in entries if e.position is not None]
        if [pos for _, pos in positions] != list(range(1, len(positions) + 1)):
            order_errors.append(f"positions not 1..n: {positions}")
        pids = {r.pid for r in runs if r.active and r.pid and r.pid != os.getpid()}
        total = sum(rss_mb(pid) for pid in pids)
        least_free = min(least_free, available_mb())
        if total > peak_rss:
            peak_rss, peak_procs = total, len(pids)
        if not any(t.is_alive() for t in threads) and not any(r.active for r in runs):
            break
        time.sleep(1.0)
    elapsed = time.time() - t0

    runs = {r.id: r for r in store.list_runs()}
    lost = [i for i in started if i not in runs]
    unfinished = [f"{i}:{runs[i].status}" for i in started if i in runs and runs[i].status != "finished"]
    mixed = [i for i, name in started.items() if i in runs and (runs[i].owner != name or runs[i].label != f"by {name}")]
    no_epochs = [i for i in started if i in runs and len(store.epochs(i)) != TINY.epochs]
    strays = [i for i in runs if i not in started]  # a refused run must leave no row
    by_start = sorted((r for r in runs.values() if r.started_at), key=lambda r: r.started_at)
    out_of_order = sum(1 for a, b in zip(by_start, by_start[1:], strict=False) if a.id > b.id)
    misses = [abs(runs[i].started_at - when) for i, when in predicted.items() if i in runs and runs[i].started_at]
    rss_after = rss_mb(os.getpid())

    print(f"\nwall time {elapsed:.0f} s; runs started {len(started)}, refused over the cap {len(refused)}, "
          f"second runs allowed (first already ended) {len(second_allowed)}; errors {len(errors)}")
    print(f"finished {sum(1 for i in started if i in runs and runs[i].status == 'finished')}/{len(started)}; lost {len(lost)}; "
          f"not finished {unfinished[:5]}; owner/label mixed {len(mixed)}; wrong epoch count {len(no_epochs)}; "
          f"rows left by refused runs {len(strays)}")
    print(f"peak training at once {peak_training} (slots {args.slots}); peak queue {peak_queue}; "
          f"runs started out of queue order {out_of_order}; position errors {len(order_errors)}")
    if misses:
        misses.sort()
        print(f"estimated vs real start over {len(misses)} runs: median {misses[len(misses) // 2]:.0f} s off, "
              f"worst {misses[-1]:.0f} s")
    print(f"RSS: this process {rss_before:.0f} MB before, {rss_after:.0f} MB after; training processes at peak "
          f"{peak_rss:.0f} MB over {peak_procs:.0f} processes ({peak_rss / max(1, peak_procs):.0f} MB each); "
          f"machine's available memory at its lowest {least_free:.0f} MB")
    for line in (errors + order_errors)[:10]:
        print("  ", line)
    ok = (not errors and not lost and not unfinished and not mixed and not no_epochs and not strays
          and not order_errors and out_of_order == 0 and len(started) >= args.users)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
