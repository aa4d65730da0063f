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
from collections import Counter

import sqlalchemy as sa

from core.config import TrainConfig
from core.runs import RunStore, checkpoints_table, epochs_table, runs_table

EPOCHS_PER_RUN = 15  # the seed's recipe


def count_statements(store: RunStore) -> Counter:
    """A live counter of the SQL statements the store's engine sends, by verb (INSERT, UPDATE, SELECT...)."""
    counts: Counter = Counter()

    def before(conn, cursor, statement, parameters, context, executemany):
        counts[statement.lstrip().split(None, 1)[0].upper()] += 1

    sa.event.listen(store.engine, "before_cursor_execute", before)
    return counts


def measure_training(store: RunStore, data_root: str | None, train_limit: int, epochs: int) -> dict:
    """Train a real small run through execute_run and count its statements and bytes."""
    from core import worker

    config = TrainConfig(model="Model3", epochs=epochs, train_limit=train_limit, test_limit=2000, device="cpu")
    run_id = store.create_run(config, label="scalebench")
    worker_store = RunStore(store.url)
    original = worker.RunStore
    worker.RunStore = lambda url=None: worker_store  # count what the worker sends
    counts = count_statements(worker_store)
    t0 = time.perf_counter()
    try:
        worker.execute_run(run_id, store.url, data_root, max_running=None, log=lambda _: None)
    finally:
        worker.RunStore = original
    seconds = time.perf_counter() - t0
    run = store.get(run_id)
    writes = sum(counts[v] for v in ("INSERT", "UPDATE", "DELETE"))
    ckpt = sum(len(store.checkpoint_bytes(run_id, n)) for n in ("best", "last"))
    return {"epochs": run.epoch, "seconds": round(seconds, 1), "statements": dict(counts),
            "writes_per_epoch": round(writes / max(1, run.epoch), 1),
            "statements_per_epoch": round(sum(counts.values()) / max(1, run.epoch), 1),
            "checkpoint_bytes_per_run": ckpt, "run_id": run_id}


def generate(store: RunStore, n: int) -> None:
    """n finished runs of 15 epochs each, inserted in bulk (no checkpoints: their size is measured above)."""
    cfg = TrainConfig().to_json()
    now = time.time()
    with store.engine.begin() as c:
        first = c.execute(sa.select(sa.func.coalesce(sa.func.max(runs_table.c.id), 0))).scalar() + 1
        for start in range(0, n, 1000):
            ids = range(first + start, first + min(n, start + 1000))
            c.execute(runs_table.insert(), [
                {"id": i, "model": "Model3", "config": cfg, "label": "scalebench", "status": "finished",
                 "created_at": now, "started_at": now, "ended_at": now, "epoch": EPOCHS_PER_RUN, "params": 7_800,
                 "best_test_acc": 99.0 + (i % 50) / 100, "sweep": f"bench-{i // 100}"} for i in ids])
            c.execute(epochs_table.insert(), [
                {"run_id": i, "epoch": e, "train_loss": 0.05, "train_acc": 98.5, "test_loss": 0.02,
                 "test_acc": 99.0 + e / 100, "lr": 0.01, "seconds": 20.0}
                for i in ids for e in range(1, EPOCHS_PER_RUN + 1)])
    if store.engine.dialect.name == "postgresql":  # ids were given explicitly: move the sequence past them
        with store.engine.begin() as c:
            c.execute(sa.text("SELECT setval('runs_id_seq', (SELECT max(id) FROM runs))"))
            c.execute(sa.text("ANALYZE"))


def timed(fn, repeat: int = 5) -> float:
    """Median wall time of fn() in milliseconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


def table_bytes(store: RunStore) -> dict:
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as c:
            return {t: c.execute(sa.text(f"SELECT pg_total_relation_size('{t}')")).scalar()
                    for t in ("runs", "epochs", "checkpoints")}
    with store.engine.connect() as c:
        try:
            rows = c.execute(sa.text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")).all()
            return {name: int(size) for name, size in rows}
        except sa.exc.OperationalError:  # SQLite built without dbstat: the whole file
            return {"file": c.execute(sa.text("PRAGMA page_count")).scalar() * c.execute(sa.text("PRAGMA page_size")).scalar()}


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
    out = {"store": store.engine.dialect.name, "training": measure_training(store, args.data, args.train_limit, args.epochs)}
    t0 = time.perf_counter()
    generate(store, args.n)
    out["generate_seconds"] = round(time.perf_counter() - t0, 1)
    out["queries"] = measure_queries(store)
    sizes = table_bytes(store)
    n = out["queries"]["runs_in_store"]
    out["table_bytes"] = sizes
    out["row_bytes_per_run"] = round((sizes.get("runs", 0) + sizes.get("epochs", 0)) / n) if "runs" in sizes else None
    print(json.dumps(out, indent=2))
    if not args.keep:
        with store.engine.begin() as c:
            gone = sa.select(runs_table.c.id).where(runs_table.c.label == "scalebench")
            for t in (epochs_table, checkpoints_table):
                c.execute(t.delete().where(t.c.run_id.in_(gone)))
            c.execute(runs_table.delete().where(runs_table.c.label == "scalebench"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
