"""No recorded epoch lost to a kill at any instant; runs never pick up other runs' files; every bad store,
checkpoint or setting is one line. Real subprocesses, real SIGKILL, real SQLite files."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import TrainConfig
from core.data import FILES, DataError, load_mnist, raw_dir
from core.runs import RunStore, StoreError
from core.train import Trainer, TrainingDiverged
from core.worker import execute_run
from tests.conftest import make_synthetic_mnist, write_idx

ROOT = Path(__file__).resolve().parent.parent
CONFIG = TrainConfig(model="Model2c", epochs=4, batch_size=64, device="cpu")

# A training process that SIGKILLs itself at the k-th time it reaches one write of an epoch.
KILLER = r"""
import os, signal, sys
from pathlib import Path
from core import runs
from core.worker import execute_run

point, k, run_id, url, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
seen = {}

def reached(name):
    seen[name] = seen.get(name, 0) + 1
    if name == point and seen[name] == k:
        os.kill(os.getpid(), signal.SIGKILL)

add_epoch, replace, note = runs.RunStore.add_epoch, os.replace, runs.RunStore._note_saved

def add_epoch_(self, run_id, result):
    reached("before_row"); add_epoch(self, run_id, result); reached("after_row")

def replace_(src, dst):
    name = Path(dst).stem
    reached(f"{name}_tmp_written"); replace(src, dst); reached(f"{name}_renamed")

runs.RunStore.add_epoch, runs.os.replace = add_epoch_, replace_
execute_run(run_id, url, data, max_running=None, log=lambda s: None)
"""
POINTS = ["before_row", "after_row", "best_tmp_written", "best_renamed", "last_tmp_written", "last_renamed"]


def metrics(rows: list[dict]) -> list[tuple]:
    return [(r["epoch"], r["train_loss"], r["train_acc"], r["test_loss"], r["test_acc"], r["lr"]) for r in rows]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_mnist(tmp_path_factory.mktemp("mnist"), n_train=640, n_test=128)


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory) -> list[tuple]:
    store = RunStore(str(tmp_path_factory.mktemp("ref") / "runs.db"))
    run_id = store.create_run(CONFIG)
    assert execute_run(run_id, store, str(data_root), max_running=None, log=lambda s: None) == "finished"
    return metrics(store.epochs(run_id))


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_write_of_an_epoch_loses_no_epoch(point, data_root, uninterrupted, tmp_path):
    store = RunStore(str(tmp_path / "runs.db"))
    run_id = store.create_run(CONFIG)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILLER, point, "2", str(run_id), store.url, str(data_root)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store.reconcile()
    assert store.get(run_id).status == "interrupted"

    logs = []
    assert execute_run(run_id, store, str(data_root), max_running=None, log=logs.append) == "finished"
    assert metrics(store.epochs(run_id)) == uninterrupted  # epochs 1..4, each once, the same numbers
    assert not list(store.run_dir(run_id).glob(".*tmp*"))  # a half-written checkpoint is cleaned up
    if point.endswith("tmp_written"):
        assert any("half-written" in line for line in logs), logs


def test_a_run_whose_process_died_is_never_left_queued(data_root, tmp_path):
    store = RunStore(str(tmp_path / "runs.db"))
    # killed right after it created its run
    code = ("import os, signal, sys; from core.runs import RunStore; from core.config import TrainConfig;"
            "RunStore(sys.argv[1]).create_run(TrainConfig(epochs=1), pid=os.getpid()); os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", code, store.url], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    # killed while waiting for the machine's training slot (held by this test process)
    busy, waiting = store.create_run(CONFIG), store.create_run(CONFIG)
    assert store.claim(busy, os.getpid())
    p = subprocess.Popen([sys.executable, "-m", "core.train", "--run-id", str(waiting), "--runs", store.url,
                          "--data", str(data_root), "--quiet"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         stdout=subprocess.PIPE, text=True)
    assert "waiting for a free training slot" in "".join(p.stdout.readline() for _ in range(3))
    p.kill()
    p.wait()
    store.reconcile()
    created = store.list_runs()[-1]
    assert (created.status, store.get(waiting).status) == ("interrupted", "interrupted")
    store.finish(busy, "stopped")
    assert execute_run(waiting, store, str(data_root), max_running=1, log=lambda s: None) == "finished"


def test_checkpoints_of_a_deleted_store_are_never_resumed_from(data_root, tmp_path):
    db = tmp_path / "runs.db"
    store = RunStore(str(db))
    first = store.create_run(CONFIG.replace(epochs=2))
    execute_run(first, store, str(data_root), max_running=None, log=lambda s: None)
    store.engine.dispose()
    for f in tmp_path.glob("runs.db*"):
        f.unlink()  # the database goes, its checkpoint folder stays

    for config in (CONFIG, CONFIG.replace(seed=5)):  # the same settings, and others
        fresh = RunStore(str(db))
        run_id = fresh.create_run(config)
        assert run_id == first
        logs = []
        assert execute_run(run_id, fresh, str(data_root), max_running=None, log=logs.append) == "finished"
        assert not any("resuming" in line for line in logs), logs
        assert any("ignoring" in line and "another run" in line for line in logs), logs
        assert [e["epoch"] for e in fresh.epochs(run_id)] == [1, 2, 3, 4]
        fresh.engine.dispose()
        for f in tmp_path.glob("runs.db*"):
            f.unlink()


def test_a_missing_checkpoint_folder_is_reported_not_restarted(data_root, tmp_path):
    store = RunStore(str(tmp_path / "runs.db"))
    run_id2 = store.create_run(CONFIG.replace(epochs=2))
    execute_run(run_id2, store, str(data_root), max_running=None, log=lambda s: None)
    store.update(run_id2, status="stopped", config=CONFIG.to_json())  # as if stopped after epoch 2 of 4
    shutil.rmtree(store.run_dir(run_id2))
    assert execute_run(run_id2, store, str(data_root), max_running=None, log=lambda s: None) == "failed"
    run = store.get(run_id2)
    assert "missing" in run.error and "\n" not in run.error
    assert [e["epoch"] for e in store.epochs(run_id2)] == [1, 2]  # nothing recorded is thrown away


def test_a_torch_file_that_is_no_lab_checkpoint_is_one_line(data_root, tmp_path):
    store = RunStore(str(tmp_path / "runs.db"))
    run_id = store.create_run(CONFIG)
    store.run_dir(run_id).mkdir(parents=True)
    torch.save({"weights": torch.zeros(3)}, store.run_dir(run_id) / "last.pt")
    assert execute_run(run_id, store, str(data_root), max_running=None, log=lambda s: None) == "failed"
    assert "not a checkpoint of this lab" in store.get(run_id).error


def _bad_stores(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.db"
    store = RunStore(str(good))
    for _ in range(300):
        store.create_run(TrainConfig(), label="x" * 150)
    store.engine.dispose()  # the last connection closing folds the WAL into the file
    files = {
        "random bytes": np.random.default_rng(0).bytes(8192),
        "a text file": b"epoch,acc\n1,99.0\n" * 100,
        "an SQLite header with garbage": b"SQLite format 3\x00" + np.random.default_rng(1).bytes(8000),
        "a truncated database": good.read_bytes()[: good.stat().st_size // 2],
    }
    out = {}
    for name, blob in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.db"
        path.write_bytes(blob)
        out[name] = path
    return out


def test_a_corrupt_store_is_one_line_in_the_store_and_the_cli(tmp_path, data_root):
    for name, path in _bad_stores(tmp_path).items():
        with pytest.raises(StoreError, match="not a readable SQLite database|cannot open|failed") as e:
            store = RunStore(str(path))
            store.list_runs()
        assert "\n" not in str(e.value) and str(path) in str(e.value), (name, str(e.value))
        out = subprocess.run([sys.executable, "-m", "core.train", "--epochs", "1", "--runs", str(path), "--data",
                              str(data_root)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (name, out.stderr[-800:])


def test_an_old_store_upgraded_reads_like_a_new_one(tmp_path):
    db = tmp_path / "old.db"
    store = RunStore(str(db))
    run_id = store.create_run(TrainConfig())
    store.engine.dispose()
    with sqlite3.connect(db) as c:  # the store as code before these columns left it
        for col in ("batches_per_epoch", "batch", "saved_epoch", "uid"):
            c.execute(f"ALTER TABLE runs DROP COLUMN {col}")
        c.execute("UPDATE schema_version SET version = 1")
    run = RunStore(str(db)).get(run_id)
    assert (run.batch, run.batches_per_epoch, run.progress) == (0, 0, 0.0)


def _write_split(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    raw = raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        write_idx(raw / FILES[split, "images"], images)
        write_idx(raw / FILES[split, "labels"], labels)
    return root


@pytest.mark.parametrize("images, labels, says", [
    (np.zeros((8, 28, 28)), np.full(8, 12), "label 12"),
    (np.zeros((8, 27, 27)), np.zeros(8), "27x27"),
    (np.zeros((0, 28, 28)), np.zeros(0), "holds no images"),
])
def test_idx_files_that_are_not_mnist_are_one_line(images, labels, says, tmp_path):
    with pytest.raises(DataError, match=says):
        load_mnist(_write_split(tmp_path / "bad", images, labels))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.train", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flags, says", [
    (["--seed", str(2**70)], "seed must be in"),
    (["--batch-size", "100000"], "larger than the 640 training images"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device")]))
def test_bad_settings_are_refused_before_a_run_is_recorded(flags, says, data_root, tmp_path):
    db = tmp_path / "runs.db"
    out = cli("--model", "Model2c", "--epochs", "1", "--runs", str(db), "--data", str(data_root), *flags)
    assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert RunStore(str(db)).count_runs() == 0


def test_a_train_limit_above_the_data_says_it_used_all(data_root, tmp_path):
    out = cli("--model", "Model2c", "--epochs", "1", "--train-limit", "70000", "--runs", str(tmp_path / "r.db"),
              "--data", str(data_root))
    assert out.returncode == 0 and "using all 640" in out.stdout, out.stderr


def test_divergence_is_caught_within_a_few_batches(data_root):
    data = load_mnist(data_root)
    trainer = Trainer(CONFIG.replace(lr=1e9, batch_size=8, scheduler="onecycle"), data)  # 80 batches an epoch
    batches = []
    with pytest.raises(TrainingDiverged, match="diverged in epoch 1"):
        next(trainer.epochs(on_batch=lambda done, total: batches.append(done)))
    assert len(batches) <= 16 < trainer.steps_per_epoch


def test_a_page_read_of_a_running_run_writes_nothing(data_root, tmp_path):
    store = RunStore(str(tmp_path / "runs.db"))
    run_id = store.create_run(CONFIG)
    assert store.claim(run_id, 999_999_999)  # "running", by a process that does not exist
    page = RunStore(store.url)
    counts = page.count_statements()
    page.get(run_id), page.list_runs(limit=300), page.epochs(run_id), page.best_by_model(), page.count_runs()
    assert counts["SELECT"] > 0 and sum(counts[v] for v in ("INSERT", "UPDATE", "DELETE")) == 0, counts
    page.reconcile()  # explicit, and then it writes
    assert counts["UPDATE"] == 1 and page.get(run_id).status == "interrupted"
