"""Command line for `python -m core.train`: flags are generated from TrainConfig, so defaults live in one place."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from core.config import FINETUNE, FINETUNE_LR_FACTOR, ConfigError, TrainConfig, finetune_recipe, recipe
from core.data import DataError, load_mnist
from core.finetune import check_finetune
from core.ray_exec import RayError, ray_address, submit_run
from core.runs import RunStore, StoreError
from core.train import EpochResult, fit_to_data, pick_device
from core.worker import execute_run

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 1, 2, 3
FIELD_HELP = {
    "model": "model variant (python -m core.models lists them)",
    "lr": "learning rate (peak lr for onecycle)",
    "dropout": "dropout rate; default: the model's own",
    "train_limit": "train on the first N images only (0 = all)",
    "test_limit": "test on the first N images only (0 = all)",
    "device": "auto = CUDA when present, else CPU with all cores",
    "augment": "random rotation/shift/zoom of each training batch",
    "init": "start from trained weights: reference (the variant's shipped ones) or run:N (run N's best checkpoint); "
            "switches the defaults to the fine-tuning recipe",
    "extra_data": "an ImageFolder DIR/<digit>/*.png|jpg (your own digits, read like a drawing) mixed into every "
                  "training batch and augmented like MNIST",
    "extra_share": "fraction of each training batch taken from --extra-data",
    "ema": "test and save an exponential moving average of the weights (0 = off), its decay at step n "
           "min(EMA, (1+n)/(10+n)): the trained weights keep learning, the average is measured, checkpointed, shipped",
}
FINETUNE_HELP = (
    "With --init (and no --recipe) the defaults are the fine-tuning recipe: the variant's reference recipe with "
    + ", ".join(f"{k} {v}" for k, v in FINETUNE.items())
    + f" and lr {FINETUNE_LR_FACTOR:g} x its peak lr; flags override."
)


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m core.train",
        description="Train an MNIST variant; every run is recorded in the run store. " + FINETUNE_HELP,
        epilog="Exit status: 0 finished, 1 failed, 2 bad input, 3 stopped (Ctrl-C or a stop request).",
    )
    defaults = TrainConfig()
    g = p.add_argument_group("training config (defaults: the seed's Model3 recipe)")
    for f in dataclasses.fields(TrainConfig):
        default = getattr(defaults, f.name)
        kind = _bool if isinstance(default, bool) else (float if f.name == "dropout" else type(default))
        g.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=kind,
            default=None,  # None = not given, so a recipe's value is kept
            metavar=kind.__name__.lstrip("_").upper(),
            help=f"{FIELD_HELP.get(f.name, '')} (default: {default})".strip(),
        )
    p.add_argument("--recipe", choices=("seed", "reference"), default=None,
                   help="start from the model's seed recipe or its reference (tuned) recipe; flags then override")
    p.add_argument("--data", default=None, help="MNIST root holding MNIST/raw/ (default: $MNIST_ROOT, else ./data)")
    p.add_argument("--runs", default=None, help="run store: database URL or SQLite file (default: $MNIST_LAB_DB, else runs/runs.db)")
    p.add_argument("--run-id", type=int, default=None, help="train (or resume) this existing run from the store")
    p.add_argument("--label", default="", help="a name to show for the run in the dashboard")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run on Ray: auto, ray://host:port or local; none = a local process "
                        "(default: $MNIST_LAB_RAY, else a local process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, only the per-epoch lines")
    p.add_argument("--if-queued", action="store_true",
                   help="with --run-id: start the run only if it is still queued (what the dashboard launches, so a "
                        "run stopped before its process got going stays stopped); without it a stopped run resumes")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    if given.get("extra_data"):  # the training process starts in the project folder: keep the path it meant
        given["extra_data"] = str(Path(given["extra_data"]).expanduser().resolve())
    if args.recipe:
        return recipe(given.pop("model", TrainConfig.model), args.recipe, **given)
    if given.get("init"):
        return finetune_recipe(given.pop("model", TrainConfig.model), **given)
    return TrainConfig.from_dict(given)


def format_epoch(r, epochs: int) -> str:
    return (
        f"epoch {r.epoch:>2}/{epochs}  train loss {r.train_loss:.4f} acc {r.train_acc:6.2f}%  "
        f"test loss {r.test_loss:.4f} acc {r.test_acc:6.2f}%  lr {r.lr:.5f}  {r.seconds:5.1f}s"
    )


def follow_on_ray(store: RunStore, run_id: int, config: TrainConfig, data: str | None, address: str, on_epoch) -> str:
    """Submit the run to Ray and print its epochs from the store until it ends; Ctrl-C asks it to stop."""
    submit_run(run_id, store.url, data, address, config.device)
    print(f"run {run_id} submitted to Ray at {address}; Ctrl-C asks it to stop", flush=True)
    printed = 0
    while True:
        try:
            run = store.get(run_id)
            for row in store.epochs(run_id)[printed:]:
                on_epoch(EpochResult(**{k: v for k, v in row.items() if k != "run_id"}))
                printed += 1
            if not run.active:
                return run.status
            time.sleep(1.0)
        except KeyboardInterrupt:
            store.request_stop(run_id)
            print(f"stop requested for run {run_id}; waiting for it to finish its batch", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def fail(msg: str, code: int) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return code

    try:
        store = RunStore(args.runs)
        store.reconcile()
        if args.run_id is not None:
            explicit = [f.name for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None]
            if explicit or args.recipe:
                return fail(f"--run-id takes its config from the store; drop {', '.join(explicit) or '--recipe'}", EXIT_BAD_INPUT)
            run_id = args.run_id
            config = store.get(run_id).config
        else:
            config = config_from_args(args)
            pick_device(config.device)  # refuse before recording a run: no data, no device, a batch too big
            extra = check_finetune(config, store)  # init weights and extra pictures readable
            if extra:
                print(f"note: {extra} extra pictures from {config.extra_data}, {config.extra_share:.0%} of each batch", flush=True)
            for note in fit_to_data(config, load_mnist(args.data)):
                print(f"note: {note}", flush=True)
            run_id = store.create_run(config, label=args.label, params=config.parameter_count(), pid=os.getpid())
    except (ConfigError, StoreError, DataError) as e:
        return fail(str(e), EXIT_BAD_INPUT)

    print(f"run {run_id} in {store.safe_url}\nconfig {config.to_json()}", flush=True)
    bar = None
    use_bar = not args.quiet and sys.stderr.isatty()

    def on_batch(done: int, total: int) -> None:
        nonlocal bar
        if not use_bar:
            return
        if bar is None:
            bar = tqdm(total=total, leave=False, unit="batch", dynamic_ncols=True)
        bar.update(done - bar.n)

    def on_epoch(r) -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None
        print(format_epoch(r, config.epochs), flush=True)

    t0 = time.perf_counter()
    address = ray_address() if args.ray is None else (None if args.ray.lower() == "none" else args.ray)
    try:
        if address:
            status = follow_on_ray(store, run_id, config, args.data, address, on_epoch)
        else:
            status = execute_run(run_id, store.url, args.data, only_if_queued=args.if_queued, on_epoch=on_epoch, on_batch=on_batch)
    except (DataError, StoreError, RayError) as e:
        return fail(str(e), EXIT_BAD_INPUT)
    finally:
        if bar is not None:
            bar.close()
    run = store.get(run_id)
    wall = time.perf_counter() - t0
    if status == "failed":
        return fail(f"run {run_id} failed: {run.error}", EXIT_FAILED)
    epochs = store.epochs(run_id)
    if epochs:
        best = max(epochs, key=lambda e: e["test_acc"])
        print(f"{status}: run {run_id}, best test acc {best['test_acc']:.2f}% at epoch {best['epoch']}, wall time {wall:.1f}s")
    else:
        print(f"{status}: run {run_id}, no epoch finished, wall time {wall:.1f}s")
    return EXIT_STOPPED if status == "stopped" else 0
