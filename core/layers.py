"""Layers with torch's maths and a faster CPU path for the small, channels_last nets we train.

`FastDropout` is nn.Dropout, `FastBatchNorm2d` is nn.BatchNorm2d (same parameters, buffers and
state_dict, so checkpoints load into either); each docstring says what is cheaper and why.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import native


class FastDropout(nn.Module):
    """nn.Dropout's maths, cheaper on CPU: keep prob 1-p, survivors scaled by 1/keep, a fresh mask
    per call, identity in eval.

    The mask is counter-based: element i (in memory order) is kept when the top 16 bits of a hash of i, keyed
    by one 64-bit draw of torch's generator per call, are >= p * 65536 (`keep_factors`). So the C kernels
    (core/native) compute it where they use it, in parallel and without storing it (the backward recomputes
    it), and torch's ops compute the very same mask where those kernels cannot be built; torch.manual_seed
    still fixes it. p is thereby rounded to a multiple of 1/65536 (0.1 -> 0.100006), and the scale uses the
    rounded keep probability so the expected output still equals the input exactly.

    Off the CPU it steps aside to F.dropout (one fused kernel there, against the half-dozen small launches
    of the mask above: a GPU running this 6k-parameter net is bound by kernel launches, docs/gpu.md).
    """

    LEVELS = 65536  # 16-bit lanes

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p
        self.drop_levels = round(p * self.LEVELS)  # of the 65536 lane values, this many drop
        self.scale = self.LEVELS / (self.LEVELS - self.drop_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_levels == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        factors = keep_factors(x.numel(), draw_key(), self.drop_levels, self.scale)
        # Lay the mask out like x (channels_last in training, see core.train) so the multiply streams.
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        return x * (factors.as_strided(x.shape, x.stride()) if dense else factors.view(x.shape)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def draw_key() -> tuple[int, int]:
    """A dropout mask's key: one full-range 64-bit draw of torch's (CPU) generator, as two 32-bit halves."""
    key = int(torch.empty((), dtype=torch.int64).random_(-(2**63), None)) & (2**64 - 1)
    return key & 0xFFFFFFFF, key >> 32


def _int32(v: int) -> int:
    """A uint32 value as the int32 with the same bits."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _xorshift_(x: torch.Tensor, k: int) -> torch.Tensor:
    """x ^= x >> k, the shift logical (uint32's), in place on int32."""
    return x.bitwise_xor_((x >> k).bitwise_and_((1 << (32 - k)) - 1))


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """relu_bn_dropout.c's mix32 (Chris Wellons' lowbias32) in place on int32 tensors holding uint32 bits
    (int32 multiplies wrap as uint32 ones do)."""
    _xorshift_(x, 16).mul_(_int32(0x7FEB352D))
    _xorshift_(x, 15).mul_(_int32(0x846CA68B))
    return _xorshift_(x, 16)


def keep_factors(n: int, key: tuple[int, int], drop_levels: int, scale: float) -> torch.Tensor:
    """Dropout's float32 factors for elements 0..n-1: `scale` where top16(mix32(mix32(i ^ k0) + k1)) >= drop_levels,
    else 0. From the C kernels when they are built, else the same values from torch's ops (~20x slower)."""
    if n >= 2**31:  # the lanes are indexed by a 32-bit counter (torch's path: int32)
        raise ValueError(f"dropout over {n:,} values in one call: at most 2^31 - 1 are supported")
    lib = native.library()
    if lib is None:
        return keep_factors_torch(n, key, drop_levels, scale)
    out = torch.empty(n, dtype=torch.float32)
    lib.lab_keep_factors(_ptr(out), n, *key, drop_levels, scale, torch.get_num_threads())
    return out


def keep_factors_torch(n: int, key: tuple[int, int], drop_levels: int, scale: float) -> torch.Tensor:
    """keep_factors from torch's ops alone (where the C kernels cannot be built)."""
    k0, k1 = key
    lane = _mix32_(_mix32_(torch.arange(n, dtype=torch.int32).bitwise_xor_(_int32(k0))).add_(_int32(k1)))
    lane = (lane >> 16).bitwise_and_(0xFFFF)
    return torch.where(lane >= drop_levels, torch.tensor(scale, dtype=torch.float32), torch.tensor(0.0))


def _columns(t: torch.Tensor) -> torch.Tensor:
    """A channels_last (N, C, H, W) tensor as a 2-D view (rows, k*C), k a power of two up to 16.

    Column j holds channel j % C. Folding k pixels into a row makes the per-channel reductions and
    the scale-and-shift run over rows of up to 16*C floats instead of C (8-12 here), which is what
    lets them vectorise.
    """
    n, c, h, w = t.shape
    pixels = n * h * w
    k = 16
    while pixels % k:
        k //= 2
    return t.permute(0, 2, 3, 1).view(pixels // k, k * c)


def _per_channel_sum(cols: torch.Tensor, channels: int) -> torch.Tensor:
    return cols.sum(0).view(-1, channels).sum(0)


class _ChannelsLastBatchNorm(torch.autograd.Function):
    """Training-mode batch norm of a channels_last tensor: out = x * a + c per channel.

    Forward: two reductions (sum x, sum x^2) and one fused multiply-add. Backward: two reductions
    (sum dy, sum dy*x) and two fused multiply-adds, from dx = a*dy + b*x + c', the usual batch-norm
    gradient with its per-channel terms collected. Returns (out, batch mean, biased batch var).

    E[x^2] - E[x]^2 loses precision when a channel's mean dwarfs its spread. Here the inputs are ReLU
    outputs (mean ~ std), where it is more precise than torch's own float32 kernel; for a channel with
    mean^2 > MAX_MEAN_TO_VAR * var, the whole layer switches to two passes over the centred input
    (one more pass and one more saved tensor, ~15% slower steps), so no input loses precision.
    """

    MAX_MEAN_TO_VAR = 100.0

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        channels = x.shape[1]
        cols = _columns(x)
        n = x.numel() // channels
        k = cols.shape[1] // channels
        mean = _per_channel_sum(cols, channels) / n
        mean_sq = mean * mean
        var = (_per_channel_sum(cols * cols, channels) / n - mean_sq).clamp_min_(0)
        if bool((mean_sq > _ChannelsLastBatchNorm.MAX_MEAN_TO_VAR * var).any()):
            centred = cols - mean.repeat(k)
            var = _per_channel_sum(centred * centred, channels) / n
            saved, shift = centred.view(x.shape[0], x.shape[2], x.shape[3], channels).permute(0, 3, 1, 2), torch.zeros_like(mean)
        else:
            saved, shift = x, mean
        istd = (var + eps).rsqrt()
        a = weight * istd
        out = torch.empty_like(x)
        torch.addcmul((bias - mean * a).repeat(k), cols, a.repeat(k), out=_columns(out))
        ctx.save_for_backward(saved, weight, shift, istd)  # gradients use saved - shift = x - mean
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, weight, mean, istd = ctx.saved_tensors  # (x, mean), or (x - mean, 0) for two-pass layers
        channels = x.shape[1]
        cols = _columns(x)
        dy = _columns(grad_out.contiguous(memory_format=torch.channels_last))
        n = x.numel() // channels
        k = cols.shape[1] // channels
        sum_dy = _per_channel_sum(dy, channels)
        sum_dy_xhat = istd * (_per_channel_sum(dy * cols, channels) - mean * sum_dy)  # = grad of weight
        grad_x = None
        if ctx.needs_input_grad[0]:
            a = weight * istd
            b = -a * istd * sum_dy_xhat / n
            c = -a * sum_dy / n - b * mean
            grad_x = torch.empty_like(x)
            gx = _columns(grad_x)
            torch.addcmul(c.repeat(k), cols, b.repeat(k), out=gx)
            gx.addcmul_(dy, a.repeat(k))
        return grad_x, sum_dy_xhat, sum_dy, None


class FastBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d; in training on channels_last CPU input, computed by `_ChannelsLastBatchNorm`.

    Torch's own CPU kernel for channels_last input with few channels is slow: for 128x12x24x24,
    forward + backward take ~2.8 ms, against ~0.75 ms here (and ~0.8 ms for NCHW input, which the
    convolutions would pay for many times over). Running statistics are updated as torch does
    (momentum, unbiased running variance, num_batches_tracked). Any other case (eval, NCHW, CUDA,
    cumulative momentum, one value per channel) is nn.BatchNorm2d's own forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.batch_statistics and channels_last_cpu(x)):
            return super().forward(x)
        out, mean, var = _ChannelsLastBatchNorm.apply(x, self.weight, self.bias, self.eps)
        self.track(mean, var, x.numel() // x.shape[1])
        return out

    @property
    def batch_statistics(self) -> bool:
        """Whether this layer normalises by the batch's statistics and tracks them as torch does (training with a
        momentum), the case the fast paths compute."""
        return self.training and self.affine and self.track_running_stats and self.momentum is not None

    @torch.no_grad()
    def track(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        """Update the running statistics from a batch's mean and biased variance over n values a channel."""
        self.num_batches_tracked.add_(1)
        self.running_mean.lerp_(mean, self.momentum)
        self.running_var.lerp_(var * (n / (n - 1)), self.momentum)


_F32 = ctypes.POINTER(ctypes.c_float)


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.cast(t.data_ptr(), _F32)


def channels_last_cpu(x: torch.Tensor) -> bool:
    """A 4-D float32 CPU tensor, channels_last in memory, with more than one value a channel."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and x.numel() > x.shape[1])




class _FusedReluBnDropout(torch.autograd.Function):
    """ReLU -> training-mode batch norm -> dropout of a channels_last CPU tensor in C (core/native): two passes
    over the activation forward and two backward, where torch's ops (and _ChannelsLastBatchNorm) make ~8 each.
    The same maths as ReLU -> FastBatchNorm2d -> FastDropout with the same mask (FastDropout's, from `key`;
    drop_levels 0: no dropout); the statistics are summed in double. Returns (out, batch mean, biased batch var)."""

    @staticmethod
    def forward(ctx, y, weight, bias, eps, key, drop_levels, scale):
        channels = y.shape[1]
        pixels = y.numel() // channels
        out = torch.empty_like(y)
        mean, var, istd = (torch.empty(channels, dtype=torch.float32) for _ in range(3))
        weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
        rc = native.library().lab_rbd_forward(
            _ptr(y), _ptr(out), pixels, channels, _ptr(weight), _ptr(bias), eps, *key, drop_levels, scale,
            _ptr(mean), _ptr(var), _ptr(istd), torch.get_num_threads())
        if rc:
            raise RuntimeError(f"native ReLU/batch norm/dropout forward failed (code {rc})")
        ctx.save_for_backward(y, weight, mean, istd)
        ctx.mask = key, drop_levels, scale  # the backward recomputes the mask
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        y, weight, mean, istd = ctx.saved_tensors
        channels = y.shape[1]
        g = grad_out.contiguous(memory_format=torch.channels_last)
        grad_y = torch.empty_like(y) if ctx.needs_input_grad[0] else None
        grad_weight, grad_bias = torch.empty(channels, dtype=torch.float32), torch.empty(channels, dtype=torch.float32)
        rc = native.library().lab_rbd_backward(
            _ptr(g), _ptr(y), _ptr(grad_y), y.numel() // channels, channels, _ptr(weight), _ptr(mean), _ptr(istd),
            *ctx.mask[0], *ctx.mask[1:], _ptr(grad_weight), _ptr(grad_bias), torch.get_num_threads())
        if rc:
            raise RuntimeError(f"native ReLU/batch norm/dropout backward failed (code {rc})")
        return grad_y, grad_weight, grad_bias, None, None, None, None


MAX_FUSED_CHANNELS = 64  # the C kernels' per-channel buffers (relu_bn_dropout.c's MAXC)


class ConvBlock(nn.Sequential):
    """A conv block (core.models.conv_block): its convolution(s), then ReLU -> FastBatchNorm2d [-> FastDropout].

    The same layers and state_dict as the nn.Sequential it is. In training on a channels_last CPU tensor, with
    the C kernels built (core/native), the ReLU, batch norm and dropout run as one fused op (_FusedReluBnDropout:
    a Model3 step at 2 threads ~11.6 ms, against ~16 ms for these layers on torch's ops with FastDropout's former
    mask, README "Speed"); anywhere else (eval, CUDA, hooks on those layers, no C compiler), each layer runs as
    itself.
    """

    @staticmethod
    def _fusable_tail(layers: list[nn.Module]) -> tuple[int, FastBatchNorm2d, FastDropout | None] | None:
        """(index of the ReLU, the batch norm, the dropout or None) when the layers end in a tail the kernels fuse."""
        drop = layers[-1] if isinstance(layers[-1], FastDropout) else None
        tail = layers[-3:] if drop else layers[-2:]
        at = len(layers) - len(tail)
        if not (at >= 1 and isinstance(tail[0], nn.ReLU) and isinstance(tail[1], FastBatchNorm2d)):
            return None
        bn = tail[1]
        if not bn.batch_statistics or bn.num_features > MAX_FUSED_CHANNELS:
            return None
        if any(m._forward_hooks or m._forward_pre_hooks for m in tail):  # someone watches a layer: run it
            return None
        return at, bn, drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.device.type == "cpu") or native.library() is None:  # eval, CUDA, no kernels
            return super().forward(x)
        layers = list(self)
        tail = self._fusable_tail(layers)
        if tail is None:
            return super().forward(x)
        at, bn, drop = tail
        for layer in layers[:at]:
            x = layer(x)
        if not channels_last_cpu(x):
            for layer in layers[at:]:
                x = layer(x)
            return x
        dropping = drop is not None and drop.drop_levels > 0
        key, drop_levels, scale = (draw_key(), drop.drop_levels, drop.scale) if dropping else ((0, 0), 0, 1.0)
        out, mean, var = _FusedReluBnDropout.apply(x, bn.weight, bn.bias, bn.eps, key, drop_levels, scale)
        bn.track(mean, var, x.numel() // x.shape[1])
        return out
