"""`python -m core.slotwait --run-id N --runs URL [--data DIR]`: what *Start* launches on this machine.

A queued run waits for its turn here, without PyTorch: ~40 MB a waiting process instead of the ~0.55 GB of a
training process that imported it (thirty queued runs of a class: ~1.2 GB, not ~16 GB). When no older run is
queued on this host it becomes the run's training process, same pid (`python -m core.train --run-id N
--if-queued`), which loads PyTorch while the run ahead finishes and claims the slot when one is free
(core.worker.wait_for_slot). A run stopped while it waits ends here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from core.runs import RunStore, StoreError

POLL_SECONDS = 1.0


def wait_for_turn(store: RunStore, run_id: int, poll: float = POLL_SECONDS) -> bool:
    """Wait until the run is next in this host's line; False when it stopped being queued (stopped, deleted, or
    taken over) while it waited."""
    while True:
        status, stop_requested = store.waiting_state(run_id)
        if status != "queued" or stop_requested:
            return False
        if store.first_in_line(run_id):
            return True
        time.sleep(poll)
        store.reconcile_if_due()  # a waiter ahead that died is marked interrupted (checked every few seconds, not
        # every poll: thirty waiters would each scan the active runs every second)


def training_command(run_id: int, store_url: str, data_root: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "core.train", "--run-id", str(run_id), "--runs", store_url, "--quiet", "--if-queued"]
    return cmd + (["--data", str(data_root)] if data_root else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.slotwait", description=__doc__.split("\n")[0])
    p.add_argument("--run-id", type=int, required=True)
    p.add_argument("--runs", required=True, help="run store URL")
    p.add_argument("--data", default=None, help="MNIST root holding MNIST/raw/ (default: $MNIST_ROOT)")
    args = p.parse_args(argv)
    try:
        store = RunStore(args.runs)
        if not wait_for_turn(store, args.run_id):
            print(f"run {args.run_id} is {store.waiting_state(args.run_id)[0]} now; not starting it", flush=True)
            return 0
    except StoreError as e:  # the store went away, or the run was deleted while it waited
        print(f"error: {e}", file=sys.stderr)
        return 2
    store.close()  # the training process opens its own connections
    cmd = training_command(args.run_id, args.runs, args.data)
    os.execv(cmd[0], cmd)  # the same process (pid) becomes the training process


if __name__ == "__main__":
    sys.exit(main())
