"""Reading a digit from any picture the way MNIST was made, and asking a model what it is.

MNIST's recipe (LeCun et al.): crop to the ink, scale the longer side to 20 px keeping the aspect
ratio, then place it in a 28x28 field so that its centre of mass sits at the centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.data import MEAN, STD

BOX = 20  # the digit's longer side, in output pixels
FIELD = 28  # output side
MIN_CONTRAST = 25.0  # ink must differ from the background by this many grey levels (of 255)
INK_THRESHOLD = 0.1  # a pixel counts for the bounding box above this fraction of the strongest ink
# A separate mark is a stray mark (a slip of the mouse, a speck on the paper), not a stroke, when its
# distance from the digit's box, as a fraction of the digit's longer side, exceeds STRAY_GAP_PER_INK
# times its ink as a share of the digit's: the lighter the mark, the nearer it may be. A 5's detached bar
# (~15% of the ink) stays up to 0.3 of the digit's size away, a click as heavy as half a thin digit up to
# its whole size; a speck of 1% goes beyond 0.02.
STRAY_GAP_PER_INK = 2.0
MARK_GRID = 112  # stray marks are found on a grid of at most this many cells a side
# Stroke width as a fraction of the digit's longer side. MNIST's digits: 5th percentile 0.14, median
# 0.18; a digit drawn with a fine pen (a 6 px brush across a 250 px canvas: 0.025) is thickened to
# STROKE_TARGET when under STROKE_MIN, since the nets never saw hairlines.
STROKE_MIN = 0.10
STROKE_TARGET = 0.15
THICKEN_SIDE = 512  # larger pictures are max-pooled to at most this side before thickening


class EmptyImageError(ValueError):
    """The image holds no visible ink: nothing to classify."""


def as_uint8_image(image) -> np.ndarray:
    """Any picture-like array -> uint8 (H, W), (H, W, 3) or (H, W, 4); a clear ValueError otherwise.

    Accepts uint8 as is; bool (True = 255); other integer types by their range (uint16 -> /257);
    floats in 0..1 or 0..255; (H, W, 1) grey and (H, W, 2) grey + alpha; a PIL image or anything
    `np.asarray` understands.
    """
    if not isinstance(image, np.ndarray):
        if hasattr(image, "getbands"):  # a PIL image
            image = np.asarray(image)
        else:
            raise ValueError(f"expected a picture as a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[2] == 2:  # grey + alpha
        image = np.concatenate([np.repeat(image[..., :1], 3, axis=2), image[..., 1:]], axis=2)
    ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))
    if not ok:
        raise ValueError(f"expected an HxW grey, HxWx3 RGB or HxWx4 RGBA picture, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"the picture is empty (shape {image.shape})")
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        if image.min() < 0:
            raise ValueError(f"a {image.dtype} picture with negative values cannot be read as grey levels")
        top = 255 if image.max() <= 255 else info.max  # small values in a wide type are 0..255 levels
        return np.round(image.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("the picture holds NaN or infinite values")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"float pixel values must lie in 0..1 or 0..255, got {lo:g}..{hi:g}")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.round(image * scale).astype(np.uint8)
    raise ValueError(f"expected pixel values as numbers, got dtype {image.dtype}")


def decode_picture(data: bytes, max_side: int = 4096) -> np.ndarray:
    """An uploaded file's bytes (PNG, JPEG, WebP, BMP, GIF, ...) -> uint8 grey or RGBA array.

    Phone photos are turned upright by their EXIF orientation; palette pictures keep their
    transparency; 16-bit greys keep their range. Raises ValueError with a message for the user.
    """
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        if max(img.size) > max_side:
            raise ValueError(f"the picture is {img.size[0]}x{img.size[1]} px; use one under {max_side} px a side")
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I"):  # 16-bit grey ("I;16*", or "I" from older Pillow): read as uint16
            return as_uint8_image(np.clip(np.asarray(img), 0, 65535).astype(np.uint16))
        if img.mode == "F":
            return as_uint8_image(np.asarray(img))
        transparent = "A" in img.getbands() or img.info.get("transparency") is not None
        return np.asarray(img.convert("RGBA" if transparent else "L"))
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ValueError("not a readable picture (PNG, JPEG, WebP, BMP or GIF)") from None
    except OSError as e:  # truncated or corrupt file
        raise ValueError(f"the picture could not be decoded ({e})") from None


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
    grey = _grey(as_uint8_image(image))
    if np.median(_border(grey)) > 127.5:
        grey = 255.0 - grey
    background = float(np.median(_border(grey)))
    ink = np.clip(grey - background, 0.0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise EmptyImageError("the image is blank: draw or upload a digit first")
    return ink / peak


def _components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of a boolean (H, W) mask: 0 off the mask, else the largest flat index
    + 1 of the component (label propagation by 3x3 max-pooling until nothing changes)."""
    labels = torch.where(mask, torch.arange(1, mask.numel() + 1, dtype=torch.float64).view(mask.shape), 0.0)
    while True:
        grown = torch.where(mask, F.max_pool2d(labels[None, None], 3, 1, 1)[0, 0], 0.0)
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def drop_stray_marks(ink: np.ndarray) -> np.ndarray:
    """Ink map -> the same with stray marks erased: separate marks away from the digit, the lighter the
    nearer (see STRAY_GAP_PER_INK). The digit is the mark holding the most ink; the parts of a digit drawn
    in several strokes (a 5's detached bar, a 4 in two strokes) are near it or inside its box and stay.

    Found on a grid of at most MARK_GRID cells a side (each cell: the ink of a block of pixels), so marks
    a block apart count as one, and any picture size costs about the same.
    """
    h, w = ink.shape
    f = -(-max(h, w) // MARK_GRID)  # block side
    t = torch.from_numpy(np.ascontiguousarray(ink, dtype=np.float32))
    cells = F.avg_pool2d(t[None, None], f, f, ceil_mode=True)[0, 0] * (f * f)  # ink per block (padding adds 0)
    marked = F.max_pool2d(t[None, None], f, f, ceil_mode=True)[0, 0] > INK_THRESHOLD
    labels = _components(marked)
    ids, inverse = torch.unique(labels, return_inverse=True)
    if len(ids) <= 2:  # background and one mark
        return ink
    cell_id = inverse.flatten()
    mass = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, cell_id, cells.flatten().double())
    mass[0] = -1.0  # background
    ys, xs = (v.flatten() for v in torch.meshgrid(torch.arange(labels.shape[0]), torch.arange(labels.shape[1]), indexing="ij"))
    big = labels.numel()
    top = torch.full((len(ids),), big).scatter_reduce(0, cell_id, ys, "amin")
    bottom = torch.full((len(ids),), -1).scatter_reduce(0, cell_id, ys, "amax")
    left = torch.full((len(ids),), big).scatter_reduce(0, cell_id, xs, "amin")
    right = torch.full((len(ids),), -1).scatter_reduce(0, cell_id, xs, "amax")
    main = int(mass.argmax())
    size = max(bottom[main] - top[main], right[main] - left[main]) + 1
    gap_y = torch.clamp(torch.maximum(top[main] - bottom, top - bottom[main]), min=0)
    gap_x = torch.clamp(torch.maximum(left[main] - right, left - right[main]), min=0)
    gap = torch.sqrt((gap_y**2 + gap_x**2).double()) / size  # 0 for marks touching or inside the digit's box
    share = mass / mass[main]
    stray = gap > STRAY_GAP_PER_INK * share
    stray[0] = False
    if not bool(stray.any()):
        return ink
    keep = ~stray[inverse]  # per grid cell
    keep = keep.repeat_interleave(f, 0).repeat_interleave(f, 1)[:h, :w].numpy()
    return ink * keep


def _ink_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), inclusive, of the True pixels of a boolean mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width (pixels) of a boolean mask: twice its area over its boundary length (a stroke
    of length L and width w has area L*w and two edges of length L)."""
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    area = int(mask.sum())
    boundary = area - int(inner.sum())
    return 2.0 * area / max(boundary, 1)


def thicken_thin_strokes(ink: np.ndarray) -> np.ndarray:
    """Ink map -> the same, with strokes widened by a max filter when they are thinner than STROKE_MIN of
    the digit's size (to STROKE_TARGET); MNIST-like strokes are left alone. A large picture is first
    max-pooled to at most THICKEN_SIDE a side (which keeps hairlines), so the filter stays cheap."""
    mask = ink > INK_THRESHOLD
    top, bottom, left, right = _ink_box(mask)
    size = max(bottom - top, right - left) + 1
    width = stroke_width(np.pad(mask, 1))
    if width >= STROKE_MIN * size:
        return ink
    t = torch.from_numpy(np.ascontiguousarray(ink, dtype=np.float32))[None, None]
    f = -(-max(ink.shape) // THICKEN_SIDE)
    if f > 1:
        t = F.max_pool2d(t, f, f, ceil_mode=True)
        size, width = size / f, max(width / f, 1.0)
    k = 2 * max(1, round((STROKE_TARGET * size - width) / 2)) + 1  # odd window: widens by k - 1 pixels
    return F.max_pool2d(t, k, 1, k // 2)[0, 0].numpy()


def centre_in_field(ink: np.ndarray) -> np.ndarray:
    """Ink map (H, W) in 0..1 -> (28, 28) float in 0..1, MNIST-style crop, scale and centre of mass."""
    top, bottom, left, right = _ink_box(ink > INK_THRESHOLD)
    crop = ink[top : bottom + 1, left : right + 1]
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


@dataclass(frozen=True)
class Reading:
    """A picture as a model reads it, and what was cleaned up on the way (for telling the user)."""

    x: torch.Tensor  # normalised (1, 1, 28, 28)
    notes: tuple[str, ...]


def read_picture(image: np.ndarray) -> Reading:
    """`preprocess`, also saying whether stray marks were erased or thin strokes widened."""
    ink = ink_map(image)
    kept = drop_stray_marks(ink)
    widened = thicken_thin_strokes(kept)
    notes = ("stray marks away from the digit ignored",) * (kept is not ink)
    notes += ("strokes widened to MNIST's width",) * (widened is not kept)
    field = centre_in_field(widened)
    return Reading(((torch.from_numpy(field) - MEAN) / STD)[None, None], notes)


def preprocess(image: np.ndarray) -> torch.Tensor:
    """Any picture of one digit (HxW, HxWx3, HxWx4, uint8 or see `as_uint8_image`; either polarity)
    -> normalised (1, 1, 28, 28).

    Raises EmptyImageError for a blank picture, ValueError for a picture it cannot read.
    """
    return read_picture(image).x


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
