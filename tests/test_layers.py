"""FastDropout is nn.Dropout's maths (keep fraction, scaling, fresh masks, eval identity); FastBatchNorm2d is
nn.BatchNorm2d: same outputs, gradients, running statistics and state_dict."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from core.layers import FastBatchNorm2d, FastDropout

CL = torch.channels_last


def pair(channels: int, seed: int = 0) -> tuple[FastBatchNorm2d, nn.BatchNorm2d]:
    torch.manual_seed(seed)
    ours, theirs = FastBatchNorm2d(channels), nn.BatchNorm2d(channels)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize(
    "shape, shift",
    [((128, 12, 24, 24), 0.0), ((64, 8, 26, 26), 1.0), ((3, 10, 5, 7), 0.0), ((5, 12, 1, 1), -2.0), ((2, 8, 4, 4), 5.0)],
)
def test_training_step_matches_torch(shape, shift):
    ours, theirs = pair(shape[1])
    torch.manual_seed(1)
    x = (torch.randn(shape) * 2 + shift).contiguous(memory_format=CL)
    grad = torch.randn(shape).contiguous(memory_format=CL)
    outputs, grads = [], []
    for bn in (ours, theirs):
        xi = x.clone().requires_grad_()
        for _ in range(3):  # running statistics over several steps
            y = bn(xi)
        y.backward(grad)
        outputs.append(y)
        grads.append((xi.grad, bn.weight.grad, bn.bias.grad))
    assert outputs[0].is_contiguous(memory_format=CL)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3 * b.abs().max().item())
    # Running statistics against torch's kernel in float64: torch's own float32 kernel drifts from it by
    # ~1.2e-5 (relative) on the 128x12x24x24 case when it runs on one thread, ours stays within 1e-5.
    exact = nn.BatchNorm2d(shape[1]).double()
    exact.load_state_dict(theirs.state_dict() | {"running_mean": torch.zeros(shape[1]), "running_var": torch.ones(shape[1]),
                                                  "num_batches_tracked": torch.tensor(0)})
    for _ in range(3):
        exact(x.double())
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(exact, name).to(getattr(ours, name).dtype), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=3e-5, atol=1e-6)


@pytest.mark.parametrize("offset", [100.0, 1000.0])
def test_inputs_far_from_zero_keep_their_precision(offset):
    """Two-pass statistics: no cancellation when the mean dwarfs the spread (float64 as the truth)."""
    torch.manual_seed(3)
    x = (torch.randn(32, 12, 10, 10) * 0.5 + offset).contiguous(memory_format=CL).requires_grad_()
    truth = nn.BatchNorm2d(12).double()
    x64 = x.detach().double().requires_grad_()
    grad = torch.randn(32, 12, 10, 10)
    expected = truth(x64)
    expected.backward(grad.double())
    ours = FastBatchNorm2d(12)
    y = ours(x)
    y.backward(grad)
    assert (y.double() - expected).abs().max() < 1e-3 * offset / 100  # torch's float32 kernel: ~6e-4 at 100
    assert (x.grad.double() - x64.grad).abs().max() < 1e-3 * offset / 100
    torch.testing.assert_close(ours.running_var.double(), truth.running_var, rtol=1e-3, atol=0)


def test_gradient_in_another_layout_and_input_without_grad():
    ours, theirs = pair(12)
    x = torch.randn(16, 12, 6, 6).contiguous(memory_format=CL)
    w = torch.randn(16, 12, 6, 6)  # NCHW: the incoming gradient is not channels_last
    for bn in (ours, theirs):
        (bn(x) * w).sum().backward()
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-4, atol=1e-4)


def test_eval_nchw_and_state_dict_are_torchs():
    ours, theirs = pair(8)
    x = torch.randn(4, 8, 5, 5).contiguous(memory_format=CL)
    ours(x), theirs(x)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))
    ours.train(), theirs.train()
    nchw = torch.randn(4, 8, 5, 5)
    torch.testing.assert_close(ours(nchw), theirs(nchw))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    nn.BatchNorm2d(8).load_state_dict(ours.state_dict())  # checkpoints move between the two


def test_one_value_per_channel_is_refused_like_torch():
    ours, _ = pair(8)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ours(torch.randn(1, 8, 1, 1).contiguous(memory_format=CL))


def test_fast_dropout_matches_nn_dropout_in_expectation_and_eval():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    for p in (0.1, 0.25):
        d = FastDropout(p)
        y = d(x)
        assert abs((y == 0).float().mean().item() - p) < 0.01
        assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
        assert not torch.equal(d(x), y)  # a fresh mask per call
        d.eval()
        assert torch.equal(d(x), x)


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
