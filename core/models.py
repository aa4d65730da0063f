"""The model progression of the seed (Model1 -> Model3) plus our own smaller variant.

Every <8k variant shares one conv stack (the seed's receptive-field table for Model3):
    conv 3x3 1->8, conv 3x3 8->12, conv 1x1 12->8, maxpool 2, conv 3x3 8->12, 3x conv 3x3 12->12
and each step adds one idea: BatchNorm (Model2), Dropout (Model2b), a GAP head (Model2c),
a tuned recipe with light dropout (Model3). `python -m core.models` prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from core.layers import FastBatchNorm2d, FastDropout


def conv_block(cin: int, cout: int, k: int = 3, bn: bool = True, dropout: float = 0.0) -> nn.Sequential:
    """Conv (no bias when BN follows) -> ReLU -> BN -> Dropout, the seed's block order."""
    # inplace ReLU: the conv output is not needed by its backward, so this saves one allocation per block.
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, bias=not bn), nn.ReLU(inplace=True)]
    if bn:
        layers.append(FastBatchNorm2d(cout))
    if dropout > 0:
        layers.append(FastDropout(dropout))
    return nn.Sequential(*layers)


class SmallNet(nn.Module):
    """The <8k skeleton. `channels` are the widths of conv1..conv7 (conv3 is the 1x1 transition).

    head="conv": a 4x4 conv over the last 4x4 map straight to 10 logits (no GAP, the seed's Model2).
    head="gap":  global average pooling then a 1x1 conv to 10 logits (Model2c onwards).
    """

    def __init__(self, channels=(8, 12, 8, 12, 12, 12, 12), bn=True, dropout=0.0, head="gap"):
        super().__init__()
        c1, c2, c3, c4, c5, c6, c7 = channels
        self.convblock1 = conv_block(1, c1, 3, bn, dropout)  # 28 -> 26
        self.convblock2 = conv_block(c1, c2, 3, bn, dropout)  # 26 -> 24
        self.convblock3 = conv_block(c2, c3, 1, bn, 0.0)  # 1x1 transition, 24 -> 24
        self.pool1 = nn.MaxPool2d(2, 2)  # 24 -> 12
        self.convblock4 = conv_block(c3, c4, 3, bn, dropout)  # 12 -> 10
        self.convblock5 = conv_block(c4, c5, 3, bn, dropout)  # 10 -> 8
        self.convblock6 = conv_block(c5, c6, 3, bn, dropout)  # 8 -> 6
        self.convblock7 = conv_block(c6, c7, 3, bn, 0.0)  # 6 -> 4
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
    """The tuned <8k model: Model2c's stack and GAP head with light Dropout (0.1)."""

    def __init__(self, dropout: float = 0.1):
        super().__init__(bn=True, dropout=dropout, head="gap")


class Tiny4k(SmallNet):
    """Ours, not the seed's: the same plan thinned to <5k parameters."""

    def __init__(self, dropout: float = 0.0):
        super().__init__(channels=(8, 12, 8, 10, 10, 10, 12), bn=True, dropout=dropout, head="gap")


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
# Ours: OneCycle SGD + Nesterov, light weight decay, +-5% random shifts on top of the +-7 deg rotation,
# and half the seed's dropout. Seeds 1-3, test accuracy in epochs 13-15 (README "Not one lucky seed"),
# on the engine before FastBatchNorm2d:
#   this recipe            99.42/99.46/99.45, 99.40/99.42/99.37, 99.43/99.51/99.50
#   no shifts, no dropout  99.48/99.55/99.57, 99.35/99.33/99.35 (seed 3 not run)
#   shifts, no dropout     99.42/99.37/99.41, 99.50/99.53/99.49, 99.33/99.43/99.45
# All three sit at ~99.45 +- 0.06 in the last epochs: the first had the best worst case. On the current
# engine it gives 99.47/99.52/99.52, 99.41/99.49/99.48, 99.38/99.46/99.49; with label smoothing 0.1
# seed 1 fell to 99.24/99.30/99.31, and +-10% zoom gave seed 3 99.40/99.50/99.50.
# Then batch 64 with the peak lr halved to 0.05 (the same lr per image): 99.41/99.48/99.53,
# 99.48/99.49/99.49, 99.46/99.46/99.44 -- every one of the nine last-three epochs >= 99.4 (batch 128:
# 99.47/99.52/99.52, 99.41/99.49/99.48, 99.38/99.46/99.49). Same mean; the worst case is what moved,
# by a margin (0.03) that three seeds cannot tell from luck.
TUNED = dict(
    optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, scheduler="onecycle", batch_size=64,
    dropout=0.05, weight_decay=1e-4, translate=0.05,
)
# Tiny4k: Model3's first tuned recipe (batch 128, peak lr 0.1) without dropout. Its +-5% shifts took
# seed 1 from 99.30/99.36/99.38 (rotation only) to 99.44/99.46/99.48 in epochs 13-15 (current engine:
# 99.46/99.50/99.49). Model3's batch 64 / lr 0.05 did not lift its weak seed 3 (99.37/99.36/99.35
# against 99.32/99.38/99.37).
TUNED_TINY = dict(TUNED, lr=0.1, batch_size=128, dropout=0.0)

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


def main() -> None:
    from core.architecture import receptive_field_table

    print(f"{'model':8} {'params':>8} {'RF last conv':>13} {'RF output':>10}  idea")
    for spec in MODELS.values():
        model = build_model(spec.name)
        rows = receptive_field_table(model)
        last_conv = [r for r in rows if r.kind == "conv" and r.kernel > 1][-1]
        budget = "" if count_parameters(model) < 8000 else "  (>8k)"
        print(
            f"{spec.name:8} {count_parameters(model):>8,} {last_conv.rf:>13} {rows[-1].rf:>10}  {spec.idea}{budget}"
        )


if __name__ == "__main__":
    main()
