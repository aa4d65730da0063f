"""`python -m core.thin` trains another width plan of the shared stack and reports its last epochs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.models import MODELS
from core.thin import main, register_widths


@pytest.fixture(autouse=True)
def registry_restored():
    """core.thin registers its width plan in the process-wide registry: undo that for the other tests."""
    before = dict(MODELS)
    yield
    MODELS.clear()
    MODELS.update(before)


def test_thin_plan_trains_and_reports_params_and_last_epochs(synthetic_root, capsys):
    assert main(["6,8,6,8,8,8,8", "--epochs", "3", "--data", str(synthetic_root), "--set", "weight_decay=0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("epoch ") for line in out) == 3
    assert out[-1].startswith("SmallNet_6_8_6_8_8_8_8: 2,878 params, seed 1, test in the last epochs ")
    assert len(out[-1].split(" epochs ")[1].split(" / ")) == 3


def test_a_separable_plan_with_sep4k_widths_is_sep4ks_net(synthetic_root, capsys):
    assert main(["8,12,8,26,26,26,26", "--separable", "--epochs", "1", "--data", str(synthetic_root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("SmallNet_sep_8_12_8_26_26_26_26: 4,566 params")


def test_widths_are_checked():
    with pytest.raises(ValueError, match="seven positive widths"):
        register_widths((8, 8, 8))
    assert "SmallNet_8_8_8" not in MODELS


def test_bad_input_exits_2_with_a_message(synthetic_root):
    for args in (["8,8,x,8,8,8,8"], ["8,8,8,8,8,8,8", "--set", "nonsense=1"], ["8,8,8,8,8,8,8", "--set", "lr"]):
        r = subprocess.run([sys.executable, "-m", "core.thin", *args, "--data", str(synthetic_root)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "python -m core.thin:" in r.stderr, r.stderr
