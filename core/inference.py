"""Asking a model about digits: probabilities for a batch or a picture, and what each conv block sees."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.predict import preprocess


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Softmax over the ten digits for a batch (N, 1, 28, 28) -> (N, 10), model left as it was."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        return F.softmax(model(x.to(device)), dim=1).cpu().numpy()
    finally:
        model.train(was_training)


def predict(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """The ten digit probabilities (shape (10,), summing to 1) for a picture of one digit."""
    return probabilities(model, preprocess(image))[0]


@torch.no_grad()
def feature_maps(model: nn.Module, x: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """(block name, activations (C, H, W)) after the ReLU of every conv block, in forward order, for one input.

    A block is named by its own attribute name ("convblock1"), wherever it sits (Model1 holds its blocks in `.net`).
    """
    found: list[tuple[str, np.ndarray]] = []

    def recorder(name: str):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            found.append((name, output[0].detach().cpu().numpy().copy()))  # copy: .numpy() shares the tensor's memory

        return hook

    handles = [
        relu.register_forward_hook(recorder(path.rpartition(".")[2]))
        for path, block in model.named_modules()
        for relu in block.children()
        if isinstance(relu, nn.ReLU)
    ]
    try:
        probabilities(model, x[:1])
    finally:
        for h in handles:
            h.remove()
    return found
