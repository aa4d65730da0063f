"""The training process as users start it: `python -m core.train`, a real subprocess, real signals."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runs import RunStore
from tests.conftest import make_synthetic_mnist

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env_root: Path | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if env_root is not None:
        env["MNIST_ROOT"] = str(env_root)
    return subprocess.Popen([sys.executable, "-m", "core.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run_cli(*args: str, env_root: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    p = cli(*args, env_root=env_root)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def wait_until(cond, timeout: float = 90.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def slow_root(tmp_path):
    """Enough synthetic images that an epoch of Model3 takes about a second."""
    return make_synthetic_mnist(tmp_path / "mnist", n_train=3000, n_test=200)


def test_killed_run_is_interrupted_keeps_its_epochs_and_resumes(slow_root, store_url):
    p = cli("--model", "Model3", "--epochs", "8", "--quiet", "--runs", store_url, "--data", str(slow_root))
    store = RunStore(store_url)
    wait_until(lambda: store.list_runs() and store.list_runs()[0].epoch >= 2, what="two finished epochs")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    store.reconcile()
    run = store.list_runs()[0]
    assert run.status == "interrupted"
    before = store.epochs(run.id)
    assert len(before) >= 2 and [e["epoch"] for e in before] == list(range(1, len(before) + 1))

    done = run_cli("--run-id", str(run.id), "--quiet", "--runs", store_url, "--data", str(slow_root))
    assert done.returncode == 0, done.stderr
    assert f"resuming run {run.id} after epoch" in done.stdout
    after = store.epochs(run.id)
    assert [e["epoch"] for e in after] == list(range(1, 9))
    # finished epochs keep their numbers; an epoch whose checkpoint the kill cut off is trained again (the
    # same numbers: it replays from its seed) and only its wall time is measured anew
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in after[: len(before)]] == [
        {k: v for k, v in e.items() if k != "seconds"} for e in before]
    assert store.get(run.id).status == "finished"


def test_stop_request_stops_cleanly_and_keeps_finished_epochs(slow_root, store_url):
    p = cli("--model", "Model3", "--epochs", "20", "--quiet", "--runs", store_url, "--data", str(slow_root))
    store = RunStore(store_url)
    wait_until(lambda: store.list_runs() and store.list_runs()[0].epoch >= 1, what="one finished epoch")
    run_id = store.list_runs()[0].id
    store.request_stop(run_id)
    assert p.wait(timeout=60) == 3
    run = store.get(run_id)
    assert run.status == "stopped" and 1 <= run.epoch < 20
    assert len(store.epochs(run_id)) == run.epoch and store.has_checkpoint(run_id, "last")


def test_sigterm_is_a_clean_stop(slow_root, store_url):
    p = cli("--model", "Model3", "--epochs", "20", "--quiet", "--runs", store_url, "--data", str(slow_root))
    store = RunStore(store_url)
    wait_until(lambda: store.list_runs() and store.list_runs()[0].status == "running", what="the run to start")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 3
    assert store.list_runs()[0].status == "stopped"


def test_second_run_waits_for_the_first(slow_root, store_url):
    first = cli("--model", "Model3", "--epochs", "6", "--quiet", "--runs", store_url, "--data", str(slow_root))
    store = RunStore(store_url)
    wait_until(lambda: store.list_runs() and store.list_runs()[0].status == "running", what="the first run to start")
    second = cli("--model", "Model2", "--epochs", "1", "--quiet", "--runs", store_url, "--data", str(slow_root))
    wait_until(lambda: len(store.list_runs()) == 2, what="the second run to be recorded")
    time.sleep(1.0)
    newest, older = store.list_runs()  # one read: the first run may finish at any moment
    if older.status == "running":  # (checking the first *process* raced: it outlives its run's slot)
        assert newest.status == "queued"
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0 and "queued" in out
    assert first.wait(timeout=120) == 0
    assert [r.status for r in store.list_runs()] == ["finished", "finished"]
    a, b = sorted(store.list_runs(), key=lambda r: r.id)
    assert b.started_at >= a.ended_at - 0.5  # they did not train at the same time


def test_a_run_stopped_before_its_launched_process_got_going_stays_stopped(synthetic_root, store_url):
    """The dashboard's race: Start, then Stop before the new process has imported torch."""
    from core.config import TrainConfig

    store = RunStore(store_url)
    busy = store.create_run(TrainConfig(epochs=1))
    assert store.claim(busy, os.getpid())  # the machine's one training slot is taken
    run_id = store.create_run(TrainConfig(epochs=1, train_limit=200, test_limit=100))
    store.request_stop(run_id)  # stopped while queued, before any process looked at it
    done = run_cli("--run-id", str(run_id), "--if-queued", "--runs", store_url, "--data", str(synthetic_root), timeout=60)
    assert done.returncode == 3 and "no longer queued" in done.stdout
    run = store.get(run_id)
    assert run.status == "stopped" and run.started_at is None and store.epochs(run_id) == []
    store.finish(busy, "finished")


def test_help_documents_every_setting_with_its_default():
    out = run_cli("--help").stdout
    for flag in ("--model", "--epochs", "--lr", "--scheduler", "--augment", "--seed", "--device", "--data", "--run-id"):
        assert flag in out
    assert "(default: 15)" in out and "(default: Model3)" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "ResNet"], "unknown model 'ResNet'"),
        (["--lr", "-0.1"], "lr must be > 0"),
        (["--lr", "inf"], "lr must be a finite number"),
        (["--momentum", "nan"], "momentum must be a finite number"),
        (["--scheduler", "cosine"], "scheduler must be one of"),
        (["--epochs", "many"], "invalid int value"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args, message, synthetic_root, store_url):
    r = run_cli(*args, "--runs", store_url, "--data", str(synthetic_root))
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_a_diverging_run_fails_with_one_clear_line(synthetic_root, store_url):
    r = run_cli("--model", "Model1", "--lr", "1000", "--scheduler", "none", "--epochs", "5", "--quiet",
                "--runs", store_url, "--data", str(synthetic_root))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "training diverged in epoch" in r.stderr and "try a lower one" in r.stderr
    run = RunStore(store_url).list_runs()[0]
    assert run.status == "failed" and "diverged" in run.error and "Traceback" not in run.error
    assert run.epoch < 5 and len(RunStore(store_url).epochs(run.id)) == run.epoch  # epochs before it are kept


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_one_fails_with_one_clear_line(synthetic_root, store_url):
    r = run_cli("--device", "cuda", "--epochs", "1", "--runs", store_url, "--data", str(synthetic_root))
    assert r.returncode == 2 and "Traceback" not in r.stderr  # refused before a run is recorded
    assert "no CUDA device is available; use --device auto or cpu" in r.stderr
    assert RunStore(store_url).count_runs() == 0


def test_missing_dataset_exits_2_and_records_nothing(tmp_path, store_url):
    r = run_cli("--epochs", "1", "--runs", store_url, "--data", str(tmp_path / "nowhere"))
    assert r.returncode == 2
    assert "MNIST not found" in r.stderr and "MNIST_ROOT" in r.stderr and "Traceback" not in r.stderr
    assert RunStore(store_url).list_runs() == []


@pytest.mark.slow
def test_tiny_real_run_through_the_cli(mnist_root, store_url):
    r = run_cli("--model", "Model3", "--epochs", "1", "--train-limit", "5000", "--test-limit", "500",
                "--recipe", "seed", "--runs", store_url, env_root=mnist_root)
    assert r.returncode == 0, r.stderr
    assert "epoch  1/1" in r.stdout and "finished: run 1" in r.stdout
    run = RunStore(store_url).get(1)
    assert run.status == "finished" and run.best_test_acc > 40 and run.config.train_limit == 5000
    assert run.config.scheduler == "plateau"  # the seed recipe, picked by --recipe
