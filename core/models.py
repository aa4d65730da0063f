"""The model progression of the seed (Model1 -> Model3) plus our own smaller variants (Tiny4k, Sep4k).

Every <8k variant shares one conv stack (the seed's receptive-field table for Model3):
    conv 3x3 1->8, conv 3x3 8->12, conv 1x1 12->8, maxpool 2, conv 3x3 8->12, 3x conv 3x3 12->12
and each step adds one idea: BatchNorm (Model2), Dropout (Model2b), a GAP head (Model2c),
a tuned recipe with light dropout (Model3). `python -m core.models` prints the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from core.architecture import receptive_field_table
from core.layers import ConvBlock, FastBatchNorm2d, FastDropout


def conv_block(cin: int, cout: int, k: int = 3, bn: bool = True, dropout: float = 0.0, pad: int = 0,
               separable: bool = False) -> ConvBlock:
    """Conv (no bias when BN follows) -> ReLU -> BN -> Dropout, the seed's block order. separable: the conv is
    depthwise-separable, a kxk conv of each channel alone then a 1x1 conv across channels (k*k*cin + cin*cout
    weights instead of k*k*cin*cout; a ReLU and BN between the two did not help: issue 16's notes)."""
    # inplace ReLU: the conv output is not needed by its backward, so this saves one allocation per block.
    layers: list[nn.Module] = []
    if separable and k > 1:
        layers.append(nn.Conv2d(cin, cin, k, padding=pad, groups=cin, bias=False))
        k, pad = 1, 0
    layers += [nn.Conv2d(cin, cout, k, padding=pad, bias=not bn), nn.ReLU(inplace=True)]
    if bn:
        layers.append(FastBatchNorm2d(cout))
    if dropout > 0:
        layers.append(FastDropout(dropout))
    return ConvBlock(*layers)


class SmallNet(nn.Module):
    """The <8k skeleton. `channels` are the widths of conv1..conv7 (conv3 is the 1x1 transition).

    head="conv": a 4x4 conv over the last 4x4 map straight to 10 logits (no GAP, the seed's Model2).
    head="gap":  global average pooling then a 1x1 conv to 10 logits (Model2c onwards).
    `pad` is the zero padding of each conv (conv1..conv7); the sizes below are for no padding.
    separable: conv4..conv7 (after the pool) are depthwise-separable (conv_block).
    """

    def __init__(self, channels=(8, 12, 8, 12, 12, 12, 12), bn=True, dropout=0.0, head="gap", pad=(0,) * 7,
                 separable=False):
        super().__init__()
        c1, c2, c3, c4, c5, c6, c7 = channels
        p1, p2, p3, p4, p5, p6, p7 = pad
        sep = separable
        self.convblock1 = conv_block(1, c1, 3, bn, dropout, p1)  # 28 -> 26
        self.convblock2 = conv_block(c1, c2, 3, bn, dropout, p2)  # 26 -> 24
        self.convblock3 = conv_block(c2, c3, 1, bn, 0.0, p3)  # 1x1 transition, 24 -> 24
        self.pool1 = nn.MaxPool2d(2, 2)  # 24 -> 12
        self.convblock4 = conv_block(c3, c4, 3, bn, dropout, p4, sep)  # 12 -> 10
        self.convblock5 = conv_block(c4, c5, 3, bn, dropout, p5, sep)  # 10 -> 8
        self.convblock6 = conv_block(c5, c6, 3, bn, dropout, p6, sep)  # 8 -> 6
        self.convblock7 = conv_block(c6, c7, 3, bn, 0.0, p7, sep)  # 6 -> 4
        if head == "gap":
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Conv2d(c7, 10, 1, bias=False)
        elif head == "conv":
            self.head = nn.Conv2d(c7, 10, 4, bias=False)
        else:
            raise ValueError(f"head must be 'gap' or 'conv', got {head!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x.flatten(1)  # (N, 10) logits


class Model1(nn.Module):
    """The basic skeleton, wide and unregularised: same spatial plan as the small nets, ~0.2M params."""

    def __init__(self):
        super().__init__()
        self.net = SmallNet(channels=(32, 64, 32, 64, 64, 128, 64), bn=False, dropout=0.0, head="conv")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Model2(SmallNet):
    """<8k skeleton with BatchNorm after every conv; 4x4-conv head, no dropout."""

    def __init__(self):
        super().__init__(bn=True, dropout=0.0, head="conv")


class Model2b(SmallNet):
    """Model2 + Dropout 0.25 after each 3x3 block."""

    def __init__(self, dropout: float = 0.25):
        super().__init__(bn=True, dropout=dropout, head="conv")


class Model2c(SmallNet):
    """Model2b with a Global Average Pooling head instead of the 4x4 conv (fewer params)."""

    def __init__(self, dropout: float = 0.25):
        super().__init__(bn=True, dropout=dropout, head="gap")


class Model3(SmallNet):
    """The tuned <8k model: Model2c's stack and GAP head with lighter Dropout (the seed's 0.1; TUNED trains it at 0.05)."""

    def __init__(self, dropout: float = 0.1):
        super().__init__(bn=True, dropout=dropout, head="gap")


class Tiny4k(SmallNet):
    """Ours, not the seed's: the same plan thinned to <5k parameters."""

    def __init__(self, dropout: float = 0.0):
        super().__init__(channels=(8, 12, 8, 10, 10, 10, 12), bn=True, dropout=dropout, head="gap")


class Sep4k(SmallNet):
    """Ours: the same plan with depthwise-separable convs after the pool, so they can be wider (26 channels),
    and conv2 at 16 channels, in Tiny4k's budget (4,894 parameters against 4,892), trained with twice Tiny4k's
    steps (batch 64, peak lr 0.05) and the weight average."""

    def __init__(self, dropout: float = 0.0):
        super().__init__(channels=(8, 16, 8, 26, 26, 26, 26), bn=True, dropout=dropout, head="gap", separable=True)


class Sep3k(SmallNet):
    """Ours: Sep4k's plan under 4,000 parameters (3,942): conv2 at 14 channels and the separable convs at 22,
    trained with twice the steps (batch 64, peak lr 0.05)."""

    def __init__(self, dropout: float = 0.0):
        super().__init__(channels=(8, 14, 8, 22, 22, 22, 22), bn=True, dropout=dropout, head="gap", separable=True)


@dataclass(frozen=True)
class SeedFigures:
    """What the seed's README reported for a variant (None where it gave nothing)."""

    params: int | None
    best_train: float | None
    best_test: float | None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cls: type[nn.Module]
    idea: str  # one line: what this step adds
    seed: SeedFigures | None  # None for variants that are ours
    seed_recipe: dict  # TrainConfig overrides: the seed's own training recipe
    reference_recipe: dict  # TrainConfig overrides that make the shipped reference run
    takes_dropout: bool = True


# The seed trained Model1..Model2c with plain SGD, and Model3 with SGD + ReduceLROnPlateau(patience 3, factor 0.5).
SEED_SGD = dict(optimizer="sgd", lr=0.01, momentum=0.9, scheduler="none")
SEED_MODEL3 = dict(optimizer="sgd", lr=0.01, momentum=0.9, scheduler="plateau", plateau_patience=3, plateau_factor=0.5)
# Ours: OneCycle SGD + Nesterov at batch 64, a peak lr of 0.05 after 20% of the steps, light weight decay, +-5%
# random shifts on top of the +-7 deg rotation, half the seed's dropout, and an average of the weights (ema) as
# the model that is tested and shipped: >= 99.43% in each of the last three of 15 epochs on seeds 1-10 under the
# C kernel (README, the Model3 notes). Sessions 3-8 shipped batch 128 at a peak lr of 0.1 after 10% (99.4%
# sooner, but under the C kernel seed 2 ended at 99.35-99.38); before issue 16, this recipe without the average.
EMA_DECAY = 0.999  # the weight average's decay where a recipe (or the Train page's Average box) turns it on
TUNED = dict(
    optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, scheduler="onecycle", onecycle_pct=0.2, batch_size=64,
    dropout=0.05, weight_decay=1e-4, translate=0.05, ema=EMA_DECAY,
)
# Tiny4k: that plan at batch 128 and a peak lr of 0.1, without dropout and without the average (README, the
# Tiny4k notes; the average did not lift its last epochs).
TUNED_TINY = dict(TUNED, batch_size=128, lr=0.1, ema=0.0, dropout=0.0)
# Sep4k: Model3's recipe without dropout (Tiny4k's with twice the steps per epoch, batch 64 at a peak lr of 0.05,
# and the weight average), which held its epochs 13-15 at >= 99.42 on seeds 1-8 under the C kernel (Tiny4k's
# batch 128 without the average: 99.34 and 99.39 at epoch 13 on seeds 1 and 3; README, the Sep4k notes).
TUNED_SEP4K = dict(TUNED, dropout=0.0)
# Sep3k: the same without the average: batch 64 lifted its seed 1's last epoch from 99.31 to 99.47 (README, the
# Sep3k notes); the average did not help it.
TUNED_SEP3K = dict(TUNED_SEP4K, ema=0.0)

# The one registry: pages, CLI, benchmarks and tests read it.
MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("Model1", Model1, "Basic wide CNN, no regularisation", SeedFigures(194_000, 99.92, 99.15), SEED_SGD, SEED_SGD, False),
        ModelSpec("Model2", Model2, "<8k skeleton + BatchNorm after every conv", SeedFigures(5936, 93.82, 91.82), SEED_SGD, SEED_SGD, False),
        ModelSpec("Model2b", Model2b, "Model2 + Dropout 0.25", SeedFigures(5936, 89.19, 91.84), SEED_SGD, SEED_SGD),
        ModelSpec("Model2c", Model2c, "Model2b + Global Average Pooling head", SeedFigures(5936, 98.50, 97.29), SEED_SGD, SEED_SGD),
        # The seed lists "Best Train Accuracy: 97.63%" twice for Model3; its own analysis quotes 99.27% test
        # at epoch 12, which we take as the best test figure.
        ModelSpec("Model3", Model3, "GAP net + Dropout 0.1 + LR scheduler", SeedFigures(5920, 99.35, 99.27), SEED_MODEL3, TUNED),
        ModelSpec("Tiny4k", Tiny4k, "Ours: Model3's plan thinned to <5k params", None, SEED_MODEL3, TUNED_TINY),
        ModelSpec("Sep4k", Sep4k, "Ours: depthwise-separable convs after the pool, wider in Tiny4k's budget, twice the steps",
                  None, SEED_MODEL3, TUNED_SEP4K),
        ModelSpec("Sep3k", Sep3k, "Ours: Sep4k's plan under 4k params, without the weight average", None,
                  SEED_MODEL3, TUNED_SEP3K),
    ]
}


def build_model(name: str, dropout: float | None = None) -> nn.Module:
    """Instantiate a registered variant; `dropout` overrides its default rate where it has one."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    spec = MODELS[name]
    if dropout is None or not spec.takes_dropout:
        return spec.cls()
    return spec.cls(dropout=dropout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def variant_rows(best_test: Mapping[str, float] | None = None) -> list[dict]:
    """The variants table (Home, `python -m core.models`): per registered variant its parameters, receptive
    fields, idea, the seed's best test % and ours (from best_test, variant -> %)."""
    rows = []
    for spec in MODELS.values():
        model = build_model(spec.name)
        layers = receptive_field_table(model)
        rows.append(
            {
                "variant": spec.name,
                "params": count_parameters(model),
                "RF of last 3x3 conv": [r for r in layers if r.kind == "conv" and r.kernel > 1][-1].rf,
                "RF of output": layers[-1].rf,
                "idea": spec.idea,
                "seed's test %": spec.seed.best_test if spec.seed else None,
                "our best test %": (best_test or {}).get(spec.name),
            }
        )
    return rows


def main() -> None:
    print(f"{'model':8} {'params':>8} {'RF last conv':>13} {'RF output':>10}  idea")
    for row in variant_rows():
        budget = "" if row["params"] < 8000 else "  (>8k)"
        print(
            f"{row['variant']:8} {row['params']:>8,} {row['RF of last 3x3 conv']:>13} {row['RF of output']:>10}  "
            f"{row['idea']}{budget}"
        )


if __name__ == "__main__":
    main()
