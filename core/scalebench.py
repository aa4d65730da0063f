"""Numbers for docs/scaling.md: store writes per epoch, store size per run, dashboard query times with many runs.

    python -m core.scalebench --runs postgresql://... --n 10000 --data $MNIST_ROOT

Uses the store named by --runs (default: a fresh SQLite file in a temp dir); generated runs are marked with
the label 'scalebench' and deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from core.config import TrainConfig
from core.runs import RunStore
from core.worker import execute_run

EPOCHS_PER_RUN = 15  # the seed's recipe
LABEL = "scalebench"  # marks the runs this script makes (deleted at the end unless --keep)


def measure_training(store: RunStore, data_root: str | None, train_limit: int, epochs: int) -> dict:
    """Train a real small run through execute_run and count its statements and bytes."""
    config = TrainConfig(model="Model3", epochs=epochs, train_limit=train_limit, test_limit=2000, device="cpu")
    run_id = store.create_run(config, label=LABEL, params=config.parameter_count())
    worker_store = RunStore(store.url)
    counts = worker_store.count_statements()  # what the worker sends
    t0 = time.perf_counter()
    execute_run(run_id, worker_store, data_root, max_running=None, log=lambda _: None)
    seconds = time.perf_counter() - t0
    run = store.get(run_id)
    writes = sum(counts[v] for v in ("INSERT", "UPDATE", "DELETE"))
    ckpt = sum(len(store.checkpoint_bytes(run_id, n)) for n in ("best", "last"))
    return {"epochs": run.epoch, "seconds": round(seconds, 1), "statements": dict(counts),
            "writes_per_epoch": round(writes / max(1, run.epoch), 1),
            "statements_per_epoch": round(sum(counts.values()) / max(1, run.epoch), 1),
            "checkpoint_bytes_per_run": ckpt, "run_id": run_id}


def timed(fn, repeat: int = 5) -> float:
    """Median wall time of fn() in milliseconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


def measure_queries(store: RunStore) -> dict:
    runs = store.list_runs()
    ids = [r.id for r in runs]
    some = ids[:8]
    return {
        "runs_in_store": len(ids),
        "list_runs_all_ms": timed(store.list_runs, 3),
        "list_runs_limit_50_ms": timed(lambda: store.list_runs(limit=50)),
        "list_runs_limit_300_ms": timed(lambda: store.list_runs(limit=300)),  # Compare and the pickers
        "best_by_model_ms": timed(store.best_by_model),  # Home
        "count_runs_ms": timed(store.count_runs),
        "list_runs_search_300_ms": timed(lambda: store.list_runs(limit=300, search="model3 finished")),  # Compare's Find runs
        "count_runs_search_ms": timed(lambda: store.count_runs("model3 finished")),
        "list_runs_search_rare_ms": timed(lambda: store.list_runs(limit=300, search="tiny4k")),  # scans every row
        "runs_with_checkpoint_ms": timed(lambda: store.runs_with_checkpoint("best")),  # the pickers
        "list_runs_running_ms": timed(lambda: store.list_runs(status="running")),
        "get_one_ms": timed(lambda: store.get(ids[len(ids) // 2]), 20),
        "epochs_one_run_ms": timed(lambda: store.epochs(ids[len(ids) // 2]), 20),
        "epochs_of_8_runs_ms": timed(lambda: store.epochs_of(some), 10),
        "epochs_of_all_runs_ms": timed(lambda: store.epochs_of(ids), 3),  # what Compare did before bounded reads
        "has_checkpoint_per_run_ms": timed(lambda: [store.has_checkpoint(i, "best") for i in ids[:1000]], 1) * len(ids) / 1000,
        "sweep_trials_ms": timed(lambda: store.list_runs(sweep="bench-42"), 10),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.scalebench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", default=None, help="store URL (default: a new SQLite file in a temp dir)")
    p.add_argument("--n", type=int, default=10_000, help="runs to generate")
    p.add_argument("--data", default=None, help="MNIST root for the measured training run (default: $MNIST_ROOT)")
    p.add_argument("--train-limit", type=int, default=4000, help="training images of the measured run")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the measured run")
    p.add_argument("--keep", action="store_true", help="keep the generated runs")
    args = p.parse_args(argv)
    store = RunStore(args.runs or f"sqlite:///{tempfile.mkdtemp(prefix='mnist-lab-bench-')}/runs.db")
    out = {"store": store.dialect, "training": measure_training(store, args.data, args.train_limit, args.epochs)}
    t0 = time.perf_counter()
    store.insert_finished_runs(args.n, EPOCHS_PER_RUN, LABEL)
    out["generate_seconds"] = round(time.perf_counter() - t0, 1)
    out["queries"] = measure_queries(store)
    sizes = store.table_bytes()
    n = out["queries"]["runs_in_store"]
    out["table_bytes"] = sizes
    out["row_bytes_per_run"] = round((sizes.get("runs", 0) + sizes.get("epochs", 0)) / n) if "runs" in sizes else None
    print(json.dumps(out, indent=2))
    if not args.keep:
        store.delete_runs_labelled(LABEL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
