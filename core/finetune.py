"""Fine-tuning on your own digits: where a run's first weights come from (`--init`), the checks made before a
fine-tune is recorded, and the before/after figures the My digits page shows.

    python -m core.train --model Model3 --init reference --extra-data DIR   # the fine-tuning recipe (config.FINETUNE)
    python -m core.finetune RUN_ID --held-out DIR [--runs URL]   # before/after on held-out own digits and MNIST test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

from core.config import ConfigError, TrainConfig, finetune_recipe
from core.data import MNIST, DataError, load_mnist
from core.digits import DigitsError, as_tensors, finetune_folder, read_image_folder, split_held_out, write_image_folder
from core.runs import Run, RunStore, StoreError, load_state_bytes
from core.train import evaluate

HELD_OUT = "held-out"  # sub-folder of a page's fine-tune folder: the own digits kept out of training
TRAIN = "train"  # ... and those it trains on (the run's extra_data)


def initial_state(config: TrainConfig, store: RunStore) -> dict | None:
    """The checkpoint ({"model": weights, "config": ...}) a run starts from (None: random weights); one
    StoreError/ConfigError line when there is none: no shipped weights, no such run, no checkpoint, another variant."""
    if not config.init:
        return None
    # Imported here: core.reference imports core.worker, which imports this module.
    from core.reference import REFERENCE_DIR, reference_names

    if config.init == "reference":
        if config.model not in reference_names():
            raise StoreError(f"init reference: {config.model} has no shipped reference weights; use init run:N "
                             "(a run of yours), or ship them with python -m core.reference")
        path = REFERENCE_DIR / f"{config.model}.pt"
        state = load_state_bytes(path.read_bytes(), str(path), ("model", "config"))
    else:
        run_id = int(config.init[4:])
        run = store.get(run_id)  # "no run N in <store>"
        if not store.has_checkpoint(run_id, "best"):
            raise StoreError(f"init run:{run_id}: run {run_id} ({run.status}) has no checkpoint to start from; pick a "
                             "run that has one (a run saves it at its first epoch with a test accuracy above 0%)")
        state = store.load_checkpoint(run_id, "best", ("model", "config"))
    source = TrainConfig.from_json(state["config"]).model
    if source != config.model:
        raise ConfigError(f"init {config.init} holds a {source}, not a {config.model}: use model {source}")
    return state


def initial_weights(config: TrainConfig, store: RunStore) -> dict | None:
    """The state_dict a run's model starts from (None: random)."""
    state = initial_state(config, store)
    return None if state is None else state["model"]


def check_finetune(config: TrainConfig, store: RunStore) -> int:
    """Refuse, before a run is recorded, a fine-tune that could not start: its init weights and its extra data
    are read once here (one clear line each). Returns the number of extra pictures (0 without extra data)."""
    initial_state(config, store)
    return len(read_image_folder(config.extra_data)) if config.extra_data else 0


def prepare_finetune(store: RunStore, rows: list[dict], model: str, init: str, **settings) -> TrainConfig:
    """For the page: check a fine-tune of `model` from `init` on the labelled set `rows` (RunStore.digits, with
    pictures), then write the set to a new folder beside the store, every HELD_OUT_EVERY-th picture of each
    digit held out, and return the run's config (extra_data: the training part). Nothing is written on refusal."""
    train, held = split_held_out(rows)
    if not train:
        raise DigitsError("no digits to fine-tune on yet: label some on Draw (This is a ...) or import a zip")
    folder = finetune_folder(store)
    config = finetune_recipe(model, init=init, extra_data=str(folder / TRAIN), **settings)
    initial_state(config, store)
    write_image_folder(train, folder / TRAIN)
    if held:
        write_image_folder(held, folder / HELD_OUT)
    return config


def finetunes(runs: list[Run]) -> list[Run]:
    """The runs a page started to fine-tune on own digits (an init, and a held-out folder beside their pictures)."""
    return [r for r in runs if r.config.init and r.config.extra_data and Path(r.config.extra_data).name == TRAIN]


def model_of(state: dict) -> nn.Module:
    from core.reference import model_from_state  # see initial_state

    return model_from_state(state)


def held_out_folder(config: TrainConfig) -> Path | None:
    """The held-out own digits of a fine-tune the page started (beside its training folder), else None."""
    if not config.extra_data or Path(config.extra_data).name != TRAIN:
        return None
    folder = Path(config.extra_data).parent / HELD_OUT
    return folder if folder.is_dir() else None


def before_after(store: RunStore, run: Run, mnist: MNIST, held_out: str | Path | None = None) -> dict | None:
    """Accuracy (%) of a fine-tune's starting model ("before") and of its best checkpoint ("after") on held-out
    own digits (an ImageFolder; default: the one a page's fine-tune set beside its training folder) and on the
    whole MNIST test set: {"before": {"own": .., "mnist": ..}, "after": .., "held_out": n}. None for a run
    without init or without a best checkpoint yet."""
    if not run.config.init or not store.has_checkpoint(run.id, "best"):
        return None
    if held_out is not None:
        own = as_tensors(read_image_folder(held_out))  # asked for by name: a bad folder is an error
    else:
        try:
            folder = held_out_folder(run.config)
            own = as_tensors(read_image_folder(folder)) if folder else None
        except DigitsError:  # the page's folder was removed: show MNIST only
            own = None
    out = {"held_out": 0 if own is None else len(own[1])}
    for when, state in (("before", initial_state(run.config, store)), ("after", store.load_checkpoint(run.id, "best"))):
        model = model_of(state)
        with torch.inference_mode():
            out[when] = {"own": evaluate(model, *own)[1] if own else None, "mnist": evaluate(model, mnist.test_x, mnist.test_y)[1]}
    return out


def format_before_after(figures: dict) -> str:
    own = f"held-out own digits ({figures['held_out']})"
    lines = [f"{'':8}{own:>28}{'MNIST test (10,000)':>22}"]
    for when in ("before", "after"):
        f = figures[when]
        own_acc = "-" if f["own"] is None else f"{f['own']:.2f}%"
        lines.append(f"{when:8}{own_acc:>28}{f['mnist']:>21.2f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.finetune",
                                description="Before/after of a fine-tune: its init model and its best checkpoint.")
    p.add_argument("run_id", type=int)
    p.add_argument("--held-out", default=None, help="an ImageFolder of own digits the run did not train on "
                   "(default: the held-out folder a page's fine-tune wrote)")
    p.add_argument("--runs", default=None, help="run store: database URL or SQLite file (default: $MNIST_LAB_DB, else runs/runs.db)")
    p.add_argument("--data", default=None, help="MNIST root holding MNIST/raw/ (default: $MNIST_ROOT, else ./data)")
    args = p.parse_args(argv)
    try:
        store = RunStore(args.runs)
        run = store.get(args.run_id)
        figures = before_after(store, run, load_mnist(args.data), args.held_out)
    except (ConfigError, StoreError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if figures is None:
        print(f"error: run {run.id} is no fine-tune (no init), or has no best checkpoint yet", file=sys.stderr)
        return 2
    print(f"run {run.id}: {run.model} from {run.config.init}, extra data {run.config.extra_data or '-'}")
    print(format_before_after(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
