"""Sweeps: a grid or random search over recipe fields, with Ray Tune's ASHA stopping weak trials early.

Every trial is an ordinary run in the store (`sweep` set to the sweep id), trained by core.worker.execute_run;
ASHA reads each epoch's test accuracy and stops a trial through the store's stop flag, so it ends 'stopped'.
Every trial records the sweep's owner (who launched it); MNIST_LAB_SWEEPS=teachers lets only teachers launch.

    python -m core.sweep --model Model3 --epochs 6 --lr 0.01,0.05,0.1 --batch-size 64,128 --search grid
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.config import ConfigError, TrainConfig, recipe
from core.identity import User, check_may_sweep, owner_of, settings
from core.launch import spawn_detached
from core.ray_exec import connect
from core.ray_exec import ray_address as configured_address
from core.runs import Run, RunStore, StoreError

SEARCHABLE = {"lr": float, "batch_size": int, "dropout": float, "scheduler": str, "augment": bool, "seed": int}


def parse_values(kind: type, text: str) -> list:
    """Comma-separated values of one searchable field's type ("0.01, 0.05" -> [0.01, 0.05]; bools: true/false)."""

    def one(s: str):
        if kind is not bool:
            return kind(s)
        if s.lower() not in ("true", "false"):  # bool("false") would be True
            raise ValueError(s)
        return s.lower() == "true"

    try:
        return [one(s.strip()) for s in text.split(",") if s.strip()]
    except ValueError:
        what = "true/false" if kind is bool else f"{kind.__name__} values"
        raise ConfigError(f"{text!r} is not a comma-separated list of {what}") from None


def search_space(fields: dict[str, str | list]) -> dict[str, list]:
    """Field -> values to try, from comma-separated text or values already chosen; a field given no value is
    left out (its trials keep the recipe's value)."""
    unknown = sorted(set(fields) - set(SEARCHABLE))
    if unknown:
        raise ConfigError(f"cannot search over {', '.join(unknown)}; searchable: {', '.join(SEARCHABLE)}")
    space = {k: parse_values(SEARCHABLE[k], v) if isinstance(v, str) else list(v) for k, v in fields.items()}
    return {k: v for k, v in space.items() if v}


def sweep_log(sweep_id: str) -> Path:
    """Where a launched sweep's output goes."""
    return Path(tempfile.gettempdir()) / f"mnist-lab-{sweep_id}.log"


@dataclass
class SweepSpec:
    model: str = "Model3"
    space: dict[str, list] = field(default_factory=lambda: {"lr": [0.01, 0.05]})  # field -> values to try
    base: dict = field(default_factory=dict)  # other TrainConfig fields, e.g. epochs, train_limit
    recipe: str = "reference"  # the model's recipe the searched fields override
    search: str = "grid"  # grid: every combination; random: `samples` draws
    samples: int = 4  # random: trials; grid: repeats of the whole grid
    grace: int = 1  # ASHA: epochs every trial gets before it can be stopped
    reduction: int = 2  # ASHA: keep the top 1/reduction at each rung
    max_concurrent: int | None = None  # None: as many as the cluster has CPUs for
    cpus_per_trial: float = 1.0

    def validate(self) -> SweepSpec:
        search_space(self.space)  # refuses fields that cannot be searched
        if not self.space or any(not v for v in self.space.values()):
            raise ConfigError("give at least one value for each searched field")
        if self.search not in ("grid", "random"):
            raise ConfigError(f"search must be grid or random, got {self.search!r}")
        for config in self.trial_configs_preview():
            config.validate()
        return self

    def config(self, params: dict) -> TrainConfig:
        return recipe(self.model, self.recipe, **{**self.base, **params})

    def trial_configs_preview(self) -> list[TrainConfig]:
        """One config per value of each field (validates every value without the full product)."""
        return [self.config({k: v}) for k, values in self.space.items() for v in values]


def _trial_class():
    from ray import tune

    from core.train import EpochResult, StopRequested
    from core.worker import execute_run

    class RunTrial(tune.Trainable):
        """One sweep trial = one stored run trained by execute_run in a thread; step() hands Tune its next epoch.
        The thread waits after each epoch until Tune asks for the next one, so ASHA decides before it trains on."""

        def setup(self, searched, spec: SweepSpec, sweep_id: str, store_url: str, data_root: str | None,
                  owner: str | None = None):
            self.config_ = spec.config(searched)  # searched: this trial's value of each searched field
            self.store = RunStore(store_url)
            self.run_id = self.store.create_run(self.config_, label=f"{sweep_id} " + _describe(searched), sweep=sweep_id,
                                                 params=self.config_.parameter_count(), owner=owner)
            self.results: queue.Queue = queue.Queue()
            self.go = threading.Semaphore(0)  # released by step() for every epoch after the first
            self.done = False
            self.stopping = False  # set by cleanup(): ASHA (or the sweep's end) stopped this trial

            def on_epoch(result: EpochResult) -> None:
                self.results.put(result)
                self.go.acquire()
                if self.stopping:  # at once, not after the next epoch's first store poll: on a small training set
                    raise StopRequested  # a whole epoch could finish before that poll reads the stop flag

            def train() -> None:
                try:
                    self.results.put(execute_run(self.run_id, store_url, data_root, max_running=None,
                                                 on_epoch=on_epoch, log=lambda _: None))
                except BaseException as e:  # noqa: BLE001 - handed to step(), which raises it in Tune's thread
                    self.results.put(e)

            self.thread = threading.Thread(target=train, name=f"run-{self.run_id}", daemon=True)
            self.thread.start()

        def step(self) -> dict:
            if self.iteration > 0:
                self.go.release()
            item = self.results.get()
            if isinstance(item, EpochResult):
                self.done = item.epoch >= self.config_.epochs
                return {"test_acc": item.test_acc, "epoch": item.epoch, "run_id": self.run_id, "done": self.done}
            if isinstance(item, BaseException):
                raise item
            run = self.store.get(self.run_id)  # ended before its last epoch: stopped by hand, or failed
            raise RuntimeError(f"run {self.run_id} ended {item} after epoch {run.epoch}: {run.error or 'stopped'}")

        def cleanup(self) -> None:
            # ASHA stopping the trial (or the sweep ending): the run stops through the store, like any run
            if not self.done:
                self.stopping = True
                self.store.request_stop(self.run_id)
            self.go.release()
            self.thread.join(timeout=120)

    return RunTrial


def _describe(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()))


def new_sweep_id() -> str:
    return time.strftime("sweep-%Y%m%d-%H%M%S")


def run_sweep(spec: SweepSpec, store_url: str | None = None, data_root: str | None = None,
              ray_address: str | None = None, sweep_id: str | None = None, owner: str | None = None) -> list[Run]:
    """Run the sweep to its end (locally or on the Ray cluster) and return its trials, newest first; each
    trial's run records `owner`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    spec.validate()
    sweep_id = sweep_id or new_sweep_id()
    store = RunStore(store_url)
    connect(ray_address or configured_address() or "local")
    epochs = spec.config({}).epochs
    choose = tune.grid_search if spec.search == "grid" else tune.choice
    trainable = tune.with_resources(
        tune.with_parameters(_trial_class(), spec=spec, sweep_id=sweep_id, store_url=store.url, data_root=data_root,
                             owner=owner),
        {"cpu": spec.cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={k: choose(list(v)) for k, v in spec.space.items()},
        tune_config=tune.TuneConfig(
            metric="test_acc", mode="max", num_samples=spec.samples if spec.search == "random" else 1,
            max_concurrent_trials=spec.max_concurrent,
            scheduler=ASHAScheduler(max_t=epochs, grace_period=spec.grace, reduction_factor=spec.reduction),
        ),
        run_config=tune.RunConfig(
            name=sweep_id, storage_path=tempfile.mkdtemp(prefix="mnist-lab-tune-"), verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),  # checkpoints live in the store
        ),
    )
    tuner.fit()
    settle(store, sweep_id)
    return store.list_runs(sweep=sweep_id)


def settle(store: RunStore, sweep_id: str, timeout: float = 120.0) -> None:
    """Wait until no trial of the sweep is still queued or running.

    Tune can return while the last trials' actors are still winding down (saving the epoch they were
    in, after ASHA stopped them), or after it tore an actor down mid-way. Tune is done with every trial
    by now, so any that is still active is asked to stop; dead ones are reconciled (`stopped` when a
    stop had been asked, else `interrupted`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store.reconcile()
        active = [r for r in store.list_runs(sweep=sweep_id) if r.status in ("queued", "running")]
        if not active:
            return
        for r in active:
            if not r.stop_requested:
                store.request_stop(r.id)
        time.sleep(0.5)


def command_line(spec: SweepSpec, sweep_id: str, store_url: str, data_root: str | None = None,
                 owner: str | None = None) -> list[str]:
    """The `python -m core.sweep ...` command that runs this spec (what the Sweeps page launches)."""
    cmd = [sys.executable, "-m", "core.sweep", "--model", spec.model, "--recipe", spec.recipe, "--search", spec.search,
           "--samples", str(spec.samples), "--grace", str(spec.grace), "--reduction", str(spec.reduction),
           "--sweep-id", sweep_id, "--runs", store_url]
    for key in ("epochs", "train_limit", "test_limit"):
        if key in spec.base:
            cmd += [f"--{key.replace('_', '-')}", str(spec.base[key])]
    for key, values in spec.space.items():
        cmd += [f"--{key.replace('_', '-')}", ",".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    if spec.max_concurrent:
        cmd += ["--max-concurrent", str(spec.max_concurrent)]
    if data_root:
        cmd += ["--data", str(data_root)]
    if owner:
        cmd += ["--owner", owner]
    return cmd


def launch_sweep(spec: SweepSpec, store_url: str, data_root: str | None = None, sweep_id: str | None = None,
                 user: User | None = None) -> str:
    """Start the sweep of `user` as a background process (it outlives the caller); returns the sweep id. Output
    goes to sweep_log(sweep id). NotAllowed when sweeps are for teachers only (core.identity.check_may_sweep)."""
    check_may_sweep(user, settings())
    spec.validate()
    sweep_id = sweep_id or new_sweep_id()
    spawn_detached(command_line(spec, sweep_id, store_url, data_root, owner_of(user)), sweep_log(sweep_id))
    return sweep_id


def _argument_values(kind: type):
    """parse_values as an argparse type: a bad list is a usage error that quotes the message."""

    def parse(text: str) -> list:
        try:
            return parse_values(kind, text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.sweep", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = SweepSpec()
    p.add_argument("--model", default=d.model)
    p.add_argument("--recipe", choices=("seed", "reference"), default=d.recipe, help="base recipe of every trial")
    g = p.add_argument_group("search space (comma-separated values)")
    for name, kind in SEARCHABLE.items():
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, type=_argument_values(kind))
    p.add_argument("--search", choices=("grid", "random"), default=d.search)
    p.add_argument("--samples", type=int, default=d.samples, help="random: number of trials; grid: repeats")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (ASHA's max_t); default: the recipe's")
    p.add_argument("--train-limit", type=int, default=0, help="first N training images only (0 = all)")
    p.add_argument("--test-limit", type=int, default=0, help="first N test images only (0 = all)")
    p.add_argument("--grace", type=int, default=d.grace, help="ASHA: epochs before a trial can be stopped")
    p.add_argument("--reduction", type=int, default=d.reduction, help="ASHA: keep the top 1/N at each rung")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as CPUs allow)")
    p.add_argument("--sweep-id", default=None, help="name of the sweep in the store (default: sweep-<time>)")
    p.add_argument("--data", default=None, help="MNIST root holding MNIST/raw/ (default: $MNIST_ROOT)")
    p.add_argument("--runs", default=None, help="run store URL (default: $MNIST_LAB_DB, else runs/runs.db)")
    p.add_argument("--ray", default=None, help="Ray address: auto, ray://host:port, local (default: $MNIST_LAB_RAY, else local)")
    p.add_argument("--owner", default=None, help="the user the trials belong to (what the Sweeps page passes)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base = {"train_limit": args.train_limit, "test_limit": args.test_limit}
    if args.epochs:
        base["epochs"] = args.epochs
    spec = SweepSpec(model=args.model, recipe=args.recipe, base=base, search=args.search, samples=args.samples,
                     space={k: getattr(args, k) for k in SEARCHABLE if getattr(args, k)} or SweepSpec().space,
                     grace=args.grace, reduction=args.reduction, max_concurrent=args.max_concurrent)
    sweep_id = args.sweep_id or new_sweep_id()
    try:
        spec.validate()
        print(f"{sweep_id}: {spec.search} search over {_describe(spec.space)}", flush=True)
        trials = run_sweep(spec, args.runs, args.data, args.ray, sweep_id, owner=args.owner)
    except (ConfigError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for run in sorted(trials, key=lambda r: -(r.best_test_acc or 0)):
        best = f"{run.best_test_acc:6.2f}%" if run.best_test_acc is not None else "   -   "
        print(f"run {run.id:>5}  {run.status:<11} epoch {run.epoch}/{run.config.epochs}  best {best}  {run.label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
