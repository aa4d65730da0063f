"""TrainConfig: every setting of a run, with its default, stored with the run as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields

from core.models import MODELS, build_model, count_parameters


class ConfigError(ValueError):
    """A setting is unknown or out of range; the message names it."""


OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("none", "plateau", "step", "onecycle")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    # Defaults are the seed's Model3 recipe; `recipe` presets (see with_recipe) change them.
    model: str = "Model3"  # a name from core.models.MODELS
    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.01  # for onecycle: the peak lr
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    weight_decay: float = 0.0
    scheduler: str = "plateau"  # none | plateau (on test acc) | step | onecycle
    plateau_patience: int = 3  # epochs without test-acc gain before the lr is cut
    plateau_factor: float = 0.5
    step_size: int = 6  # StepLR: epochs between cuts
    step_gamma: float = 0.1
    onecycle_pct: float = 0.2  # OneCycleLR: fraction of steps spent warming up
    dropout: float | None = None  # None = the model's own default rate
    label_smoothing: float = 0.0
    augment: bool = True
    rotate_deg: float = 7.0  # random rotation range, +-degrees (the seed's RandomRotation)
    translate: float = 0.0  # random shift, fraction of the image side
    scale: float = 0.0  # random zoom, +-fraction
    seed: int = 1
    device: str = "auto"  # auto = CUDA when present, else CPU with all cores
    train_limit: int = 0  # use only the first N training images (0 = all 60,000)
    test_limit: int = 0  # use only the first N test images (0 = all 10,000)
    # Fine-tuning (core/finetune.py). Stored configs without these fields read as the defaults (no fine-tuning).
    init: str = ""  # first weights: "" = random, "reference" = the variant's shipped weights, "run:N" = run N's best
    extra_data: str = ""  # an ImageFolder (DIR/<digit>/*.png|jpg) mixed into every training batch; "" = none
    extra_share: float = 0.1  # fraction of each training batch drawn from extra_data (README: 0.25 cost MNIST more)
    # Distillation (issue 16). Stored configs without these fields read as the defaults (no distillation).
    distill_from: str = ""  # a variant whose shipped weights (core/shipped/<variant>.pt) teach this run (distillation); "" = none
    distill_weight: float = 0.5  # share of the loss given to matching the teacher's softened outputs
    distill_temp: float = 4.0  # softmax temperature of the distillation term
    # Weight averaging (issue 16). Stored configs without it read as 0 (off), so older runs resume as they trained.
    ema: float = 0.0  # decay of an exponential moving average of the weights, tested and saved instead of them; 0 = off

    def validate(self) -> TrainConfig:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        for f in fields(self):
            value = getattr(self, f.name)
            need(not isinstance(value, float) or math.isfinite(value), f"{f.name} must be a finite number, got {value}")
        need(self.model in MODELS, f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        need(self.plateau_patience >= 0 and 0 < self.plateau_factor < 1, "plateau needs patience >= 0, 0 < factor < 1")
        need(self.step_size >= 1 and 0 < self.step_gamma <= 1, "step needs step_size >= 1, 0 < gamma <= 1")
        need(0 < self.onecycle_pct < 1, f"onecycle_pct must be in (0, 1), got {self.onecycle_pct}")
        need(self.dropout is None or 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        need(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need(0 <= self.rotate_deg <= 180, f"rotate_deg must be in [0, 180], got {self.rotate_deg}")
        need(0 <= self.translate < 0.5 and 0 <= self.scale < 0.5, "translate and scale must be in [0, 0.5)")
        need(self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}")
        need(self.train_limit >= 0 and self.test_limit >= 0, "train_limit and test_limit must be >= 0")
        need(self.init in ("", "reference") or (self.init.startswith("run:") and self.init[4:].isdigit()),
             f"init must be reference or run:N (N a run id, e.g. run:12), got {self.init!r}")
        need(0 < self.extra_share < 1, f"extra_share must be in (0, 1), got {self.extra_share}")
        need(self.distill_from == "" or self.distill_from in MODELS, f"distill_from must be a variant ({', '.join(MODELS)}) or empty, got {self.distill_from!r}")
        need(0 <= self.ema < 1, f"ema must be in [0, 1) (0 = off), got {self.ema}")
        need(0 <= self.distill_weight <= 1 and self.distill_temp > 0, "distill_weight must be in [0, 1] and distill_temp > 0")
        return self

    def parameter_count(self) -> int:
        """Trainable parameters of the model this config trains."""
        return count_parameters(build_model(self.model, self.dropout))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build and validate from plain values, refusing unknown keys and ill-typed values."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(known)}")
        default = cls()
        clean = {}
        for k, v in d.items():
            want = type(getattr(default, k)) if getattr(default, k) is not None else float
            if v is None and k == "dropout":
                clean[k] = None
            elif want is bool:
                if not isinstance(v, bool):
                    raise ConfigError(f"{k} must be true or false, got {v!r}")
                clean[k] = v
            elif want is int and isinstance(v, float) and v.is_integer():
                clean[k] = int(v)
            elif want is float and isinstance(v, int) and not isinstance(v, bool):
                clean[k] = float(v)
            elif not isinstance(v, want) or isinstance(v, bool):
                raise ConfigError(f"{k} must be {want.__name__}, got {v!r}")
            else:
                clean[k] = v
        return cls(**clean).validate()

    @classmethod
    def from_json(cls, s: str) -> TrainConfig:
        return cls.from_dict(json.loads(s))

    def replace(self, **changes) -> TrainConfig:
        return TrainConfig.from_dict({**dataclasses.asdict(self), **changes})


def recipe(model: str, name: str = "reference", **overrides) -> TrainConfig:
    """The config for a model under a named recipe: 'seed' (the seed's SGD + plateau) or 'reference'
    (what made the shipped reference run; the tuned recipe where the model has one)."""
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
    spec = MODELS[model]
    if name not in ("seed", "reference"):
        raise ConfigError(f"recipe must be 'seed' or 'reference', got {name!r}")
    preset = spec.seed_recipe if name == "seed" else spec.reference_recipe
    return TrainConfig.from_dict({"model": model, **preset, **overrides})


# With --init (fine-tuning a trained model): the variant's reference recipe, shorter, at a tenth of its peak lr,
# warmed up and annealed by one-cycle so the first steps do not knock the trained weights about.
FINETUNE = dict(epochs=2, scheduler="onecycle", onecycle_pct=0.3)
FINETUNE_LR_FACTOR = 0.1


def finetune_recipe(model: str, **overrides) -> TrainConfig:
    """The config for fine-tuning `model` (`init` among the overrides): see FINETUNE."""
    base = recipe(model, "reference")
    lr = float(f"{base.lr * FINETUNE_LR_FACTOR:.3g}")  # 0.005, not 0.005000000000000001
    return recipe(model, "reference", **{**FINETUNE, "lr": lr, **overrides})


def parse_overrides(items: list[str]) -> dict:
    """Command-line KEY=VALUE settings -> a dict; values are read as JSON (0.05, true, null), else kept
    as plain strings (adam). TrainConfig.from_dict then checks names and types."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def config_diff(configs: dict[str, TrainConfig]) -> list[dict]:
    """The settings that differ between the named configs: one row per setting, {"setting": name, <label>:
    value, ...}, in TrainConfig's field order ("what did I change" between runs)."""
    rows = []
    for f in fields(TrainConfig):
        values = {label: getattr(c, f.name) for label, c in configs.items()}
        if len({json.dumps(v) for v in values.values()}) > 1:
            rows.append({"setting": f.name, **values})
    return rows
