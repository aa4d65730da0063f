"""The one training loop (CLI, dashboard runs, sweeps and benchmarks all go through `Trainer`).

`python -m core.train --model Model3 --epochs 15` runs core/train/__main__.py, the command line (core.cli).
"""

from __future__ import annotations

import copy
import ctypes
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.config import ConfigError, TrainConfig
from core.data import MNIST, augment_batch
from core.digits import OwnDigits
from core.models import build_model


@dataclass
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float  # percent
    test_loss: float
    test_acc: float  # percent
    lr: float  # lr at the end of the epoch
    seconds: float  # wall time of the epoch, evaluation included


@dataclass
class StepPoint:
    step: int  # global optimizer step, 1-based
    epoch: float  # fractional: 1.5 = half-way through the second epoch
    train_loss: float  # over the batches since the previous point
    train_acc: float  # percent, likewise
    lr: float


class StopRequested(Exception):
    """Raised inside an epoch when the stop callback says so; the current batch has finished."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: nothing more to learn from this run."""


DIVERGENCE_CHECK_BATCHES = 16  # the loss is checked for NaN/inf this often (one device sync each time)


def fit_to_data(config: TrainConfig, data: MNIST) -> list[str]:
    """Refuse a config the data cannot serve (ConfigError), and say how limits above the data were read."""
    n_train, n_test = len(data.train_y), len(data.test_y)
    notes = []
    if config.train_limit > n_train:
        notes.append(f"train limit {config.train_limit:,} is above the {n_train:,} training images: using all {n_train:,}")
    if config.test_limit > n_test:
        notes.append(f"test limit {config.test_limit:,} is above the {n_test:,} test images: using all {n_test:,}")
    n = min(config.train_limit or n_train, n_train)
    if config.batch_size > n:
        raise ConfigError(f"batch size {config.batch_size:,} is larger than the {n:,} training images; use at most {n:,}")
    return notes


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but no CUDA device is available; use --device auto or cpu")
    return torch.device(name)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """Hinton's soft-target loss: KL(teacher || student) of the outputs softened by `temp`, times temp^2
    so that its gradients keep their scale as the temperature changes."""
    student = F.log_softmax(logits / temp, dim=1)
    return F.kl_div(student, F.log_softmax(teacher_logits / temp, dim=1), log_target=True, reduction="batchmean") * temp**2


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, label_smoothing: float,
               teacher: nn.Module | None = None, distill_weight: float = 0.0, distill_temp: float = 1.0):
    """One SGD step on one batch; returns (summed loss, correct count) as tensors, to avoid a sync per batch.
    With a teacher (eval mode), the loss mixes in `distillation_loss` on the same augmented batch."""
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = (1 - distill_weight) * loss + distill_weight * distillation_loss(logits, teacher_logits, distill_temp)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach() * len(y), (logits.argmax(1) == y).sum()


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> tuple[float, float]:
    """(mean loss, accuracy %) over a whole split, in large no-grad batches."""
    was_training = model.training
    model.eval()
    loss, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size])
        loss += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum")
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
    model.train(was_training)
    return loss.item() / len(y), 100.0 * correct.item() / len(y)


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics (Polyak averaging): a copy
    of the model whose float tensors each move a (1 - decay) step towards the trained model's after every
    optimizer step. The decay warms up as min(decay, (1 + n) / (10 + n)) at step n, so that the random first
    weights fade fast; (1 + n) / (10 + n) reaches 0.999 only after ~9,000 steps, so in Model3's 15 epochs at batch
    128 (7,035 steps) the average spans roughly the last n / 9 steps throughout. It is smoother than the weights
    SGD is still moving at a high lr, which is what gets Model3 to 99.4% early (README, the Model3 notes)."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self._mine = [t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        self._theirs = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move towards the trained weights after global optimizer step `step` (1-based)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._mine, self._theirs, 1.0 - decay)


# channels_last: oneDNN's NCHW kernels are far off the pace for these 1-12 channel convs on CPU
# (8->12 3x3 on 26x26, forward+backward: 13.7 ms NCHW vs 5.2 ms channels_last; the 1x1 12->8:
# 2.4 vs 0.8 ms); the whole Model3 step is ~30% faster. Same maths, another summation order.
MEMORY_FORMAT = torch.channels_last


@functools.cache  # once per process
def keep_freed_memory_for_reuse() -> None:
    """Ask glibc's malloc to serve tensors up to 32 MB from its heap and not hand freed memory back.

    By default each activation of a few MB is a fresh mmap, so every training step page-faults its
    way through new zeroed pages; in this VM that made any op on a 128x12x24x24 tensor ~6 ms instead
    of <1 ms, and the whole Model3 step ~25% slower. Same effect as MALLOC_MMAP_THRESHOLD_ /
    MALLOC_TRIM_THRESHOLD_ in the environment, applied from inside the process. No-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's maximum
        libc.mallopt(m_trim_threshold, 256 * 2**20)
    except (OSError, AttributeError):  # musl or another libc: keep its defaults
        pass


class Trainer:
    """Model, optimizer and scheduler for one config, and the epoch loop over in-memory MNIST."""

    def __init__(self, config: TrainConfig, data: MNIST, init_weights: dict | None = None):
        """`init_weights`: a state_dict to start from (fine-tuning, core.finetune.initial_weights), else random."""
        self.config = config.validate()
        self.device = pick_device(config.device)
        if self.device.type == "cpu":
            keep_freed_memory_for_reuse()
            # The cores this process may run on (taskset/cgroups), not the machine's: more threads than
            # cores makes OpenMP spin against itself, several times slower on this 2-core box.
            torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        fit_to_data(config, data)
        torch.manual_seed(config.seed)
        self.data = data.subset(config.train_limit, config.test_limit).to(self.device)
        # Fine-tuning: own digits (an ImageFolder) take config.extra_share of every training batch.
        self.own = OwnDigits.from_folder(config.extra_data, config.extra_share, self.device) if config.extra_data else None
        self.model = build_model(config.model, config.dropout).to(self.device, memory_format=MEMORY_FORMAT)
        if init_weights is not None:
            self.model.load_state_dict(init_weights)
        # With config.ema the average is what is tested and saved as "model" (see state_dict), else the model itself.
        self.average = WeightAverage(self.model, config.ema) if config.ema else None
        self.teacher = self._load_teacher(config.distill_from) if config.distill_from else None
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                self.model.parameters(),
                lr=config.lr,
                momentum=config.momentum,
                nesterov=config.nesterov and config.momentum > 0,
                weight_decay=config.weight_decay,
            )
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.steps_per_epoch = -(-len(self.data.train_y) // config.batch_size)
        self.scheduler = self._make_scheduler()
        self.epochs_done = 0  # completed epochs; resume starts at the next one
        self._running = (torch.zeros(()), torch.zeros((), dtype=torch.long), 0, 0)
        self._window_start = (0.0, 0, 0)
        self.best_test_acc = 0.0

    def _load_teacher(self, name: str) -> nn.Module:
        """The shipped weights of variant `name`, frozen, in eval mode (distillation)."""
        from core.reference import load_reference_model  # core.reference imports the worker, which imports this module

        teacher = load_reference_model(name).to(self.device, memory_format=MEMORY_FORMAT)
        return teacher.requires_grad_(False)

    def _make_scheduler(self):
        c = self.config
        if c.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="max", patience=c.plateau_patience, factor=c.plateau_factor
            )
        if c.scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=c.step_size, gamma=c.step_gamma)
        if c.scheduler == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer,
                max_lr=c.lr,
                epochs=c.epochs,
                steps_per_epoch=self.steps_per_epoch,
                pct_start=c.onecycle_pct,
            )
        return None

    @property
    def tested_model(self) -> nn.Module:
        """The model whose test accuracy is reported and whose weights checkpoints hold as "model": the weight
        average when config.ema is set, else the trained model."""
        return self.average.model if self.average is not None else self.model

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_epoch(
        self, epoch: int, on_batch: Callable[[int, int], None] | None = None, should_stop: Callable[[], bool] | None = None
    ) -> tuple[float, float]:
        """Train one epoch (0-based index); returns (mean loss, accuracy %).

        Shuffling and augmentation draw from a generator seeded by (seed, epoch), and the global RNG
        (dropout) is reseeded the same way, so a run resumed at an epoch boundary replays exactly.
        """
        c, d = self.config, self.data
        g = torch.Generator().manual_seed(c.seed * 100_003 + epoch)
        torch.manual_seed(c.seed * 100_003 + epoch)
        order = torch.randperm(len(d.train_y), generator=g).to(self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        self._running = (loss_sum, correct, 0, epoch)  # (sums so far, images so far, epoch) for `window`
        self._window_start = (0.0, 0, 0)
        self.model.train()
        for b in range(self.steps_per_epoch):
            idx = order[b * c.batch_size : (b + 1) * c.batch_size]
            x, y = d.train_x[idx], d.train_y[idx]
            if self.own is not None:
                x, y = self.own.mix(x, y, g)
            if c.augment:
                x = augment_batch(x, c.rotate_deg, c.translate, c.scale, generator=g)
            x = x.contiguous(memory_format=MEMORY_FORMAT)
            batch_loss, batch_correct = train_step(
                self.model, self.optimizer, x, y, c.label_smoothing, self.teacher, c.distill_weight, c.distill_temp
            )
            if self.average is not None:
                self.average.update(epoch * self.steps_per_epoch + b + 1)
            loss_sum += batch_loss
            correct += batch_correct
            self._running = (loss_sum, correct, (b + 1) * c.batch_size if b + 1 < self.steps_per_epoch else len(d.train_y), epoch)
            if b % DIVERGENCE_CHECK_BATCHES == DIVERGENCE_CHECK_BATCHES - 1 and not math.isfinite(loss_sum.item()):
                self.diverged(epoch, loss_sum.item())
            if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
                self.scheduler.step()
            if on_batch:
                on_batch(b + 1, self.steps_per_epoch)
            if should_stop and should_stop():
                raise StopRequested
        n = len(d.train_y)
        return loss_sum.item() / n, 100.0 * correct.item() / n

    def epochs(
        self, on_batch: Callable[[int, int], None] | None = None, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[EpochResult]:
        """Run the remaining epochs, yielding one result each. Raises StopRequested when asked to stop."""
        for epoch in range(self.epochs_done, self.config.epochs):
            t0 = time.perf_counter()
            train_loss, train_acc = self.train_epoch(epoch, on_batch, should_stop)
            if not math.isfinite(train_loss):
                self.diverged(epoch, train_loss)
            test_loss, test_acc = evaluate(self.tested_model, self.data.test_x, self.data.test_y)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(test_acc)  # the seed steps the plateau scheduler on test accuracy
            elif isinstance(self.scheduler, torch.optim.lr_scheduler.StepLR):
                self.scheduler.step()
            self.epochs_done = epoch + 1
            self.best_test_acc = max(self.best_test_acc, test_acc)
            yield EpochResult(epoch + 1, train_loss, train_acc, test_loss, test_acc, self.lr(), time.perf_counter() - t0)

    def window(self) -> StepPoint | None:
        """Train loss and accuracy over the batches since the last call (one device sync), with the step,
        the fractional epoch and the lr: what the live charts plot within an epoch. None before a batch."""
        loss_sum, correct, seen, epoch = self._running
        loss_then, correct_then, seen_then = self._window_start
        if seen <= seen_then:
            return None
        loss_now, correct_now = loss_sum.item(), int(correct.item())
        self._window_start = (loss_now, correct_now, seen)
        n = seen - seen_then
        return StepPoint(*self.position(), (loss_now - loss_then) / n, 100.0 * (correct_now - correct_then) / n, self.lr())

    def position(self) -> tuple[int, float]:
        """(global optimizer step, fractional epoch) after the last batch trained."""
        _, _, seen, epoch = self._running
        return epoch * self.steps_per_epoch + -(-seen // self.config.batch_size), epoch + seen / len(self.data.train_y)

    def diverged(self, epoch: int, loss: float) -> None:
        raise TrainingDiverged(
            f"training diverged in epoch {epoch + 1}: the loss became {loss} (lr {self.config.lr} "
            "is likely too high for this recipe; try a lower one). Earlier epochs and checkpoints are kept."
        )

    def state_dict(self) -> dict:
        """Everything needed to resume at the next epoch boundary (plain tensors and numbers only). "model" is the
        tested model (what inference, export and fine-tuning load); with a weight average, "trained_model" holds
        the weights SGD is moving."""
        averaging = {"trained_model": self.model.state_dict()} if self.average is not None else {}
        return {
            "model": self.tested_model.state_dict(),
            **averaging,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "epochs_done": self.epochs_done,
            "best_test_acc": self.best_test_acc,
            "config": self.config.to_json(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.tested_model.load_state_dict(state["model"])
        if self.average is not None:
            self.model.load_state_dict(state["trained_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epochs_done = int(state["epochs_done"])
        self.best_test_acc = float(state["best_test_acc"])
