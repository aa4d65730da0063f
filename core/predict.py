"""Reading a digit from any picture the way MNIST was made, and asking a model what it is.

MNIST's recipe (LeCun et al.): crop to the ink, scale the longer side to 20 px keeping the aspect
ratio, then place it in a 28x28 field so that its centre of mass sits at the centre.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.data import MEAN, STD

BOX = 20  # the digit's longer side, in output pixels
FIELD = 28  # output side
MIN_CONTRAST = 25.0  # ink must differ from the background by this many grey levels (of 255)
INK_THRESHOLD = 0.1  # a pixel counts for the bounding box above this fraction of the strongest ink


class EmptyImageError(ValueError):
    """The image holds no visible ink: nothing to classify."""


def _check(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (0..255), got dtype {image.dtype}")
    ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))
    if not ok:
        raise ValueError(f"expected an HxW grey, HxWx3 RGB or HxWx4 RGBA image, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty (shape {image.shape})")


def _grey(image: np.ndarray) -> np.ndarray:
    """Any accepted image -> float grey (H, W) in 0..255, transparency composited away."""
    if image.ndim == 2:
        return image.astype(np.float32)
    rgb = image[..., :3].astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if image.shape[2] == 3:
        return grey
    alpha = image[..., 3].astype(np.float32) / 255.0
    if alpha.min() >= 1.0:
        return grey
    # Strokes on a transparent background (a canvas without a background colour): put them on the
    # backdrop they contrast with, so white strokes and black strokes both come out as ink.
    weight = alpha.sum()
    bright_ink = weight > 0 and float((grey * alpha).sum() / weight) > 127.5
    backdrop = 0.0 if bright_ink else 255.0
    return grey * alpha + backdrop * (1.0 - alpha)


def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def ink_map(image: np.ndarray) -> np.ndarray:
    """Float (H, W) in 0..1: how much ink each pixel holds, whatever the polarity of the picture.

    The background is the median of the outer frame: a light frame means dark ink on light paper.
    """
    _check(image)
    grey = _grey(image)
    if np.median(_border(grey)) > 127.5:
        grey = 255.0 - grey
    background = float(np.median(_border(grey)))
    ink = np.clip(grey - background, 0.0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise EmptyImageError("the image is blank: draw or upload a digit first")
    return ink / peak


def centre_in_field(ink: np.ndarray) -> np.ndarray:
    """Ink map (H, W) in 0..1 -> (28, 28) float in 0..1, MNIST-style crop, scale and centre of mass."""
    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]
    # antialias only matters when shrinking; it averages a big stroke instead of sampling it
    small = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0, 0]
    small = small.clamp(0, 1).numpy()
    total = small.sum()
    ys, xs = np.indices(small.shape)
    cy, cx = (ys * small).sum() / total, (xs * small).sum() / total
    # put the centre of mass on the field's centre, but never push ink off the field
    top = int(np.clip(round(FIELD / 2 - 0.5 - cy), 0, FIELD - small.shape[0]))
    left = int(np.clip(round(FIELD / 2 - 0.5 - cx), 0, FIELD - small.shape[1]))
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    field[top : top + small.shape[0], left : left + small.shape[1]] = small
    return field


def preprocess(image: np.ndarray) -> torch.Tensor:
    """Any uint8 picture of one digit (HxW, HxWx3, HxWx4; either polarity) -> normalised (1, 1, 28, 28).

    Raises EmptyImageError for a blank picture, ValueError for a wrong dtype or shape.
    """
    field = centre_in_field(ink_map(image))
    return ((torch.from_numpy(field) - MEAN) / STD)[None, None]


def as_picture(x: torch.Tensor) -> np.ndarray:
    """A normalised (1, 1, 28, 28) input back to the uint8 28x28 picture the model sees."""
    return (x[0, 0] * STD + MEAN).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Softmax over the ten digits for a batch (N, 1, 28, 28) -> (N, 10), model left as it was."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        return F.softmax(model(x.to(device)), dim=1).cpu().numpy()
    finally:
        model.train(was_training)


def predict(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """The ten digit probabilities (shape (10,), summing to 1) for a picture of one digit."""
    return probabilities(model, preprocess(image))[0]


@torch.no_grad()
def feature_maps(model: nn.Module, x: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """(block name, activations (C, H, W)) after the ReLU of every conv block, in forward order, for one input."""
    names = {m: n for n, m in model.named_modules()}
    found: list[tuple[str, np.ndarray]] = []

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        parent = names[module].rpartition(".")[0]  # "net.convblock1.1" -> "net.convblock1"
        found.append((parent.removeprefix("net."), output[0].detach().cpu().numpy().copy()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        probabilities(model, x[:1])
    finally:
        for h in handles:
            h.remove()
    return found
