import os
import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa
import torch

from core.config import TrainConfig
from core.runs import RunStore, StoreError
from core.train import EpochResult


def epoch(n: int, acc: float = 90.0) -> EpochResult:
    return EpochResult(n, 0.5, acc - 1, 0.4, acc, 0.01, 1.5)


def test_run_round_trip(store_url):
    store = RunStore(store_url)
    cfg = TrainConfig(model="Model2c", epochs=3, lr=0.05)
    rid = store.create_run(cfg, label="hello")
    run = store.get(rid)
    assert (run.model, run.config, run.label, run.status, run.params) == ("Model2c", cfg, "hello", "queued", 6056)
    store.add_epoch(rid, epoch(1, 91.0))
    store.add_epoch(rid, epoch(2, 93.5))
    assert [e["test_acc"] for e in store.epochs(rid)] == [91.0, 93.5]
    run = store.get(rid)
    assert (run.epoch, run.best_test_acc) == (2, 93.5)
    assert run.progress == pytest.approx(2 / 3)
    assert [r.id for r in store.list_runs()] == [rid]


def test_sqlite_store_uses_wal(store_url):
    store = RunStore(store_url)
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_checkpoint_round_trip_is_atomic_and_weights_only(store_url):
    store = RunStore(store_url)
    rid = store.create_run(TrainConfig())
    state = {"model": {"w": torch.arange(6.0)}, "epochs_done": 2}
    store.save_checkpoint(rid, "last", state)
    assert torch.equal(store.load_checkpoint(rid, "last")["model"]["w"], torch.arange(6.0))
    assert [p.name for p in store.run_dir(rid).iterdir()] == ["last.pt"]  # no temp file left behind


def test_corrupt_or_unsafe_checkpoint_is_a_clear_error(store_url, tmp_path):
    store = RunStore(store_url)
    rid = store.create_run(TrainConfig())
    store.save_checkpoint(rid, "last", {"x": torch.zeros(3)})
    path = store.run_dir(rid) / "last.pt"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(StoreError, match="corrupt"):
        store.load_checkpoint(rid, "last")
    torch.save({"obj": TrainConfig()}, path)  # a pickled object: refused by weights_only=True
    with pytest.raises(StoreError, match="corrupt"):
        store.load_checkpoint(rid, "last")
    with pytest.raises(StoreError, match="no 'best' checkpoint"):
        store.load_checkpoint(rid, "best")


def test_running_run_whose_process_died_is_interrupted(store_url):
    store = RunStore(store_url)
    rid = store.create_run(TrainConfig())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert store.claim(rid, dead.pid)
    assert store.get(rid).status == "interrupted"


def test_claim_respects_local_slots(store_url):
    store = RunStore(store_url)
    a, b = store.create_run(TrainConfig()), store.create_run(TrainConfig())
    assert store.claim(a, os.getpid(), max_running=1)
    assert not store.claim(b, os.getpid(), max_running=1)
    assert store.get(b).status == "queued"
    store.finish(a, "finished")
    assert store.claim(b, os.getpid(), max_running=1)


def test_stop_of_a_queued_run_is_immediate(store_url):
    store = RunStore(store_url)
    rid = store.create_run(TrainConfig())
    store.request_stop(rid)
    assert store.get(rid).status == "stopped"


def test_unreachable_database_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the run store folder"):
        RunStore(f"sqlite:///{blocker}/sub/runs.db")


WRITER = textwrap.dedent(
    """
    import sys, time
    from core.config import TrainConfig
    from core.runs import RunStore
    from core.train import EpochResult
    store = RunStore(sys.argv[1])
    rid = int(sys.argv[2])
    for n in range(1, 201):
        store.add_epoch(rid, EpochResult(n, 0.1, 90.0, 0.1, 90.0 + n / 1000, 0.01, 0.1))
        store.update(rid, batch=n, heartbeat=time.time())
    """
)


def test_readers_are_not_blocked_while_a_writer_runs(store_url):
    store = RunStore(store_url)
    rid = store.create_run(TrainConfig())
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store_url, str(rid)], cwd=os.path.dirname(os.path.dirname(__file__)))
    counts = []
    while writer.poll() is None:
        counts.append(len(store.epochs(rid)))
        store.get(rid)
    assert writer.returncode == 0
    assert counts == sorted(counts) and len(counts) > 5  # many reads, each a consistent, growing snapshot
    assert len(store.epochs(rid)) == 200
    with store.engine.connect() as c:
        assert c.execute(sa.text("select count(*) from epochs")).scalar() == 200
