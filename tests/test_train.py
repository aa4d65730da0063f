import pytest
import torch
import torch.nn.functional as F

from core.config import ConfigError, TrainConfig, recipe
from core.data import load_mnist
from core.train import StopRequested, Trainer, TrainingDiverged, evaluate, train_step


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{"model": "Model3", "epochs": 2, "batch_size": 64, **kw})


def metrics(r) -> tuple:
    return (r.train_loss, r.train_acc, r.test_loss, r.test_acc, r.lr)


def run_all(trainer: Trainer) -> list[tuple]:
    return [metrics(r) for r in trainer.epochs()]


def test_train_step_loss_is_cross_entropy(synthetic_root):
    data = load_mnist(synthetic_root)
    torch.manual_seed(0)
    trainer = Trainer(tiny(model="Model2"), data)  # no dropout: two forward passes agree
    x, y = data.train_x[:32], data.train_y[:32]
    expected = F.cross_entropy(trainer.model(x), y).item() * 32
    loss_sum, correct = train_step(trainer.model, trainer.optimizer, x, y, label_smoothing=0.0)
    assert loss_sum.item() == pytest.approx(expected, rel=1e-5)
    assert 0 <= correct.item() <= 32


def test_same_seed_same_metrics_and_another_seed_differs(synthetic_root):
    data = load_mnist(synthetic_root)
    a, b = run_all(Trainer(tiny(), data)), run_all(Trainer(tiny(), data))
    assert a == b
    assert run_all(Trainer(tiny(seed=2), data)) != a


@pytest.mark.parametrize("scheduler,ema", [("onecycle", 0.0), ("plateau", 0.0), ("step", 0.0), ("onecycle", 0.99)])
def test_resume_at_an_epoch_boundary_replays_exactly(synthetic_root, scheduler, ema):
    data = load_mnist(synthetic_root)
    cfg = tiny(epochs=3, scheduler=scheduler, lr=0.05, ema=ema)
    straight = run_all(Trainer(cfg, data))
    first = Trainer(cfg, data)
    head = [metrics(next(first.epochs()))]
    resumed = Trainer(cfg, data)
    resumed.load_state_dict(first.state_dict())
    assert head + run_all(resumed) == straight


def test_with_ema_the_weight_average_is_tested_and_saved_and_sgd_keeps_its_own_weights(synthetic_root):
    data = load_mnist(synthetic_root)
    trainer = Trainer(tiny(epochs=1, ema=0.99), data)
    result = next(trainer.epochs())
    state = trainer.state_dict()
    average, trained = state["model"], state["trained_model"]
    assert trainer.tested_model is not trainer.model
    assert all(torch.equal(average[k], v) for k, v in trainer.tested_model.state_dict().items())
    assert all(torch.equal(trained[k], v) for k, v in trainer.model.state_dict().items())
    moved = [k for k in average if average[k].is_floating_point() and not torch.equal(average[k], trained[k])]
    assert "net.convblock1.0.weight" in moved or "convblock1.0.weight" in moved
    assert any("running_mean" in k for k in moved)  # batch-norm statistics are averaged too
    assert evaluate(trainer.tested_model, trainer.data.test_x, trainer.data.test_y)[1] == result.test_acc
    without = Trainer(tiny(epochs=1), data)
    next(without.epochs())
    assert without.tested_model is without.model and "trained_model" not in without.state_dict()


def test_stop_request_finishes_the_current_batch_then_stops(synthetic_root):
    trainer = Trainer(tiny(), load_mnist(synthetic_root))
    seen = []
    with pytest.raises(StopRequested):
        for _ in trainer.epochs(on_batch=lambda done, total: seen.append(done), should_stop=lambda: len(seen) >= 3):
            pass
    assert seen == [1, 2, 3] and trainer.epochs_done == 0


def test_bad_settings_are_refused_with_their_name():
    for bad, word in [({"lr": -1}, "lr"), ({"model": "Nope"}, "unknown model"), ({"epochs": 0}, "epochs"),
                      ({"optimizer": "rmsprop"}, "optimizer"), ({"batch_size": "64"}, "batch_size"), ({"colour": 1}, "unknown setting"),
                      ({"lr": float("inf")}, "lr must be a finite number"), ({"weight_decay": float("nan")}, "weight_decay must be a finite"),
                      ({"dropout": float("nan")}, "dropout must be a finite")]:
        with pytest.raises(ConfigError, match=word):
            TrainConfig.from_dict({"model": "Model3", **bad})


def test_a_diverging_run_stops_with_a_clear_error_after_the_epoch_it_diverged_in(synthetic_root):
    trainer = Trainer(tiny(model="Model1", lr=1000.0, epochs=5, scheduler="none"), load_mnist(synthetic_root))
    done = []
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch \d: the loss became nan \(lr 1000.0 is likely too high"):
        for r in trainer.epochs():
            done.append(r.epoch)
    assert trainer.epochs_done == len(done) < 5  # the epochs before it stand


def test_config_round_trips_through_json():
    cfg = recipe("Model3", "reference", seed=7)
    assert TrainConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.slow
def test_short_run_on_real_mnist_beats_90_percent(mnist_root):
    cfg = recipe("Model3", "reference", epochs=2, train_limit=6000, test_limit=2000)
    results = list(Trainer(cfg, load_mnist(mnist_root)).epochs())
    assert results[-1].test_acc > 90.0, results
