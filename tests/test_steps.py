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


def test_update_watch_tells_a_stuck_layer_from_a_learning_one():
    import torch

    from core.health import UpdateWatch
    from core.models import build_model

    torch.manual_seed(0)
    model = build_model("Model3")
    stuck = model.convblock4[0].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    watch = UpdateWatch(model)
    watch.arm()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 1, 28, 28)), torch.randint(0, 10, (16,)))
    loss.backward()
    stuck.grad.zero_()  # this layer gets no gradient: it cannot learn
    opt.step()
    rows = {r["layer"]: r for r in watch.measure()}
    assert len(rows) == 8 and not watch.armed  # seven convs and the head
    assert rows["convblock4.0"]["update_ratio"] == 0.0 and rows["convblock4.0"]["grad_norm"] == 0.0
    others = [r["update_ratio"] for name, r in rows.items() if name != "convblock4.0"]
    assert all(1e-5 < u < 1 for u in others), others


def test_training_records_layer_health_and_activation_summaries(store_url, tmp_path, monkeypatch):
    import core.worker as worker

    monkeypatch.setattr(worker, "HEALTH_SECONDS", 0.0)  # measure every other step
    root = make_synthetic_mnist(tmp_path / "mnist", n_train=320, n_test=128)
    store = RunStore(store_url)
    run_id = store.create_run(TrainConfig(model="Model3", epochs=2, batch_size=64, device="cpu"))
    assert execute_run(run_id, store, str(root), max_running=None, log=lambda s: None) == "finished"
    health = store.layer_health(run_id)
    layers = {r["layer"] for r in health}
    assert layers == {f"convblock{i}.0" for i in range(1, 8)} | {"head"}
    assert all(r["weight_norm"] > 0 and 0 < r["update_ratio"] < 1 for r in health)
    assert len({r["step"] for r in store.layer_health(run_id, max_steps=2)}) <= 3  # thinned by step, all layers kept
    acts = store.activations(run_id)
    assert [r["block"] for r in acts] == [f"convblock{i}" for i in range(1, 8)] and {r["epoch"] for r in acts} == {2}
    first = acts[0]
    assert 0 <= first["dead_frac"] <= 1 and sum(first["histogram"]["counts"]) == 128 * 8 * 26 * 26
    assert len(store.activations(run_id, epoch=1)) == 7
