"""Digits drawn the way people draw on the Draw page, read by the shipped Model3, Tiny4k, Sep4k and Sep3k through core.predict.

Sixteen hand-made digit shapes (polylines, some in several strokes: a 5 with its bar apart, a 4 in two
strokes, 7s with whole and split crossbars) drawn with round brushes from hairline to fat, small and
large, with and without a stray click elsewhere on the canvas.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.inference import probabilities
from core.predict import preprocess
from core.reference import load_reference_model, reference_names
from tests.conftest import dot

CANVAS = 280
# strokes of each digit as polylines in a unit box (x right, y down); the key's first character is the digit
DIGITS = {
    "0": [[(0.5, 0), (0.85, 0.2), (0.9, 0.5), (0.8, 0.85), (0.5, 1), (0.2, 0.85), (0.1, 0.5), (0.15, 0.2), (0.5, 0)]],
    "1": [[(0.5, 0), (0.5, 1)]],
    "1 with a flag": [[(0.3, 0.2), (0.55, 0), (0.55, 1)]],
    "2": [[(0.15, 0.25), (0.4, 0), (0.75, 0.05), (0.85, 0.3), (0.6, 0.6), (0.1, 1), (0.9, 1)]],
    "3": [[(0.15, 0.1), (0.5, 0), (0.85, 0.2), (0.5, 0.48), (0.85, 0.75), (0.5, 1), (0.15, 0.9)]],
    "4 closed": [[(0.6, 0), (0.1, 0.65), (0.9, 0.65)], [(0.65, 0.3), (0.65, 1)]],
    "4 open": [[(0.2, 0), (0.15, 0.55), (0.85, 0.55)], [(0.75, 0), (0.75, 1)]],
    "4 in two strokes apart": [[(0.2, 0), (0.15, 0.55), (0.55, 0.55)], [(0.8, 0.05), (0.8, 1)]],
    "5": [[(0.85, 0), (0.2, 0), (0.15, 0.45), (0.6, 0.4), (0.85, 0.65), (0.6, 1), (0.15, 0.9)]],
    "5 with its bar apart": [[(0.4, 0), (0.9, 0)], [(0.22, 0.08), (0.15, 0.45), (0.6, 0.4), (0.85, 0.65), (0.6, 1), (0.15, 0.9)]],
    "6": [[(0.75, 0), (0.35, 0.3), (0.15, 0.7), (0.4, 1), (0.8, 0.8), (0.7, 0.55), (0.2, 0.65)]],
    "7": [[(0.1, 0), (0.9, 0), (0.4, 1)]],
    "7 crossed": [[(0.1, 0), (0.9, 0), (0.4, 1)], [(0.35, 0.5), (0.8, 0.5)]],
    "7 crossed in two pieces": [[(0.1, 0), (0.9, 0), (0.4, 1)], [(0.2, 0.5), (0.45, 0.5)], [(0.7, 0.5), (0.95, 0.5)]],
    "8": [[(0.5, 0.5), (0.2, 0.25), (0.5, 0), (0.8, 0.25), (0.5, 0.5), (0.15, 0.75), (0.5, 1), (0.85, 0.75), (0.5, 0.5)]],
    "9": [[(0.8, 0.3), (0.5, 0), (0.2, 0.2), (0.3, 0.45), (0.8, 0.3), (0.75, 1)]],
}


def draw(strokes, size: int, top: int, left: int, brush: int) -> np.ndarray:
    """White strokes of a round brush on a black canvas, the digit `size` px tall (0.7 of that wide)."""
    yy, xx = np.mgrid[:CANVAS, :CANVAS].astype(np.float32)
    near = np.full((CANVAS, CANVAS), np.inf, dtype=np.float32)
    for stroke in strokes:
        pts = np.array([(left + x * size * 0.7, top + y * size) for x, y in stroke], dtype=np.float32)
        for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:], strict=True):
            dx, dy = bx - ax, by - ay
            t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
            near = np.minimum(near, np.hypot(xx - ax - t * dx, yy - ay - t * dy))
    return np.where(near <= brush / 2, 255, 0).astype(np.uint8)


@pytest.fixture(scope="module", params=["Model3", "Tiny4k", "Sep4k", "Sep3k"])
def model(request):
    if request.param not in reference_names():
        pytest.skip(f"the shipped {request.param} reference is missing")
    model = load_reference_model(request.param)
    model.variant = request.param
    return model


# What a shipped model is known to read wrong, kept exact so that any change (better or worse) is seen: the
# 3,942-parameter Sep3k misreads two thick (30 px brush) small digits; the others read all of them.
KNOWN_MISREADS = {("Sep3k", "small", 30): {"1 with a flag": 8, "4 open": 9}}


def read(model, pictures: list[np.ndarray]) -> list[int]:
    return probabilities(model, torch.cat([preprocess(p) for p in pictures])).argmax(1).tolist()


# (size, top, left): a large digit filling the canvas, a middling one, a small one in a corner
PLACES = {"large": (250, 15, 50), "middling": (150, 60, 80), "small": (90, 30, 30)}


# every brush on every size, but the 40 px brush on the 90 px digit (a blob)
BRUSHES = [(place, brush) for place in PLACES for brush in (3, 6, 10, 18, 30, 40) if (place, brush) != ("small", 40)]


@pytest.mark.parametrize("place, brush", BRUSHES)
def test_every_digit_is_read_whatever_the_brush_and_size(model, place, brush):
    pictures = [draw(s, *PLACES[place], brush) for s in DIGITS.values()]
    got = dict(zip(DIGITS, read(model, pictures), strict=True))
    wrong = {k: v for k, v in got.items() if v != int(k[0])}
    assert wrong == KNOWN_MISREADS.get((model.variant, place, brush), {}), f"read wrong ({place}, brush {brush}): {wrong}"


@pytest.mark.parametrize("where", [(265, 265), (265, 15), (15, 265)])
@pytest.mark.parametrize("place", ["middling", "small"])
def test_a_stray_click_does_not_change_what_is_read(model, where, place):
    pictures = [dot(draw(s, *PLACES[place], 18), *where) for s in DIGITS.values()]
    got = dict(zip(DIGITS, read(model, pictures), strict=True))
    wrong = {k: v for k, v in got.items() if v != int(k[0])}
    assert not wrong, f"read wrong with a click at {where} ({place}): {wrong}"
