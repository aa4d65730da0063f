"""core.gpucheck's checks, run on the CPU (the GPU runs them as `python -m core.gpucheck`): each one measures,
so on the CPU the conv block's check must see the fused C op where it is built and say FAIL (not stepped aside)."""

from __future__ import annotations

import re

from core import native
from core.gpucheck import check_batchnorm, check_convblock


def test_the_batch_norm_check_compares_with_torchs_own_layer():
    line = check_batchnorm("cpu")
    assert line.startswith("FastBatchNorm2d on cpu") and not line.endswith("FAIL"), line


def test_the_conv_block_check_names_what_ran_and_fails_where_the_fused_op_did_not_step_aside():
    line = check_convblock("cpu")
    worst = float(re.search(r"one by one (\S+)", line).group(1))
    assert worst < 1e-3, line  # the fused op and the layers compute the same block
    if native.library() is not None:
        assert "the fused C op ran" in line and line.endswith("FAIL"), line
    else:
        assert "its layers ran" in line and not line.endswith("FAIL"), line
