"""Queue positions and time estimates, from the epochs a store recorded (or the shipped runs)."""

import os

import pytest

from core import estimate
from core.config import TrainConfig
from core.runs import RunStore
from core.train import EpochResult


@pytest.fixture
def store(tmp_path):
    return RunStore(str(tmp_path / "runs.db"))


def finished_run(store, config, seconds):
    run_id = store.create_run(config)
    for e in range(1, config.epochs + 1):
        store.add_epoch(run_id, EpochResult(e, 0.1, 97.0, 0.1, 98.0, 0.01, seconds))
    store.finish(run_id, "finished")
    return run_id


def test_epoch_time_comes_from_this_machines_runs_scaled_by_images(store):
    finished_run(store, TrainConfig(model="Tiny4k", epochs=2, train_limit=6000, test_limit=1000), 10.0)
    same = estimate.epoch_seconds(store, TrainConfig(model="Tiny4k", train_limit=6000, test_limit=1000))
    double = estimate.epoch_seconds(store, TrainConfig(model="Tiny4k", train_limit=12000, test_limit=2000))
    assert same == pytest.approx(10.0) and double == pytest.approx(20.0)
    shipped = estimate.epoch_seconds(store, TrainConfig(model="Model2"))  # none here: the shipped run's pace
    assert shipped is not None and shipped > 0


def test_a_tiny_runs_pace_does_not_set_a_full_runs_estimate(store):
    """A 300-image epoch of 3 s is mostly fixed costs: scaled to 60,000 images it promised ~10 minutes an epoch
    (hours for a run); the shipped run of the variant is the fairer yardstick, and a tiny run still sets a tiny
    run's pace."""
    finished_run(store, TrainConfig(model="Model3", epochs=1, train_limit=300, test_limit=100), 3.0)
    full = estimate.epoch_seconds(store, TrainConfig(model="Model3"))
    shipped = estimate.epoch_seconds(RunStore(str(store.where) + ".empty.db"), TrainConfig(model="Model3"))
    assert full == pytest.approx(shipped) and full < 3.0 * 60_000 / 300 / 4
    assert estimate.epoch_seconds(store, TrainConfig(model="Model3", train_limit=600, test_limit=100)) == \
        pytest.approx(3.0 * 620 / 320)


def test_queued_runs_get_their_position_and_start_after_the_one_ahead(store):
    finished_run(store, TrainConfig(model="Model2c", epochs=1, train_limit=6000, test_limit=1000), 10.0)
    config = TrainConfig(model="Model2c", epochs=4, train_limit=6000, test_limit=1000)
    running = store.create_run(config)
    store.claim(running, os.getpid())
    for e in (1, 2):
        store.add_epoch(running, EpochResult(e, 0.1, 97.0, 0.1, 98.0, 0.01, 10.0))
    first, second = store.create_run(config), store.create_run(config.replace(epochs=2))
    entries = {e.run.id: e for e in estimate.queue(store, slots=1)}
    assert entries[running].position is None and entries[running].ends_in == pytest.approx(20.0)
    assert (entries[first].position, entries[first].starts_in, entries[first].ends_in) == (1, pytest.approx(20.0), pytest.approx(60.0))
    assert (entries[second].position, entries[second].starts_in, entries[second].ends_in) == (2, pytest.approx(60.0), pytest.approx(80.0))
    two_slots = {e.run.id: e for e in estimate.queue(store, slots=2)}
    assert two_slots[first].starts_in == 0.0 and two_slots[second].starts_in == pytest.approx(20.0)
    assert estimate.describe(20) == "~20 s" and estimate.describe(600) == "~10 min" and estimate.describe(None) == "unknown"
    store.finish(running, "stopped")


def test_a_queued_run_waits_for_the_slot_time_runs_here_take_beyond_their_epochs(store):
    done = store.create_run(TrainConfig(model="Model2c", epochs=1, train_limit=6000, test_limit=1000))
    assert store.claim(done, os.getpid())
    store.add_epoch(done, EpochResult(1, 0.1, 97.0, 0.1, 98.0, 0.01, 10.0))
    store.finish(done, "finished")
    run = store.get(done)
    store.update(done, started_at=run.ended_at - 16.0)  # 10 s of epoch, 6 s of loading and saving around it
    assert estimate.overhead_seconds(store) == pytest.approx(6.0)
    config = TrainConfig(model="Model2c", epochs=1, train_limit=6000, test_limit=1000)
    first, second = store.create_run(config), store.create_run(config)
    entries = {e.run.id: e for e in estimate.queue(store, slots=1)}
    assert entries[first].starts_in == 0.0 and entries[first].ends_in == pytest.approx(16.0)
    assert entries[second].starts_in == pytest.approx(16.0)


def test_the_slot_time_counts_the_idle_gap_before_a_waiting_run_claimed_it(store):
    config = TrainConfig(model="Model2c", epochs=1, train_limit=6000, test_limit=1000)
    first, second = store.create_run(config), store.create_run(config)  # the second waits for the first
    for run_id in (first, second):
        assert store.claim(run_id, os.getpid())
        store.add_epoch(run_id, EpochResult(1, 0.1, 97.0, 0.1, 98.0, 0.01, 10.0))
        store.finish(run_id, "finished")
    t0 = store.get(first).started_at
    store.update(first, started_at=t0, ended_at=t0 + 16.0)  # 6 s beyond its epoch
    store.update(second, started_at=t0 + 20.0, ended_at=t0 + 36.0)  # claimed 4 s after the slot came free
    assert estimate.overhead_seconds(store) == pytest.approx((6.0 + 4.0 + 6.0) / 2)
