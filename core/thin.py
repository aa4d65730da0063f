"""How far down the <8k plan goes: train the shared conv stack with other widths under Tiny4k's recipe.

    python -m core.thin 6,10,6,10,10,10,10 --seed 1          # conv1..conv7 widths
    python -m core.thin 8,8,8,8,8,8,8 --set weight_decay=0   # recipe overrides (JSON values)
    python -m core.thin 8,12,8,22,22,22,22 --separable       # conv4..conv7 depthwise-separable (as Sep4k's)

Made the "How far down it goes" table in the README. Prints every epoch and then one line with the
parameter count and the test accuracy of the last three epochs. An exploration, not a run: nothing is
written to the run store, and the width plan is registered under a made-up name for this process only.
"""

from __future__ import annotations

import argparse

from core.cli import format_epoch
from core.config import ConfigError, TrainConfig, parse_overrides
from core.data import DataError, load_mnist
from core.models import MODELS, TUNED_TINY, ModelSpec, SmallNet, count_parameters
from core.train import Trainer


def register_widths(channels: tuple[int, ...], separable: bool = False) -> str:
    """Put a SmallNet with these seven widths (conv4..conv7 depthwise-separable with `separable`) into this
    process's registry; returns its name."""
    if len(channels) != 7 or min(channels) < 1:
        raise ConfigError(f"need seven positive widths (conv1..conv7), got {list(channels)}")
    name = "SmallNet_" + ("sep_" if separable else "") + "_".join(map(str, channels))

    class Thin(SmallNet):
        def __init__(self, dropout: float = 0.0):
            super().__init__(channels=channels, dropout=dropout, separable=separable)

    MODELS[name] = ModelSpec(name, Thin, f"SmallNet widths {list(channels)}", None, TUNED_TINY, TUNED_TINY)
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.thin", description=__doc__.splitlines()[0])
    p.add_argument("channels", help="seven comma-separated widths, conv1..conv7 (Tiny4k: 8,12,8,10,10,10,12)")
    p.add_argument("--separable", action="store_true", help="conv4..conv7 depthwise-separable (Sep4k: 8,12,8,26,26,26,26)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--data", default=None, help="MNIST root (default: $MNIST_ROOT, else ./data)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="*", default=[],
                   help="override Tiny4k's recipe (JSON values), e.g. weight_decay=0 optimizer=adam")
    args = p.parse_args(argv)
    try:
        name = register_widths(tuple(int(c) for c in args.channels.split(",")), args.separable)
        overrides = parse_overrides(args.overrides)
        config = TrainConfig.from_dict({**TUNED_TINY, **overrides, "model": name, "seed": args.seed, "epochs": args.epochs})
        trainer = Trainer(config, load_mnist(args.data))
    except (ValueError, ConfigError, DataError) as e:  # a bad width list is a ValueError from int()
        p.exit(2, f"python -m core.thin: {e}\n")
    accs = []
    for r in trainer.epochs():
        print(format_epoch(r, config.epochs), flush=True)
        accs.append(r.test_acc)
    last = " / ".join(f"{a:.2f}" for a in accs[-3:])
    print(f"{name}: {count_parameters(trainer.model):,} params, seed {args.seed}, test in the last epochs {last}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
