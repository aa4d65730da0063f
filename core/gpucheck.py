"""On a CUDA machine: do our CPU-specific layer paths step aside, and does the engine train the same maths?

    python -m core.gpucheck            # prints one line per check; exit 1 if any fails

FastBatchNorm2d must fall through to nn.BatchNorm2d's own kernel on CUDA (same output, gradients and
running statistics); FastDropout must step aside to F.dropout (the same mask under one seed), keeping ~1-p of
its inputs with the expected value preserved; a conv block must run its layers, not the CPU's fused C op
(core/native), and equal them run one by one; one short training run must give the same loss on CUDA as on
the CPU up to float rounding.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from core.config import recipe
from core.data import MNIST
from core.layers import FastBatchNorm2d, FastDropout
from core.models import conv_block
from core.train import MEMORY_FORMAT, Trainer


def check_batchnorm(device: str) -> str:
    torch.manual_seed(0)
    x = torch.randn(128, 12, 24, 24, device=device).contiguous(memory_format=MEMORY_FORMAT).requires_grad_()
    ours, theirs = FastBatchNorm2d(12).to(device), nn.BatchNorm2d(12).to(device)
    a, b = ours(x), theirs(x)
    (ga,) = torch.autograd.grad(a.square().sum(), x)
    (gb,) = torch.autograd.grad(b.square().sum(), x)
    worst = max((a - b).abs().max().item(), (ga - gb).abs().max().item(),
                (ours.running_var - theirs.running_var).abs().max().item())
    return f"FastBatchNorm2d on {device}: max difference to nn.BatchNorm2d {worst:.2e}" + ("" if worst < 1e-4 else "  FAIL")


def check_dropout(device: str, p: float = 0.1) -> str:
    x = torch.ones(256, 8, 26, 26, device=device).contiguous(memory_format=MEMORY_FORMAT)
    torch.manual_seed(0)
    y = FastDropout(p).to(device).train()(x)
    torch.manual_seed(0)
    aside = torch.equal(y, torch.nn.functional.dropout(x, p, training=True))  # off the CPU: torch's own kernel
    kept, mean = (y != 0).float().mean().item(), y.mean().item()
    ok = abs(kept - (1 - p)) < 0.005 and abs(mean - 1) < 0.01 and aside
    return (f"FastDropout({p}) on {device}: kept {kept:.4f} (expect {1 - p}), mean {mean:.4f} (expect 1), "
            f"{'the same mask as' if aside else 'NOT the same mask as'} F.dropout under one seed") + ("" if ok else "  FAIL")


def check_convblock(device: str) -> str:
    """A conv block in training (conv -> ReLU -> batch norm) against its layers one by one, and which ran: the
    fused C op is the CPU's (its autograd node names it), so off the CPU the block must have stepped aside."""
    torch.manual_seed(0)
    block = conv_block(8, 12).to(device).train()
    x = torch.randn(64, 8, 26, 26, device=device).contiguous(memory_format=MEMORY_FORMAT).requires_grad_()
    y = block(x)
    fused = "Fused" in type(y.grad_fn).__name__
    z = x
    for layer in copy.deepcopy(block):
        z = layer(z)
    (gy,) = torch.autograd.grad(y.square().sum(), x)
    (gz,) = torch.autograd.grad(z.square().sum(), x)
    worst = max((y - z).abs().max().item(), (gy - gz).abs().max().item())
    ran = "the fused C op" if fused else "its layers"
    return f"ConvBlock on {device}: {ran} ran, max difference to its layers one by one {worst:.2e}" + (
        "" if worst < 1e-3 and not fused else "  FAIL")


def check_training(n: int = 2048) -> str:
    g = torch.Generator().manual_seed(0)
    data = MNIST(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                 torch.randn(512, 1, 28, 28, generator=g), torch.randint(0, 10, (512,), generator=g))
    losses = {}
    for device in ("cpu", "cuda"):
        config = recipe("Model3", "seed", epochs=1, dropout=0.0, augment=False, device=device)
        losses[device] = next(Trainer(config, data).epochs()).train_loss
    diff = abs(losses["cpu"] - losses["cuda"])
    return f"one epoch, no dropout/augmentation: train loss CPU {losses['cpu']:.5f}, CUDA {losses['cuda']:.5f}" + (
        "" if diff < 1e-3 else "  FAIL")


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    lines = [check_batchnorm("cuda"), check_dropout("cuda"), check_convblock("cuda"), check_training()]
    print("\n".join(lines))
    return 1 if any(line.endswith("FAIL") for line in lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
