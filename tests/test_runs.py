import io
import os
import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa
import torch

from core.config import TrainConfig
from core.runs import SCHEMA_VERSION, RunStore, StoreError
from core.train import EpochResult

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """Every test of this file runs against a SQLite file and against a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs' / 'runs.db'}"
    return request.getfixturevalue("pg_url")


def epoch(n: int, acc: float = 90.0) -> EpochResult:
    return EpochResult(n, 0.5, acc - 1, 0.4, acc, 0.01, 1.5)


def test_run_round_trip(store_url):
    store = RunStore(store_url)
    cfg = TrainConfig(model="Model2c", epochs=3, lr=0.05)
    rid = store.create_run(cfg, label="hello", params=cfg.parameter_count())
    run = store.get(rid)
    assert (run.model, run.config, run.label, run.status, run.params) == ("Model2c", cfg, "hello", "queued", 6056)
    store.add_epoch(rid, epoch(1, 91.0))
    store.add_epoch(rid, epoch(2, 93.5))
    assert [e["test_acc"] for e in store.epochs(rid)] == [91.0, 93.5]
    run = store.get(rid)
    assert (run.epoch, run.best_test_acc) == (2, 93.5)
    assert run.progress == pytest.approx(2 / 3)
    assert [r.id for r in store.list_runs()] == [rid]


def test_count_and_best_per_model_in_one_query_each(store_url):
    store = RunStore(store_url)
    assert (store.count_runs(), store.best_by_model()) == (0, {})
    a, b, c = (store.create_run(TrainConfig(model=m)) for m in ("Model3", "Model3", "Tiny4k"))
    store.create_run(TrainConfig(model="Model2"))  # no epoch yet: no best
    store.add_epoch(a, epoch(1, 97.0))
    store.add_epoch(b, epoch(1, 98.5))
    store.add_epoch(b, epoch(2, 98.0))
    store.add_epoch(c, epoch(1, 96.0))
    assert store.count_runs() == 4
    assert store.best_by_model() == {"Model3": 98.5, "Tiny4k": 96.0}


def test_search_keeps_runs_matching_every_word_in_model_label_status_sweep_or_id(store_url):
    store = RunStore(store_url)
    tiny = store.create_run(TrainConfig(model="Tiny4k"), label="lr 0.1 trial")
    model3 = store.create_run(TrainConfig(model="Model3"), label="50%_dropout")
    trial = store.create_run(TrainConfig(model="Model3"), sweep="class-2b")
    store.finish(tiny, "finished")

    def ids(search):
        found = [r.id for r in store.list_runs(search=search)]
        assert store.count_runs(search) == len(found)
        return found

    assert ids("") == ids("   ") == [trial, model3, tiny]
    assert ids("tiny4K") == [tiny]  # any case
    assert ids("model3") == [trial, model3]
    assert ids("model3 queued") == [trial, model3] and ids("tiny4k queued") == []  # every word must match
    assert ids("trial") == [tiny] and ids("CLASS-2") == [trial]  # label, sweep
    assert ids("50%_") == [model3] and ids("%") == [model3] and ids("_") == [model3]  # LIKE's wildcards are text
    assert ids(f"#{model3}") == [model3] and ids(str(tiny)) == [tiny]
    assert [r.id for r in store.list_runs(search="model3", limit=1)] == [trial]


def test_sqlite_store_uses_wal(store_url):
    store = RunStore(store_url)
    if not store.is_sqlite:
        pytest.skip("WAL is SQLite's; PostgreSQL readers never block writers anyway (MVCC)")
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_checkpoint_round_trip_is_atomic_and_weights_only(store_url):
    store = RunStore(store_url)
    rid = store.create_run(TrainConfig())
    state = {"model": {"w": torch.arange(6.0)}, "epochs_done": 2}
    store.save_checkpoint(rid, "last", state)
    store.save_checkpoint(rid, "last", {**state, "epochs_done": 3})  # overwrite
    loaded = store.load_checkpoint(rid, "last")
    assert torch.equal(loaded["model"]["w"], torch.arange(6.0)) and loaded["epochs_done"] == 3
    if store.is_sqlite:
        assert [p.name for p in store.run_dir(rid).iterdir()] == ["last.pt"]  # no temp file left behind
    else:  # a binary row in the database: no shared disk needed
        with store.engine.connect() as c:
            assert c.execute(sa.text("select count(*) from checkpoints")).scalar() == 1


def test_a_delete_from_another_store_object_removes_the_runs_rows_and_folder(store_url):
    """A page's store never saw the run's uid: the folder is found before the row goes, not left behind."""
    trainer_side = RunStore(store_url)
    rid, other = trainer_side.create_run(TrainConfig()), trainer_side.create_run(TrainConfig())
    trainer_side.add_epoch(rid, epoch(1))
    trainer_side.save_checkpoint(rid, "last", {"model": {"w": torch.zeros(2)}})
    trainer_side.save_checkpoint(other, "last", {"model": {"w": torch.ones(2)}})
    page_side = RunStore(store_url)
    page_side.delete_run(rid)
    assert [r.id for r in page_side.list_runs()] == [other] and page_side.epochs(rid) == []
    if page_side.is_sqlite:
        assert not trainer_side.run_dir(rid).exists() and trainer_side.run_dir(other).is_dir()
    assert torch.equal(page_side.load_checkpoint(other, "last")["model"]["w"], torch.ones(2))


def test_runs_with_a_checkpoint_in_one_call(store_url):
    store = RunStore(store_url)
    assert store.runs_with_checkpoint("best") == set()
    a, b, c = (store.create_run(TrainConfig()) for _ in range(3))
    store.save_checkpoint(a, "best", {"w": torch.zeros(1)})
    store.save_checkpoint(b, "last", {"w": torch.zeros(1)})
    store.save_checkpoint(c, "best", {"w": torch.zeros(1)})
    store.save_checkpoint(c, "last", {"w": torch.zeros(1)})
    assert store.runs_with_checkpoint("best") == {a, c}
    assert store.runs_with_checkpoint("last") == {b, c}
    assert all(store.has_checkpoint(r, "best") == (r in {a, c}) for r in (a, b, c))


def corrupt_checkpoint(store: RunStore, rid: int, data: bytes) -> None:
    if store.is_sqlite:
        (store.run_dir(rid) / "last.pt").write_bytes(data)
    else:
        with store.engine.begin() as c:
            c.execute(sa.text("update checkpoints set data = :d where run_id = :r"), {"d": data, "r": rid})


def test_corrupt_or_unsafe_checkpoint_is_a_clear_error(store_url, tmp_path):
    store = RunStore(store_url)
    rid = store.create_run(TrainConfig())
    store.save_checkpoint(rid, "last", {"x": torch.zeros(3)})
    corrupt_checkpoint(store, rid, b"PK\x03\x04 half a checkpoint")
    with pytest.raises(StoreError, match="corrupt"):
        store.load_checkpoint(rid, "last")
    buf = io.BytesIO()
    torch.save({"obj": TrainConfig()}, buf)  # a pickled object: refused by weights_only=True
    corrupt_checkpoint(store, rid, buf.getvalue())
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
    assert store.get(rid).status == "running"  # a read only reads
    assert store.reconcile() == 1 and store.get(rid).status == "interrupted"


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


def test_unreachable_postgresql_is_one_clear_error():
    from tests.conftest import _free_port

    t0 = time.monotonic()
    with pytest.raises(StoreError, match=r"cannot open the run store at postgresql\+psycopg://lab:\*\*\*@127.0.0.1") as e:
        RunStore(f"postgresql://lab:secret@127.0.0.1:{_free_port()}/lab")
    assert "\n" not in str(e.value) and "secret" not in str(e.value)
    assert time.monotonic() - t0 < 10


def test_older_store_is_upgraded_in_place(store_url):
    store = RunStore(store_url)
    old = store.create_run(TrainConfig())
    with store.engine.begin() as c:  # make it look like a store from before sweeps existed
        c.execute(sa.text("drop index runs_sweep"))
        c.execute(sa.text("alter table runs drop column sweep"))
        c.execute(sa.text("delete from schema_version"))
    store.engine.dispose()
    store = RunStore(store_url)
    assert store.get(old).sweep is None
    new = store.create_run(TrainConfig(), sweep="s1")
    assert [r.id for r in store.list_runs(sweep="s1")] == [new]
    with store.engine.connect() as c:
        assert c.execute(sa.text("select version from schema_version")).scalar() == SCHEMA_VERSION


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
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store_url, str(rid)], cwd=ROOT)
    counts = []
    while writer.poll() is None:
        counts.append(len(store.epochs(rid)))
        store.get(rid)
    assert writer.returncode == 0
    assert counts == sorted(counts) and len(counts) > 5  # many reads, each a consistent, growing snapshot
    assert len(store.epochs(rid)) == 200
    with store.engine.connect() as c:
        assert c.execute(sa.text("select count(*) from epochs")).scalar() == 200


CONCURRENT_WRITER = textwrap.dedent(
    """
    import sys
    from core.config import TrainConfig
    from core.runs import RunStore
    from core.train import EpochResult
    store = RunStore(sys.argv[1])
    tag = int(sys.argv[2])
    for k in range(3):  # three runs per writer, created while the other writers create theirs
        rid = store.create_run(TrainConfig(model="Model1", seed=tag), label=f"w{tag}-{k}")
        for n in range(1, 31):
            store.add_epoch(rid, EpochResult(n, 0.1, 50.0, 0.1, tag + n / 100, 0.01, 0.1))
            store.save_checkpoint(rid, "last", {"tag": tag, "epoch": n})
    """
)


def test_concurrent_writers_lose_and_mix_no_rows(store_url):
    store = RunStore(store_url)
    writers = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, store_url, str(tag)], cwd=ROOT) for tag in range(1, 5)
    ]
    assert [w.wait(timeout=240) for w in writers] == [0] * 4
    runs = store.list_runs()
    assert len(runs) == 12 and len({r.id for r in runs}) == 12
    for run in runs:
        tag = run.config.seed
        assert run.label.startswith(f"w{tag}-")
        rows = store.epochs(run.id)
        assert [e["epoch"] for e in rows] == list(range(1, 31))
        assert all(int(e["test_acc"]) == tag for e in rows)  # every row is this run's own
        assert run.epoch == 30 and run.best_test_acc == pytest.approx(tag + 0.30)
        assert store.load_checkpoint(run.id, "last") == {"tag": tag, "epoch": 30}


def test_a_run_whose_process_died_after_a_stop_request_is_stopped_not_interrupted(store_url):
    store = RunStore(store_url)
    asked, not_asked = store.create_run(TrainConfig()), store.create_run(TrainConfig())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert store.claim(asked, os.getpid()) and store.claim(not_asked, os.getpid())
    store.update(asked, pid=dead.pid)
    store.update(not_asked, pid=dead.pid)
    store.request_stop(asked)  # e.g. ASHA stopping a sweep trial whose actor Ray then tore down
    assert store.reconcile() == 2
    assert (store.get(asked).status, store.get(asked).error) == ("stopped", None)
    assert store.get(not_asked).status == "interrupted"
