"""The C kernels (core/native): built here, the same dropout mask as torch's ops compute, the same step as the
layers run one by one, and a process that cannot build them trains the same numbers on torch's ops."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from core import native
from core.layers import ConvBlock, FastBatchNorm2d, FastDropout, keep_factors, keep_factors_torch
from core.models import build_model, conv_block

CL = torch.channels_last
ROOT = Path(__file__).resolve().parents[1]


def test_the_kernels_build_where_a_compiler_is():
    if shutil.which("cc") or shutil.which("gcc"):
        assert native.library() is not None, native.why_not()
    else:
        assert native.library() is None and "compiler" in native.why_not()


@pytest.mark.parametrize("n", [1, 17, 1000, 128 * 12 * 24 * 24 + 3])
@pytest.mark.parametrize("key, drop_levels", [((0, 0), 6554), ((0xFFFFFFFF, 0xDEADBEEF), 3277), ((12345, 2**31 + 5), 65535)])
def test_the_dropout_mask_is_the_same_from_c_and_from_torch(n, key, drop_levels):
    scale = 65536 / (65536 - drop_levels)
    ours = keep_factors(n, key, drop_levels, scale)
    torchs = keep_factors_torch(n, key, drop_levels, scale)
    assert torch.equal(ours, torchs)
    if n >= 1000:  # and a mask with the keep rate asked for
        kept, expected = (ours > 0).float().mean().item(), 1 - drop_levels / 65536
        assert abs(kept - expected) < 4 * (expected * (1 - expected) / n) ** 0.5 + 1 / n


def test_masks_differ_between_calls_and_follow_the_seed():
    drop = FastDropout(0.5).train()
    x = torch.ones(64, 8, 6, 6).contiguous(memory_format=CL)
    torch.manual_seed(7)
    a, b = drop(x), drop(x)
    torch.manual_seed(7)
    assert torch.equal(drop(x), a)
    agree = ((a > 0) == (b > 0)).float().mean().item()
    assert 0.45 < agree < 0.55  # independent masks agree on half the elements at p = 0.5


def block_pair(cin: int, cout: int, dropout: float, k: int = 3) -> tuple[ConvBlock, ConvBlock]:
    torch.manual_seed(0)
    block = conv_block(cin, cout, k, bn=True, dropout=dropout).to(memory_format=CL)
    with torch.no_grad():
        block[2].weight.uniform_(0.5, 1.5)
        block[2].bias.uniform_(-1, 1)
    return block, copy.deepcopy(block)


def step(block: nn.Module, x: torch.Tensor, grad: torch.Tensor, fused: bool):
    """Three training forwards (running statistics), one backward; the block fused or layer by layer."""
    xi = x.clone().requires_grad_()
    torch.manual_seed(3)
    for _ in range(3):
        out = block(xi) if fused else nn.Sequential.forward(block, xi)
    out.backward(grad)
    return out, [xi.grad] + [p.grad for p in block.parameters()], list(block.buffers())


@pytest.mark.parametrize("shape, cout, dropout, offset", [
    ((128, 8, 26, 26), 12, 0.1, 0.0),  # Model3's conv2 block
    ((16, 12, 12, 12), 12, 0.05, 0.0),
    ((3, 8, 5, 7), 10, 0.25, 0.0),  # 3*3*5 = 45 pixels: all but 32 in the tail after whole blocks of 16
    ((5, 12, 3, 3), 12, 0.1, 0.0),  # 5 pixels, fewer than a block
    ((32, 12, 10, 10), 8, 0.0, 0.0),  # no dropout layer
    ((8, 1, 12, 12), 26, 0.1, 0.0),  # 1 channel in, 26 out
])
def test_the_fused_block_is_the_layers_one_by_one(shape, cout, dropout, offset):
    fused, layered = block_pair(shape[1], cout, dropout)
    torch.manual_seed(1)
    x = (torch.randn(shape) + offset).contiguous(memory_format=CL)
    grad = torch.randn(shape[0], cout, shape[2] - 2, shape[3] - 2).contiguous(memory_format=CL)
    out_f, grads_f, bufs_f = step(fused, x, grad, fused=True)
    out_l, grads_l, bufs_l = step(layered, x, grad, fused=False)
    assert out_f.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out_f, out_l, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads_f, grads_l, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    for a, b in zip(bufs_f, bufs_l, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_statistics_keep_their_precision_far_from_zero():
    """Sums in double: an activation far from zero (mean 1000, spread 0.5) against float64 torch."""
    torch.manual_seed(2)
    y = (torch.randn(32, 12, 10, 10) * 0.5 + 1000).contiguous(memory_format=CL)
    block = ConvBlock(nn.Identity(), nn.ReLU(), FastBatchNorm2d(12)).train()
    truth = nn.BatchNorm2d(12).double()
    y64 = y.double().requires_grad_()
    grad = torch.randn_like(y)
    expected = truth(F.relu(y64))
    expected.backward(grad.double())
    yi = y.clone().requires_grad_()
    out = block(yi)
    out.backward(grad)
    assert (out.double() - expected).abs().max() < 1e-3
    assert (yi.grad.double() - y64.grad).abs().max() < 1e-3
    torch.testing.assert_close(block[2].running_var.double(), truth.running_var, rtol=1e-4, atol=0)


def test_a_hooked_layer_runs_as_itself_and_eval_is_unchanged():
    block, _ = block_pair(8, 12, 0.1)
    x = torch.randn(4, 8, 9, 9).contiguous(memory_format=CL)
    seen = []
    handle = block[1].register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
    block(x)
    handle.remove()
    assert len(seen) == 1 and (seen[0] >= 0).all()  # the ReLU ran, and its hook saw its output
    block.eval()
    torch.testing.assert_close(block(x), nn.Sequential.forward(block, x))


def test_same_seed_same_bits():
    a = build_model("Model3", 0.1).to(memory_format=CL)
    b = copy.deepcopy(a)
    x = torch.randn(16, 1, 28, 28).contiguous(memory_format=CL)
    y = torch.randint(0, 10, (16,))
    results = []
    for model in (a, b):
        torch.manual_seed(5)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in model.parameters()])
    for u, v in zip(*results, strict=True):
        assert torch.equal(u, v)


TRAIN = """
import json, sys, torch, torch.nn.functional as F
from core import native
from core.models import build_model
torch.manual_seed(0)
model = build_model("Model3", 0.1).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (64,))
losses = []
for _ in range(4):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print(json.dumps({"native": native.library() is not None, "why_not": native.why_not(), "losses": losses,
                  "weight": model.convblock2[0].weight.flatten()[:5].tolist()}))
"""


def train_in_a_process(tmp_path: Path, **env) -> dict:
    done = subprocess.run([sys.executable, "-c", TRAIN], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LAB_NATIVE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), **env})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"stderr": done.stderr}


def test_a_process_that_cannot_build_them_trains_the_same_on_torchs_ops(tmp_path):
    """A real subprocess whose compiler fails (CC=false) falls back, says why in one line, and trains the same
    steps; so does one with LAB_NATIVE=0; one whose cache folder cannot be made builds in the temp dir."""
    built = train_in_a_process(tmp_path)
    failed = train_in_a_process(tmp_path, CC=shutil.which("false") or "/bin/false", LAB_NATIVE_CACHE=str(tmp_path / "none"))
    off = train_in_a_process(tmp_path, LAB_NATIVE="0")
    (tmp_path / "a-file").write_text("not a folder")
    unwritable = train_in_a_process(tmp_path, LAB_NATIVE_CACHE=str(tmp_path / "a-file" / "cache"))
    assert built["native"] is bool(shutil.which("cc") or shutil.which("gcc"))
    assert not failed["native"] and "failed" in failed["why_not"]
    assert [ln for ln in failed["stderr"].splitlines() if "torch's ops" in ln] == [
        f"{failed['why_not']}; training runs on torch's ops (the same numbers, ~1.6x slower steps)"]
    assert not off["native"] and off["why_not"] == "LAB_NATIVE=0" and "torch's ops" not in off["stderr"]
    assert unwritable["native"] is built["native"] and unwritable["losses"] == built["losses"]
    for other in (failed, off):
        assert other["losses"] == pytest.approx(built["losses"], rel=1e-5)
        assert other["weight"] == pytest.approx(built["weight"], rel=1e-4, abs=1e-6)
    assert list((tmp_path / "cache").glob("lab_kernels-*.so")) or not built["native"]  # built once, cached
    assert not list((tmp_path / "cache").glob("*.tmp"))  # no half-written library left behind
