"""core.explain: saliency that passes the deletion test, and receptive boxes that match what each unit really sees."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from core.architecture import receptive_field_table
from core.data import BACKGROUND, FILES, normalise, raw_dir, read_idx
from core.explain import (
    _layer_module,
    deletion_curve,
    gradient_magnitude,
    ink_pixels,
    ink_ranking,
    receptive_box,
    saliency,
)
from core.predict import preprocess
from core.reference import load_reference_model

STRONG = 50.0  # a pixel set to +-50 (normalised; ink is ~2.8): max-pooling passes only the largest value, so a nudge may not show


@pytest.fixture(scope="module")
def model3() -> nn.Module:
    return load_reference_model("Model3")


@pytest.fixture(scope="module")
def seven() -> torch.Tensor:
    """A drawn 7 as core.predict reads it: (1, 1, 28, 28)."""
    picture = np.zeros((100, 100), dtype=np.uint8)
    picture[15:25, 20:80] = 255  # the bar
    for r in range(25, 90):
        c = 80 - (r - 25) * 35 // 65
        picture[r, c - 5 : c + 5] = 255  # the stem, down and to the left
    return preprocess(picture)


def test_saliency_is_a_finite_deterministic_28x28_map_that_leaves_the_model_alone(model3, seven):
    before = {k: v.clone() for k, v in model3.state_dict().items()}
    first = saliency(model3, seven)
    assert first.shape == (28, 28) and first.dtype == np.float32
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, saliency(model3, seven))
    assert not model3.training
    assert all(p.grad is None for p in model3.parameters())
    assert all(torch.equal(v, model3.state_dict()[k]) for k, v in before.items())


def test_saliency_scores_only_ink_and_adds_up_to_the_logit_gain(model3, seven):
    scores = saliency(model3, seven)
    blank = np.ones(784, dtype=bool)
    blank[ink_pixels(seven)] = False
    assert (scores.reshape(-1)[blank] == 0).all()
    with torch.no_grad():
        logits = model3(seven)[0]
        gain = float(logits[7] - model3(torch.full_like(seven, BACKGROUND))[0, 7])
    assert int(logits.argmax()) == 7
    # integrated gradients' completeness: the scores add up to logit(x) - logit(blank), up to the path's discretisation
    assert abs(float(scores.sum()) - gain) < 0.05 * abs(gain)


def test_saliency_for_another_digit_differs(model3, seven):
    assert not np.allclose(saliency(model3, seven), saliency(model3, seven, target=1))


def test_deletion_curve_starts_at_the_prediction_and_ends_on_a_blank_picture(model3, seven):
    ink = ink_pixels(seven)
    curve = deletion_curve(model3, seven, ink, steps=4)
    probs = torch.softmax(model3(seven), 1)[0].detach()
    blank = torch.softmax(model3(torch.full_like(seven, BACKGROUND)), 1)[0].detach()
    assert curve.shape == (5,)
    assert curve[0] == pytest.approx(float(probs[7]), abs=1e-6)
    assert curve[-1] == pytest.approx(float(blank[7]), abs=1e-6)


def test_ink_ranking_lists_ink_only_highest_first(seven):
    scores = np.arange(784, dtype=np.float32)
    ranking = ink_ranking(scores, seven)
    assert set(ranking) == set(ink_pixels(seven))
    assert (np.diff(ranking) < 0).all()


# ---- deletion test on real digits -------------------------------------------------------------------------------
def _deletion_areas(
    model: nn.Module, x: torch.Tensor, rng: np.random.Generator, steps: int = 20
) -> dict[str, np.ndarray]:
    """Deletion curves (probability of the predicted digit as ink is erased, 0..100% in `steps`) per ranking."""
    return {
        "saliency": deletion_curve(model, x, ink_ranking(saliency(model, x), x), steps),
        "gradient": deletion_curve(model, x, ink_ranking(gradient_magnitude(model, x), x), steps),
        "random": deletion_curve(model, x, rng.permutation(ink_pixels(x)), steps),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name, digits", [("Model3", 200), ("Model1", 200)])
def test_erasing_the_most_salient_ink_hurts_more_than_random_ink_or_plain_gradients(mnist_root, name, digits):
    model = load_reference_model(name)
    images = normalise(read_idx(raw_dir(mnist_root) / FILES["test", "images"], "images")[:digits])
    rng = np.random.default_rng(0)
    curves: dict[str, list[np.ndarray]] = {"saliency": [], "gradient": [], "random": []}
    t0 = time.perf_counter()
    for x in images:
        for method, curve in _deletion_areas(model, x[None], rng).items():
            curves[method].append(curve)
    mean = {m: np.mean(c, 0) for m, c in curves.items()}
    drop = {m: np.mean([c[0] - c for c in cs], 0) for m, cs in curves.items()}  # mean probability drop per step
    area = {m: float(c.mean()) for m, c in mean.items()}  # area under the deletion curve (lower = more faithful)
    for m in curves:  # steps of 5%: index 1, 2, 4 = 5, 10, 20% of the ink erased
        print(
            f"{name} {m:9} drop at 5/10/20% of ink: {drop[m][1]:.3f} {drop[m][2]:.3f} {drop[m][4]:.3f}  area {area[m]:.3f}"
        )
    print(f"{name}: {digits} digits in {time.perf_counter() - t0:.1f} s")
    assert drop["saliency"][2] > 3 * drop["random"][2] + 0.05
    assert drop["saliency"][2] > 1.5 * drop["gradient"][2]
    assert area["saliency"] < area["random"] - 0.15
    assert area["saliency"] < area["gradient"] - 0.1


# ---- receptive boxes against what each unit really sees ----------------------------------------------------------
def _moved_units(model: nn.Module, layers: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per layer, bool (784, H, W): whether unit (h, w)'s pre-activation (any channel) moves when input pixel p is
    set to +STRONG or to -STRONG, all 1568 changed inputs in one batch."""
    n = 784
    batch = x.repeat(2 * n + 1, 1, 1, 1).view(2 * n + 1, n)
    batch[1 + torch.arange(n), torch.arange(n)] = STRONG
    batch[1 + n + torch.arange(n), torch.arange(n)] = -STRONG
    moved: dict[str, torch.Tensor] = {}

    def recorder(layer: str):
        def hook(_module, _inputs, out: torch.Tensor) -> None:  # the conv's output, before the in-place ReLU
            change = (out[1:] - out[:1]).abs().amax(1)  # (2n, H, W)
            tolerance = 1e-4 * (1 + out[:1].abs().amax(1))
            moved[layer] = (change[:n] > tolerance) | (change[n:] > tolerance)

        return hook

    handles = [_layer_module(model, layer).register_forward_hook(recorder(layer)) for layer in layers]
    try:
        with torch.no_grad():
            model(batch.view(-1, 1, 28, 28))
    finally:
        for h in handles:
            h.remove()
    return moved


@pytest.mark.parametrize("name", ["Model3", "Model1", "Sep4k"])
def test_every_conv_layer_receptive_box_is_the_box_of_pixels_that_move_the_unit(name):
    model = load_reference_model(name)
    layers = [r.name for r in receptive_field_table(model) if r.kind == "conv"]
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    moved = _moved_units(model, layers, x)
    assert set(moved) == set(layers)
    for layer in layers:
        _, h, w = moved[layer].shape
        units = {
            (i, j) for i in (0, 1, h // 2, h - 1) for j in (0, 1, w // 2, w - 1) if i < h and j < w
        }  # borders, centre
        for i, j in sorted(units):
            pixels = moved[layer][:, i, j].view(28, 28).nonzero()
            seen = (int(pixels[:, 0].min()), int(pixels[:, 1].min()), int(pixels[:, 0].max()), int(pixels[:, 1].max()))
            # no padding in these nets: the box is exact, every edge is touched
            assert seen == receptive_box(model, layer, i, j), (layer, i, j)


def test_receptive_box_of_known_units(model3):
    assert receptive_box(model3, "convblock1", 0, 0) == (0, 0, 2, 2)
    assert receptive_box(model3, "convblock4", 9, 0) == (18, 0, 27, 9)  # rf 10, jump 2
    assert receptive_box(model3, "convblock7", 3, 3) == (6, 6, 27, 27)
    assert receptive_box(model3, "head", 0, 0) == (0, 0, 27, 27)
    with pytest.raises(ValueError, match="convblock4"):
        receptive_box(model3, "conv4", 0, 0)
    with pytest.raises(ValueError, match="10x10"):
        receptive_box(model3, "convblock4", 10, 0)


def test_receptive_box_counts_padding_and_clips_to_the_input():
    padded = nn.Sequential()
    padded.add_module("convblock1", nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()))
    padded.add_module("pool1", nn.MaxPool2d(2, 2))
    padded.add_module("convblock2", nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()))
    # start: -1 after conv1, -1 after the pool, -1 - 1*2 = -3 after conv2 (rf 3 -> 4 -> 8, jump 2)
    assert receptive_box(padded, "convblock2", 0, 0) == (0, 0, 4, 4)
    assert receptive_box(padded, "convblock2", 13, 13) == (23, 23, 27, 27)
    assert receptive_box(padded, "convblock2", 5, 6) == (7, 9, 14, 16)
