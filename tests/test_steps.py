"""Per-step points: written by the training process a few times a second, read thinned, consistent after resume."""

import pytest

from core.config import TrainConfig
from core.runs import RunStore
from core.train import StepPoint
from core.worker import execute_run
from tests.conftest import make_synthetic_mnist


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return request.getfixturevalue("pg_url")


def test_steps_round_trip_and_are_thinned_in_the_query(store_url):
    store = RunStore(store_url)
    run_id = store.create_run(TrainConfig())
    for s in range(1, 2001):
        store.record_progress(run_id, s % 100, 100, StepPoint(s, s / 100, 2.0 / s, 50 + s / 100, 0.01))
    full = store.steps(run_id, max_points=5000)
    assert [r["step"] for r in full] == list(range(1, 2001))
    assert full[9] == {"run_id": run_id, "step": 10, "epoch": 0.1, "train_loss": 0.2, "train_acc": 50.1, "lr": 0.01}
    thin = store.steps(run_id, max_points=300)
    steps = [r["step"] for r in thin]
    assert len(thin) <= 301 and steps[0] == 1 and steps[-1] == 2000 and steps == sorted(steps)
    gaps = {b - a for a, b in zip(steps, steps[1:-1], strict=False)}
    assert gaps == {7}  # every 7th of 2,000 rows: evenly spread, not the first 300
    other = store.create_run(TrainConfig())
    assert store.steps(other) == []


def test_a_resumed_run_keeps_its_step_points_without_duplicates(store_url, tmp_path, monkeypatch):
    import core.worker as worker

    monkeypatch.setattr(worker, "POLL_SECONDS", 0.0)  # a point after every batch: many points, small data
    root = make_synthetic_mnist(tmp_path / "mnist", n_train=640, n_test=128)
    store = RunStore(store_url)
    config = TrainConfig(model="Model2c", epochs=3, batch_size=64, device="cpu")
    run_id = store.create_run(config)
    asked = []

    def stop_in_epoch_2(done, total):
        if store.get(run_id).epoch == 1 and done == 5 and not asked:
            store.request_stop(run_id)
            asked.append(done)

    assert execute_run(run_id, store, str(root), max_running=None, on_batch=stop_in_epoch_2, log=lambda s: None) == "stopped"
    assert max(r["epoch"] for r in store.steps(run_id, 10_000)) > 1  # points inside the stopped epoch 2...
    assert execute_run(run_id, store, str(root), max_running=None, log=lambda s: None) == "finished"
    rows = store.steps(run_id, 10_000)
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps))  # ...were replaced when epoch 2 was trained again: no duplicates
    assert steps[-1] == 30 and len(steps) >= 25 and rows[-1]["epoch"] == 3.0
    assert all(0 <= r["train_acc"] <= 100 and r["train_loss"] > 0 for r in rows)
