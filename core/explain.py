"""Why a model read a digit the way it did: a saliency map, the input box a conv unit sees, and a deletion
curve that checks a saliency map against the model.

Saliency is integrated gradients from the blank picture (every pixel at core.data.BACKGROUND): a pixel's
score is its ink times the mean gradient of the digit's logit along the straight path from blank to the
input, so the scores add up to logit(input) - logit(blank) and a pixel without ink scores 0. Plain gradient
magnitude (`gradient_magnitude`) says how sensitive the logit is to a pixel, not how much that pixel's ink
contributed: erasing the ink it ranks first hurts the prediction far less (the deletion test, tests/test_explain.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.architecture import receptive_field_table
from core.data import BACKGROUND

# Points on the path from blank to the input (midpoint rule). ReLUs make the path's gradient jump, so the scores'
# sum misses logit(x) - logit(blank) by a share that halves as the steps double: for Model3 on MNIST test digits
# 1.5% (median; 8% for 1 digit in 20) at 64 steps, one batch of 64 that takes ~10 ms on 2 CPU threads.
IG_STEPS = 64
BLANK_TOLERANCE = 1e-5  # a pixel this close to BACKGROUND is blank: float32 normalisation misses it by ~1e-8


def _target_logit_gradient(model: nn.Module, xs: torch.Tensor, target: int) -> torch.Tensor:
    """d logit[target] / d input for a batch (N, 1, 28, 28), in eval mode; no parameter gets a .grad."""
    xs = xs.detach().clone().requires_grad_(True)
    logit = model(xs)[:, target].sum()
    return torch.autograd.grad(logit, xs)[0]


def _in_eval(model: nn.Module, fn):
    was_training = model.training
    model.eval()
    try:
        return fn()
    finally:
        model.train(was_training)


def _predicted(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x).argmax(1)[0])


def _check_input(x: torch.Tensor) -> None:
    if tuple(x.shape) != (1, 1, 28, 28):
        raise ValueError(
            f"expected one normalised input of shape (1, 1, 28, 28) (core.predict.preprocess), got {tuple(x.shape)}"
        )


def saliency(model: nn.Module, x: torch.Tensor, target: int | None = None, steps: int = IG_STEPS) -> np.ndarray:
    """(28, 28) float32: how much each pixel's ink adds to the logit of `target` (default: the predicted digit).

    Integrated gradients from the blank picture; positive = evidence for the digit, negative = against it.
    x is one normalised input (1, 1, 28, 28) as core.predict produces it. The model is left in its mode.
    """
    _check_input(x)
    device = next(model.parameters()).device
    x = x.detach().to(device, torch.float32)

    def run() -> np.ndarray:
        digit = _predicted(model, x) if target is None else int(target)
        alphas = (torch.arange(steps, device=device, dtype=x.dtype) + 0.5) / steps  # midpoints of the path
        path = BACKGROUND + alphas.view(-1, 1, 1, 1) * _ink(x)  # (steps, 1, 28, 28)
        mean_grad = _target_logit_gradient(model, path, digit).mean(0)
        return (_ink(x)[0] * mean_grad)[0].cpu().numpy()

    return _in_eval(model, run)


def gradient_magnitude(model: nn.Module, x: torch.Tensor, target: int | None = None) -> np.ndarray:
    """(28, 28) float32: |d logit / d pixel| at the input, the plain-gradient map (for comparison: it ranks
    pixels by sensitivity, ink or not, and fails the deletion test that `saliency` passes)."""
    _check_input(x)
    device = next(model.parameters()).device
    x = x.detach().to(device, torch.float32)

    def run() -> np.ndarray:
        digit = _predicted(model, x) if target is None else int(target)
        return _target_logit_gradient(model, x, digit)[0, 0].abs().cpu().numpy()

    return _in_eval(model, run)


def _ink(x: torch.Tensor) -> torch.Tensor:
    """x - BACKGROUND, exactly 0 on blank pixels."""
    ink = x - BACKGROUND
    return torch.where(ink.abs() > BLANK_TOLERANCE, ink, torch.zeros_like(ink))


def ink_pixels(x: torch.Tensor) -> np.ndarray:
    """Flat indices (0..783) of the pixels of one input (1, 1, 28, 28) that hold ink (differ from the background)."""
    return np.flatnonzero(_ink(x.detach().cpu()).numpy().reshape(-1))


def ink_ranking(scores: np.ndarray, x: torch.Tensor) -> np.ndarray:
    """The ink pixels of x (flat indices), highest score first; ties keep reading order (deterministic)."""
    ink = ink_pixels(x)
    return ink[np.argsort(-np.asarray(scores).reshape(-1)[ink], kind="stable")]


@torch.no_grad()
def deletion_curve(
    model: nn.Module, x: torch.Tensor, ranking: np.ndarray, steps: int = 20, target: int | None = None
) -> np.ndarray:
    """Probability of `target` (default: the predicted digit) as the pixels of `ranking` (flat indices, first
    = erased first) are erased, i.e. set to the background: shape (steps + 1,), at 0, 1/steps, ..., all of the ranking.

    A faithful saliency map makes this curve fall fast; its mean (area under the curve) is the usual summary.
    """
    _check_input(x)
    device = next(model.parameters()).device
    x = x.detach().to(device, torch.float32)
    ranking = torch.as_tensor(np.asarray(ranking, dtype=np.int64), device=device)
    counts = [round(s * len(ranking) / steps) for s in range(steps + 1)]
    batch = x.repeat(steps + 1, 1, 1, 1).view(steps + 1, -1)
    for row, n in enumerate(counts):
        batch[row, ranking[:n]] = BACKGROUND

    def run() -> np.ndarray:
        logits = model(batch.view(steps + 1, 1, 28, 28))
        digit = int(logits[0].argmax()) if target is None else int(target)
        return F.softmax(logits, 1)[:, digit].cpu().numpy()

    return _in_eval(model, run)


def _layer_module(model: nn.Module, name: str) -> nn.Module:
    """The conv/pool/GAP module a receptive_field_table row names: the block itself, or the first such layer in it."""
    block = model.get_submodule(name)
    if isinstance(block, nn.Sequential):
        return next(m for m in block if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)))
    return block


def _padding(module: nn.Module) -> int:
    p = getattr(module, "padding", 0)
    if isinstance(p, str):
        raise ValueError(f"{module} pads by the name {p!r}: give receptive_box a layer with numeric padding")
    return p[0] if isinstance(p, tuple) else int(p)


def receptive_box(model: nn.Module, layer: str, i: int, j: int, input_size: int = 28) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), inclusive and clipped to the input: the input pixels unit (i, j) of `layer`
    (named as receptive_field_table names it, e.g. "convblock4", "net.convblock4") can see.

    From the table's rf and jump, and the start offset (input coordinate of the first unit's top-left pixel):
    start_out = start_in - padding * jump_in, 0 for the input.
    """
    rows = receptive_field_table(model, input_size)
    names = [r.name for r in rows]
    if names.count(layer) != 1:
        raise ValueError(f"no single layer named {layer!r}; the layers are: {', '.join(names)}")
    start = 0
    jump_in = 1
    for row in rows:
        start -= _padding(_layer_module(model, row.name)) * jump_in
        jump_in = row.jump
        if row.name == layer:
            break
    _, h, w = row.out_shape
    if not (0 <= i < h and 0 <= j < w):
        raise ValueError(f"unit ({i}, {j}) is outside {layer}'s {h}x{w} map")
    top, left = start + i * row.jump, start + j * row.jump
    last = input_size - 1
    return max(top, 0), max(left, 0), min(top + row.rf - 1, last), min(left + row.rf - 1, last)
