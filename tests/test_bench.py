"""The benchmark runs end to end, and FastDropout is nn.Dropout's maths (keep fraction, scaling, eval identity)."""

from __future__ import annotations

import torch
import torch.nn as nn

from core.bench import main as bench_main
from core.bench import seed_model
from core.layers import FastBatchNorm2d, FastDropout


def test_fast_dropout_keeps_the_right_fraction_and_scale():
    torch.manual_seed(0)
    drop = FastDropout(0.1).train()
    x = torch.ones(200, 8, 26, 26)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002  # 1.08M samples: std of the fraction ~3e-4
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9), rtol=1e-4)
    assert abs(y.mean().item() - 1.0) < 0.003  # unbiased, like nn.Dropout


def test_fast_dropout_matches_nn_dropout_statistics():
    torch.manual_seed(1)
    x = torch.randn(64, 12, 24, 24)
    ours, theirs = FastDropout(0.25).train()(x), nn.Dropout(0.25).train()(x)
    assert abs((ours == 0).float().mean().item() - (theirs == 0).float().mean().item()) < 0.01
    assert abs(ours.mean().item() - theirs.mean().item()) < 0.01
    assert abs(ours.std().item() - theirs.std().item()) < 0.02


def test_fast_dropout_draws_a_fresh_mask_each_call_and_is_identity_in_eval():
    drop = FastDropout(0.5).train()
    x = torch.ones(1000)
    assert not torch.equal(drop(x) == 0, drop(x) == 0)
    drop.eval()
    assert drop(x) is x
    assert FastDropout(0.0).train()(x) is x


def test_fast_dropout_gradient_is_the_mask():
    drop = FastDropout(0.2).train()
    x = torch.randn(3, 5, 7, 9, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    assert torch.allclose(x.grad, (y != 0).float() * drop.scale)


def test_fast_dropout_follows_the_input_layout():
    torch.manual_seed(2)
    drop = FastDropout(0.1).train()
    cl = torch.ones(64, 12, 24, 24).to(memory_format=torch.channels_last)
    y = drop(cl)
    assert y.is_contiguous(memory_format=torch.channels_last)  # no layout change forced on the next conv
    per_channel = (y != 0).float().mean(dim=(0, 2, 3))
    assert ((per_channel - 0.9).abs() < 0.01).all()  # every channel keeps ~90%, no striping from the layout
    strided = torch.ones(40, 30)[:, ::3]  # neither NCHW- nor channels_last-dense: still works
    assert abs((drop(strided) != 0).float().mean().item() - 0.9) < 0.05


def test_seed_model_uses_torchs_own_dropout_and_batch_norm():
    model = seed_model()
    assert not any(isinstance(m, (FastDropout, FastBatchNorm2d)) for m in model.modules())
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 5
    assert sum(type(m) is nn.BatchNorm2d for m in model.modules()) == 7


def test_bench_prints_a_ratio_line(synthetic_root, capsys):
    assert bench_main(["--batches", "2", "--rounds", "2", "--skip-time-to-target", "--data", str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    ratio = [line for line in out.splitlines() if "ratio" in line]
    assert len(ratio) == 1 and ratio[0].split()[1].endswith("x")
    assert "images/s" in out and "peak memory" in out


def test_bench_profile_names_the_ops(synthetic_root, capsys):
    assert bench_main(["--profile", "--batches", "2", "--data", str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    assert "Self CPU" in out and "convolution" in out and "_ChannelsLastBatchNorm" in out
