"""Inspect's Explain views: the confusion cell behind a click, filtered mistakes, conv layers named for
receptive_box, learned kernels; and, through the router, picking a unit outlines its receptive field and
choosing a cell shows its digits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.architecture import receptive_field_table
from core.data import FILES
from core.evaluation import Evaluation, clicked_cell, first_kernels, kernel_grid, layer_feature_maps
from core.explain import receptive_box
from core.models import MODELS, build_model

HOME = str(Path(__file__).resolve().parent.parent / "dashboard" / "Home.py")


def toy_evaluation() -> Evaluation:
    labels = torch.tensor([4, 4, 4, 9, 4, 7, 1])
    predicted = torch.tensor([9, 4, 9, 9, 9, 1, 7])
    confidence = torch.tensor([0.6, 0.99, 0.9, 0.8, 0.6, 0.7, 0.95])
    confusion = torch.bincount(labels * 10 + predicted, minlength=100).reshape(10, 10)
    return Evaluation(confusion, predicted, confidence, labels)


def test_a_confusion_cell_lists_its_digits_most_confident_first():
    ev = toy_evaluation()
    assert ev.cell(4, 9).tolist() == [2, 0, 4]  # 0.9, then the 0.6 tie in index order
    assert ev.cell(4, 9, limit=2).tolist() == [2, 0]
    assert ev.cell(4, 4).tolist() == [1]
    assert ev.cell(3, 8).tolist() == []
    for t in range(10):
        for p in range(10):
            assert len(ev.cell(t, p)) == ev.confusion[t, p]


def test_the_most_confused_cell_is_the_largest_off_diagonal_one():
    assert toy_evaluation().most_confused() == (4, 9)
    right = torch.arange(10)
    perfect = Evaluation(torch.diag(torch.ones(10, dtype=torch.long)), right, torch.ones(10), right)
    assert perfect.most_confused() is None


def test_mistakes_filter_by_true_and_predicted_digit():
    ev = toy_evaluation()
    assert ev.mistakes().tolist() == [6, 2, 5, 0, 4]
    assert ev.mistakes(true=4).tolist() == [2, 0, 4]
    assert ev.mistakes(predicted=7).tolist() == [6]
    assert ev.mistakes(true=7, predicted=1).tolist() == [5]
    assert ev.mistakes(true=9).tolist() == []  # the 9 was read right
    assert ev.mistakes(limit=2, true=4).tolist() == [2, 0]


@pytest.mark.parametrize("name", list(MODELS))
def test_feature_maps_are_named_as_receptive_box_takes_them(name):
    model = build_model(name)
    layers = layer_feature_maps(model, torch.zeros(1, 1, 28, 28))
    rows = {r.name: r for r in receptive_field_table(model)}
    assert layers and all(n in rows and rows[n].kind == "conv" for n, _ in layers)
    for n, maps in layers:
        assert maps.shape == rows[n].out_shape
        c, h, w = maps.shape
        top, left, bottom, right = receptive_box(model, n, h - 1, w - 1)
        assert bottom == right == 27 and 0 <= top <= bottom and 0 <= left <= right


def test_model1_layers_carry_their_net_prefix():
    names = [n for n, _ in layer_feature_maps(build_model("Model1"), torch.zeros(1, 1, 28, 28))]
    assert names[0] == "net.convblock1" and names[-1] == "net.convblock7"


def test_first_kernels_are_the_first_two_3x3_convs_weights():
    model = build_model("Model3")
    (n1, w1), (n2, w2) = first_kernels(model)
    assert (n1, n2) == ("convblock1", "convblock2")
    assert w1.shape == (8, 1, 3, 3) and w2.shape == (12, 8, 3, 3)
    np.testing.assert_array_equal(w1, model.convblock1[0].weight.detach().numpy())
    assert [n for n, _ in first_kernels(build_model("Model1"), count=1)] == ["net.convblock1"]


def test_kernel_grid_puts_output_channels_in_columns_with_blank_lines_between():
    w = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)
    grid = kernel_grid(w)
    assert grid.shape == (3 * 4 - 1, 2 * 4 - 1)
    np.testing.assert_array_equal(grid[4:7, 4:7], w[1, 1])
    np.testing.assert_array_equal(grid[0:3, 0:3], w[0, 0])
    assert np.isnan(grid[3]).all() and np.isnan(grid[:, 3]).all()
    assert np.isfinite(grid).sum() == w.size


def test_a_click_on_a_heatmap_is_its_row_and_column():
    assert clicked_cell([{"x": 3, "y": 5, "curve_number": 1}]) == (5, 3)
    assert clicked_cell([{"x": 2.0, "y": 0.0}]) == (0, 2)
    assert clicked_cell([]) is None


# Through the router, against the shipped Model3 reference and the real MNIST test set.

def mnist_present() -> bool:
    root = Path(os.environ.get("MNIST_ROOT", "data")) / "MNIST" / "raw"
    return all((root / f).is_file() for f in FILES.values())


@pytest.fixture
def inspect_page(tmp_path, monkeypatch) -> AppTest:
    if not mnist_present():
        pytest.skip("MNIST files not found: set MNIST_ROOT")
    monkeypatch.setenv("MNIST_LAB_DB", f"sqlite:///{tmp_path / 'runs.db'}")
    at = AppTest.from_file(HOME, default_timeout=120).run()
    at.switch_page("views/Inspect.py").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="inspect-model").value.label == "Model3 (reference)"
    return at


def chart_layouts(at: AppTest) -> dict[str, dict]:
    layouts = {}
    for chart in at.get("plotly_chart"):
        layout = json.loads(chart.proto.spec)["layout"]
        layouts[layout.get("title", {}).get("text", "")] = layout
    return layouts


def test_picking_a_unit_outlines_its_receptive_field_on_the_input(inspect_page):
    at = inspect_page
    at.selectbox(key="unit-layer").set_value("convblock4").run()
    at.slider(key="unit-i-convblock4").set_value(2)
    at.slider(key="unit-j-convblock4").set_value(7)
    at.slider(key="unit-channel-convblock4").set_value(3).run()
    assert not at.exception, at.exception
    model = build_model("Model3")
    top, left, bottom, right = receptive_box(model, "convblock4", 2, 7)
    activation = next(m for m in at.metric if m.label == "Activation")
    outline = chart_layouts(at)[f"Receptive field of unit (2, 7): activation {activation.value}"]["shapes"][0]
    assert (outline["y0"], outline["x0"], outline["y1"], outline["x1"]) == (
        top - 0.5, left - 0.5, bottom + 0.5, right + 0.5)
    assert (bottom - top + 1, right - left + 1) == (10, 10)  # convblock4 sees 10x10 pixels, none clipped here
    assert "convblock4, channel 3 (10x10)" in chart_layouts(at)
    from core.data import load_mnist
    from core.reference import load_reference_model

    maps = dict(layer_feature_maps(load_reference_model("Model3"), load_mnist().test_x[0:1]))["convblock4"]
    assert float(activation.value) == pytest.approx(maps[3, 2, 7], abs=5e-4)  # test digit 0, the default input
    assert f"rows {top}–{bottom}, columns {left}–{right}" in activation.delta


def test_choosing_a_confusion_cell_shows_its_digits(inspect_page):
    from core.data import load_mnist
    from core.evaluation import evaluate_classes
    from core.reference import load_reference_model

    at = inspect_page
    at.selectbox(key="cm-true").set_value(4)
    at.selectbox(key="cm-predicted").set_value(9).run()
    assert not at.exception, at.exception
    data = load_mnist()
    ev = evaluate_classes(load_reference_model("Model3"), data.test_x, data.test_y)
    expected = ev.cell(4, 9, limit=24).tolist()
    assert expected, "the reference model reads some 4 as a 9"
    shown = [c for im in at.image for c in im.captions if c.startswith("#") and ":" in c and "true" not in c]
    assert [int(c[1 : c.index(":")]) for c in shown] == expected
    assert any(f"**{int(ev.confusion[4, 9])}** test digits are 4s read as 9" in m.value for m in at.markdown)


def test_the_mistakes_gallery_filters_and_shows_test_indices(inspect_page):
    at = inspect_page
    at.selectbox(key="mistakes-true").set_value(7).run()
    captions = [c for im in at.image for c in im.captions if "true" in c and "→" in c]
    assert captions and all(c.startswith("#") and ": true 7 →" in c for c in captions)


def test_inspect_shows_the_models_reading_of_its_input(inspect_page):
    at = inspect_page
    at.number_input(key="fm-index").set_value(0).run()  # test digit 0 is a 7
    prediction = next(m for m in at.metric if m.label == "Prediction")
    assert prediction.value == "7"
    assert "Probability of each digit" in chart_layouts(at)
