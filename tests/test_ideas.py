"""The Ideas page: each step's diff names what really changed, its notes quote the README, the page runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.ideas import BASELINE, IDEAS, overview_rows, step_diff, step_runs, steps
from core.models import MODELS

ROOT = Path(__file__).resolve().parent.parent
HOME = str(ROOT / "dashboard" / "Home.py")


def changed(diff: dict, what: str) -> tuple:
    row = next(r for r in diff["architecture"] if r["what"] == what)
    return row["before"], row["after"]


def setting(rows: list[dict], name: str) -> tuple:
    row = next(r for r in rows if r["setting"] == name)
    return row["before"], row["after"]


def test_steps_follow_the_registry():
    assert steps() == list(zip(list(MODELS), list(MODELS)[1:], strict=False))
    assert steps()[0] == ("Model1", "Model2") and steps()[-1] == ("Sep4k", "Sep3k")
    assert set(IDEAS) == {after for _, after in steps()}


def test_model1_to_model2_adds_batchnorm_and_shrinks_the_net():
    diff = step_diff("Model1", "Model2")
    assert diff["parameters"] == {"before": 234_208, "after": 7_856}
    assert changed(diff, "BatchNorm") == ("no", "yes")
    assert changed(diff, "conv widths") == ("32, 64, 32, 64, 64, 128, 64", "8, 12, 8, 12, 12, 12, 12")
    assert diff["added"] == diff["removed"] == []  # the same layers, thinner
    assert diff["seed recipe"] == []  # both on the seed's plain SGD


def test_model2_to_model2b_adds_dropout_only():
    diff = step_diff("Model2", "Model2b")
    assert [r["what"] for r in diff["architecture"]] == ["dropout"]
    assert changed(diff, "dropout") == (0.0, 0.25)
    assert diff["parameters"] == {"before": 7_856, "after": 7_856}


def test_model2b_to_model2c_swaps_the_conv_head_for_gap():
    diff = step_diff("Model2b", "Model2c")
    assert changed(diff, "head") == ("conv", "gap")
    assert changed(diff, "RF of the last conv wider than 1x1") == (28, 22)  # the seed's table: 22x22
    assert diff["removed"] == ["head (conv 4x4)"]
    assert diff["added"] == ["gap (gap 4x4)", "head (conv 1x1)"]
    assert diff["parameters"] == {"before": 7_856, "after": 6_056}
    head = {r["layer"]: r for r in diff["layers"]}
    assert head["head (conv 4x4)"]["params before"] == 1_920 and head["head (conv 1x1)"]["params after"] == 120


def test_model2c_to_model3_adds_the_schedule_and_lighter_dropout():
    diff = step_diff("Model2c", "Model3")
    assert setting(diff["seed recipe"], "scheduler") == ("none", "plateau")
    assert setting(diff["reference recipe"], "scheduler") == ("none", "onecycle")
    assert setting(diff["reference recipe"], "lr") == (0.01, 0.05)
    assert setting(diff["reference recipe"], "batch_size") == (128, 64)
    assert setting(diff["reference recipe"], "ema") == (0.0, 0.999)  # the weight average (issue 16)
    assert changed(diff, "dropout") == (0.25, 0.1)
    assert diff["parameters"]["before"] == diff["parameters"]["after"]


def test_model3_to_tiny4k_thins_the_middle_convs():
    diff = step_diff("Model3", "Tiny4k")
    assert changed(diff, "conv widths") == ("8, 12, 8, 12, 12, 12, 12", "8, 12, 8, 10, 10, 10, 12")
    assert diff["parameters"]["after"] == 4_892 < diff["parameters"]["before"]


def test_tiny4k_to_sep4k_makes_the_convs_after_the_pool_separable_and_wider():
    diff = step_diff("Tiny4k", "Sep4k")
    assert changed(diff, "conv widths") == ("8, 12, 8, 10, 10, 10, 12", "8, 16, 8, 26, 26, 26, 26")
    assert changed(diff, "depthwise-separable convs") == (0, 4)
    assert diff["parameters"] == {"before": 4_892, "after": 4_894}
    assert [r["setting"] for r in diff["reference recipe"]] == ["batch_size", "lr", "ema"]
    assert setting(diff["reference recipe"], "batch_size") == (128, 64) and setting(diff["reference recipe"], "ema") == (0.0, 0.999)


def test_sep4k_to_sep3k_thins_conv2_and_the_separable_convs_under_4000_without_the_average():
    diff = step_diff("Sep4k", "Sep3k")
    assert changed(diff, "conv widths") == ("8, 16, 8, 26, 26, 26, 26", "8, 14, 8, 22, 22, 22, 22")
    assert diff["parameters"] == {"before": 4_894, "after": 3_942}
    assert diff["added"] == diff["removed"] == []
    assert [r["setting"] for r in diff["reference recipe"]] == ["ema"]
    assert setting(diff["reference recipe"], "ema") == (0.999, 0.0)


def test_a_non_step_is_refused():
    with pytest.raises(ValueError, match="not a step"):
        step_diff("Model1", "Model3")


def test_each_step_overlays_both_shipped_runs():
    for before, after in steps():
        runs = step_runs(before, after)
        assert {f"{before} (reference)", f"{after} (reference)"} <= set(runs)
        assert all({"train_acc", "test_acc"} <= set(e) for rows in runs.values() for e in rows)


def test_every_number_in_the_notes_is_the_readmes():
    """The notes summarise README's "What each step changed": a number quoted here must appear there."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### What each step changed")
    section = readme[start : readme.index("\n### ", start + 1)]
    for text in [BASELINE, *(idea.what_it_did for idea in IDEAS.values())]:
        assert text.count("\n") == 1, text  # two lines
        for number in re.findall(r"\d[\d,.]*\d|\d", text):
            assert number in section, f"{number} (in {text[:40]!r}...) is not in the README section"


def test_ideas_page_runs_every_step_and_shows_the_curves(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_DB", f"sqlite:///{tmp_path / 'runs.db'}")
    at = AppTest.from_file(HOME, default_timeout=120)
    at.run()
    at.switch_page("views/Ideas.py").run()
    assert not at.exception, at.exception
    options = at.radio(key="step").options
    assert len(options) == len(steps())
    for (before, after), option in zip(steps(), options, strict=True):
        at.radio(key="step").set_value(option).run()
        assert not at.exception, at.exception
        assert any(f"{before} → {after}" in h.value for h in at.header)
        charts = at.get("plotly_chart")
        assert len(charts) == 3
        names = {trace["name"] for trace in json.loads(charts[0].proto.spec)["data"]}
        assert f"{before} (reference) train acc" in names and f"{after} (reference) test acc" in names


def test_overview_has_one_row_per_idea():
    rows = overview_rows()
    assert [r["step"] for r in rows] == [f"{b} → {a}" for b, a in steps()]
    assert rows[0]["parameters"] == "234,208 → 7,856" and "BatchNorm" in rows[0]["idea"]


def test_accuracy_axis_keeps_every_later_epoch_in_view():
    from core.ideas import accuracy_floor

    runs = {"a": [{"train_acc": 60.0, "test_acc": 90.0}] * 2 + [{"train_acc": 98.3, "test_acc": 99.1}]}
    assert accuracy_floor(runs) == 97.5  # epochs 1-2 ignored; 98.3 rounded down to 98.0, half a point below
