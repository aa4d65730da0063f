"""Layer health: is every layer learning? Weight and gradient norms, the update-to-weight ratio of one
optimizer step (~1e-3 is healthy; far below, a layer is stuck), the ReLU units that never fire on a test
batch, and activation histograms per block. Measured by the training process at a bounded rate."""

from __future__ import annotations

import torch
import torch.nn as nn

HIST_BINS = 24


def weight_layers(model: nn.Module) -> dict[str, nn.Parameter]:
    """The learned kernels (conv and linear weights) by module path, e.g. 'convblock1.0'."""
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad}


class UpdateWatch:
    """`arm()` before an optimizer step, `measure()` after it: per layer, the weight norm, the gradient norm
    of that step and ||w_after - w_before|| / ||w_after||."""

    def __init__(self, model: nn.Module):
        self.layers = weight_layers(model)
        self.before: dict[str, torch.Tensor] | None = None

    @property
    def armed(self) -> bool:
        return self.before is not None

    def arm(self) -> None:
        self.before = {name: w.detach().clone() for name, w in self.layers.items()}

    @torch.no_grad()
    def measure(self) -> list[dict]:
        assert self.before is not None, "arm() before the step"
        rows = []
        for name, w in self.layers.items():
            norm = float(w.norm())
            grad = float(w.grad.norm()) if w.grad is not None else 0.0
            update = float((w - self.before[name]).norm())
            rows.append({"layer": name, "weight_norm": norm, "grad_norm": grad,
                         "update_ratio": update / norm if norm > 0 else 0.0})
        self.before = None
        return rows


@torch.no_grad()
def activation_stats(model: nn.Module, x: torch.Tensor, bins: int = HIST_BINS) -> list[dict]:
    """Per ReLU (named by its block), on the batch x in eval mode: the fraction of units (channel x position)
    that are zero for every image, and a histogram of the activations (`counts`, `edges`)."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ReLU):
            block = name.rsplit(".", 1)[0] if "." in name else name
            hooks.append(m.register_forward_hook(lambda _m, _i, out, b=block: outputs.__setitem__(b, out.detach().clone())))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    rows = []
    for block, a in outputs.items():
        a = a.float().cpu()
        dead = float((a.amax(0) <= 0).float().mean())
        top = float(a.max()) or 1.0
        counts = torch.histc(a, bins=bins, min=0.0, max=top)
        rows.append({"block": block, "dead_frac": dead, "counts": [int(c) for c in counts],
                     "edges": [top * i / bins for i in range(bins + 1)]})
    return rows
