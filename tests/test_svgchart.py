"""The live charts' SVG: what it draws is what the Plotly chart of the same run draws."""

from __future__ import annotations

import math
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "dashboard"))

import live  # noqa: E402
import svgchart  # noqa: E402

from core.config import TrainConfig  # noqa: E402

NS = {"s": "http://www.w3.org/2000/svg"}
SVG = "{http://www.w3.org/2000/svg}"  # ElementTree's spelling of a tag in that namespace


def view(active: bool = True, n_steps: int = 50, n_epochs: int = 2) -> SimpleNamespace:
    steps = tuple(dict(epoch=i / 20, step=i, train_acc=10 + i, train_loss=2.0 / i, lr=0.001 * i) for i in range(1, n_steps + 1))
    epochs = [dict(epoch=e, test_acc=97.0 + e, test_loss=0.1 / e, train_loss=0.2 / e) for e in range(1, n_epochs + 1)]
    return SimpleNamespace(steps=steps, epochs=epochs, run=SimpleNamespace(active=active, config=TrainConfig(epochs=15)))


def test_nice_ticks_are_round_and_cover_the_range():
    assert svgchart.nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert svgchart.nice_ticks(97.2, 99.6) == [97.5, 98.0, 98.5, 99.0, 99.5]
    empty = svgchart.nice_ticks(5, 5)  # an empty range still gets an axis
    assert empty[0] == 5 and empty[-1] == 6 and len(empty) > 2


def test_the_live_svg_draws_the_series_the_plotly_chart_draws():
    v = view()
    ghost = ("Model3 (reference)", [dict(epoch=e, train_acc=95.0 + e / 10, test_acc=96.0 + e / 10) for e in range(1, 16)])
    fig = live._chart("Accuracy", "%", v, "train_acc", "test_acc", ghost)
    svg = live._svg("Accuracy", "%", v, "train_acc", "test_acc", ghost)
    root = ET.fromstring(svg)  # well-formed XML
    lines = {line.find("s:title", NS).text: line.get("points").split() for line in root.iter(SVG + "polyline")}
    assert {t.name for t in fig.data} == set(lines)
    for trace in fig.data:
        assert len(lines[trace.name]) == len(trace.x)
    circles = [c.find("s:title", NS).text for c in root.iter(SVG + "circle")]
    assert circles == ["epoch 1: test acc 98", "epoch 2: test acc 99"]  # hover texts of the test points


def test_points_map_onto_the_axes_and_bad_values_are_skipped():
    s = svgchart.Series("x", (0.0, 1.0, 2.0, 3.0), (0.0, float("nan"), 10.0, None), "#000")
    svg = svgchart.line_chart("T", "y", [s], (0, 2), 1, y_range=(0.0, 10.0))
    points = [tuple(map(float, p.split(","))) for p in re.search(r'points="([^"]*)"', svg).group(1).split()]
    assert len(points) == 2  # NaN and None dropped
    (xa, ya), (xb, yb) = points
    assert xa == svgchart.LEFT and xb == svgchart.W - svgchart.RIGHT  # x 0 and 2 at the plot's edges
    assert ya == svgchart.H - svgchart.BOTTOM and yb == svgchart.TOP  # y 0 at the bottom, 10 at the top


def test_a_log_axis_labels_decades_and_drops_values_it_cannot_draw():
    s = svgchart.Series("lr", (0.0, 1.0, 2.0), (1e-3, 0.0, 1e-1), "#000")
    svg = svgchart.line_chart("Learning rate", "lr", [s], (0, 2), 1, y_range=(math.log10(5e-4), math.log10(0.2)), log_y=True)
    ET.fromstring(svg)
    assert ">10⁻³<" in svg and ">10⁻²<" in svg and ">10⁻¹<" in svg
    assert len(re.search(r'points="([^"]*)"', svg).group(1).split()) == 2  # the 0 has no place on a log axis


def test_names_are_escaped():
    s = svgchart.Series('<b>"x" & y</b>', (0.0, 1.0), (1.0, 2.0), "#000", markers=True, hover=("<i>", "&"))
    root = ET.fromstring(svgchart.line_chart("a < b", "y", [s], (0, 1), 1))
    assert root.get("data-chart") == "a < b"
    assert [c.find("s:title", NS).text for c in root.iter(SVG + "circle")] == ["<i>", "&"]


def test_a_flat_line_gets_a_readable_axis():
    for value in (99.0, 0.0, 2.5e-3):
        svg = svgchart.line_chart("T", "y", [svgchart.Series("x", (0.0, 1.0), (value, value), "#000")], (0, 1), 1)
        labels = re.findall(r'text-anchor="end" fill="#555">([^<]*)</text>', svg)
        assert 2 <= len(labels) <= 8 and all(len(label) <= 6 for label in labels), labels
