"""Architecture facts computed from a module: output shapes, parameters, receptive field, jump."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class LayerRow:
    name: str  # the block holding the layer, e.g. "convblock1"
    kind: str  # "conv", "pool" or "gap"
    kernel: int
    stride: int
    out_shape: tuple[int, ...]  # (C, H, W) for one image
    params: int  # the layer's own parameters plus the BatchNorm that follows it
    rf: int  # receptive field side, in input pixels
    jump: int  # distance in input pixels between neighbouring output positions


def _as_int(v) -> int:
    return v[0] if isinstance(v, tuple) else int(v)


def receptive_field_table(model: nn.Module, input_size: int = 28) -> list[LayerRow]:
    """One row per conv/pool/GAP layer, in forward order, from a real forward pass.

    RF recurrence: rf_out = rf_in + (k - 1) * jump_in, jump_out = jump_in * stride. GAP is a pool whose
    kernel is its whole input map, so its RF covers every position the last conv saw.
    """
    rows: list[LayerRow] = []
    state = {"rf": 1, "jump": 1}
    names = {m: n for n, m in model.named_modules()}
    last_conv_row: list[LayerRow] = []

    def hook(module: nn.Module, inputs, output):
        if isinstance(module, nn.BatchNorm2d):
            if last_conv_row:
                last_conv_row[-1].params += sum(p.numel() for p in module.parameters())
            return
        if isinstance(module, nn.Conv2d):
            k, s, kind = _as_int(module.kernel_size), _as_int(module.stride), "conv"
        elif isinstance(module, nn.MaxPool2d):
            k, s, kind = _as_int(module.kernel_size), _as_int(module.stride or module.kernel_size), "pool"
        else:  # AdaptiveAvgPool2d to 1x1: the kernel is the whole input map
            k, s, kind = inputs[0].shape[-1], 1, "gap"
        state["rf"] += (k - 1) * state["jump"]
        state["jump"] *= s
        full = names[module]
        parent, _, leaf = full.rpartition(".")
        name = parent if leaf.isdigit() else full  # "convblock1.0" -> "convblock1"
        if kind == "conv" and k == 1 and rows and rows[-1].kind == "conv" and rows[-1].name == name:
            # the pointwise half of a depthwise-separable conv: one layer with the depthwise half before it
            rows[-1].out_shape = tuple(output.shape[1:])
            rows[-1].params += sum(p.numel() for p in module.parameters())
            return
        row = LayerRow(
            name=name,
            kind=kind,
            kernel=k,
            stride=s,
            out_shape=tuple(output.shape[1:]),
            params=sum(p.numel() for p in module.parameters()),
            rf=state["rf"],
            jump=state["jump"],
        )
        rows.append(row)
        if kind == "conv":
            last_conv_row[:] = [row]

    watched = (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, watched)]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 1, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return rows
