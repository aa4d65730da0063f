"""The benchmark runs end to end, with torch's own layers on the seed's side."""

from __future__ import annotations

import torch
import torch.nn as nn

from core import native
from core.bench import PlainTorchSide, profile_engine, rotate_batch, seed_model
from core.bench import main as bench_main
from core.layers import FastBatchNorm2d, FastDropout


def test_seed_model_uses_torchs_own_dropout_and_batch_norm():
    model = seed_model()
    assert not any(isinstance(m, (FastDropout, FastBatchNorm2d)) for m in model.modules())
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 5
    assert sum(type(m) is nn.BatchNorm2d for m in model.modules()) == 7


def test_bench_prints_a_ratio_line(synthetic_root, capsys):
    assert bench_main(["--batches", "2", "--rounds", "2", "--skip-time-to-target", "--data", str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    ratio = [line for line in out.splitlines() if line.startswith("ratio")]
    assert [r.split("(")[1] for r in ratio] == ["our engine / seed loop)", "our engine / plain PyTorch)"]
    assert all(r.split()[1].endswith("x") and float(r.split()[1][:-1]) > 0 for r in ratio)
    assert "plain PyTorch (tensors, torch's layers)" in out and "peak memory" in out
    assert "CPU time per batch" in out


def test_plain_side_trains_the_seed_model_with_torchs_layers_on_batched_rotations(synthetic_root):
    side = PlainTorchSide(2, str(synthetic_root), "cpu")
    assert not any(isinstance(m, (FastDropout, FastBatchNorm2d)) for m in side.model.modules())
    before = [p.detach().clone() for p in side.model.parameters()]
    side.run()
    assert all(not torch.equal(b, p) for b, p in zip(before, side.model.parameters(), strict=True))
    x = side.x[:4]
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(rotate_batch(x, 0.0, g), x, atol=1e-5)  # 0 degrees: the images as they were
    assert not torch.allclose(rotate_batch(x, 30.0, g), x, atol=1e-3)


def test_bench_profile_names_the_ops(synthetic_root, capsys):
    assert bench_main(["--profile", "--batches", "2", "--data", str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    assert "Self CPU" in out and "convolution" in out  # the top rows: convolutions are ~40% of a step
    # Our batch norm is in the profile (fused with ReLU and dropout where the C kernels build, test_native.py);
    # on a loaded machine it can fall out of the printed top 15 rows.
    ours = "_FusedReluBnDropout" if native.library() is not None else "_ChannelsLastBatchNorm"
    assert ours in profile_engine(2, str(synthetic_root), rows=200)


def test_bench_parts_times_each_part_of_a_step_and_each_convolution(synthetic_root, capsys):
    assert bench_main(["--parts", "--data", str(synthetic_root)]) == 0
    out = capsys.readouterr().out.splitlines()
    ours, plain = (next(line.split() for line in out if line.split()[:1] == [name]) for name in ("ours", "plain"))
    for row in (ours, plain):  # name, four parts, "total", their sum
        assert abs(sum(map(float, row[1:5])) - float(row[6])) < 0.3 and all(float(v) >= 0 for v in row[1:5])
    convs = [line for line in out if "->" in line]
    assert len(convs) == 8 and convs[1].split("->")[0].strip() == "(128, 8, 26, 26)"
