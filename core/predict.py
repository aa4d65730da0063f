"""Reading a digit from any picture the way MNIST was made (asking a model about it: core.inference).

MNIST's recipe (LeCun et al.): crop to the ink, scale the longer side to 20 px keeping the aspect
ratio, then place it in a 28x28 field so that its centre of mass sits at the centre.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

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
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # the formats the Draw page offers; no others are opened
# A larger upload is shrunk by a whole factor as soon as it is decoded, in uint8: a 4000 px picture then costs
# the decoded picture and 1/16 of it, not a dozen float copies (the digit ends up 20 px tall anyway).
DECODED_SIDE = 1024
# Pillow decodes a WebP whole, through about four full-size RGBA copies (250 MB for 4000x4000), before we can shrink it.
MAX_WEBP_SIDE = 2048
# What Pillow raises on a damaged file: OSError, or SyntaxError ("broken PNG file"; "not a TIFF file" from a WebP's
# broken EXIF). 25,000 damaged files met no other (python -m tests.fuzz_uploads).
DAMAGED_FILE_ERRORS = (OSError, SyntaxError)


class EmptyImageError(ValueError):
    """The image holds no visible ink: nothing to classify."""


class PictureTooLargeError(ValueError):
    """An upload with more pixels than the reader takes (a decompression bomb, or just a huge picture)."""


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
    """An uploaded file's bytes (PNG, JPEG, WebP, BMP or GIF) -> uint8 grey or RGBA array, at most
    DECODED_SIDE a side.

    Phone photos are turned upright by their EXIF orientation; palette pictures keep their
    transparency; 16-bit greys keep their range. Raises ValueError with a one-line message for the user.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
        if max(img.size) > max_side:
            raise PictureTooLargeError(f"the picture is {img.width}x{img.height} px, too large: use one under {max_side} px a side")
        if img.format == "WEBP" and max(img.size) > MAX_WEBP_SIDE:
            raise PictureTooLargeError(f"the WebP picture is {img.width}x{img.height} px, too large: "
                                       f"save it as PNG or JPEG, or under {MAX_WEBP_SIDE} px a side")
        img.draft(None, (DECODED_SIDE, DECODED_SIDE))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that is still larger
        img.load()
        transparent = "A" in img.getbands() or img.info.get("transparency") is not None
        mode = "I" if img.mode.startswith("I") else "F" if img.mode == "F" else "RGBA" if transparent else "L"
        img = ImageOps.exif_transpose(_shrunk(img, mode))
    except PictureTooLargeError:
        raise
    except Image.DecompressionBombError:
        raise PictureTooLargeError(f"the picture is too large: use one under {max_side} px a side") from None
    except UnidentifiedImageError:
        raise ValueError("not a readable picture: upload a PNG, JPEG, WebP, BMP or GIF") from None
    except DAMAGED_FILE_ERRORS as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ValueError(f"the picture could not be decoded ({reason}): save it again and upload the new file") from None
    if img.mode.startswith("I"):  # 16-bit grey ("I;16*", or "I" from older Pillow): read as uint16
        return as_uint8_image(np.clip(np.asarray(img), 0, 65535).astype(np.uint16))
    if img.mode == "F":
        return as_uint8_image(np.asarray(img))
    return np.asarray(img.convert(mode))


def _shrunk(img: Image.Image, mode: str) -> Image.Image:
    """A decoded picture larger than DECODED_SIDE converted to `mode` and shrunk by a whole factor (box average)
    to at most that side, a band of rows at a time so that no second full-size copy is made; others as they are."""
    f = -(-max(img.size) // DECODED_SIDE)
    if f == 1:
        return img
    out = Image.new(mode, (-(-img.width // f), -(-img.height // f)))
    band = 64 * f  # rows
    for top in range(0, img.height, band):
        strip = img.crop((0, top, img.width, min(top + band, img.height)))
        out.paste(strip.convert(mode).reduce(f), (0, top // f))
    out.info = img.info  # the EXIF orientation, for exif_transpose
    return out


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


def _blocks(a: np.ndarray, f: int, reduce) -> np.ndarray:
    """(H, W) -> (ceil(H/f), ceil(W/f)): `reduce` (np.sum, np.max) over each f x f block, zero-padded at the edges."""
    h, w = a.shape
    padded = np.pad(a, ((0, -h % f), (0, -w % f)))
    return reduce(padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f), axis=(1, 3))


def drop_stray_marks(ink: np.ndarray) -> np.ndarray:
    """Ink map -> the same with stray marks erased: separate marks away from the digit, the lighter the
    nearer (see STRAY_GAP_PER_INK). The digit is the mark holding the most ink; the parts of a digit drawn
    in several strokes (a 5's detached bar, a 4 in two strokes) are near it or inside its box and stay.

    Found on a grid of at most MARK_GRID cells a side (each cell: the ink of a block of pixels), so marks
    a block apart count as one, and any picture size costs about the same.
    """
    f = -(-max(ink.shape) // MARK_GRID)  # block side
    cells = _blocks(ink.astype(np.float64), f, np.sum)
    labels, n = ndimage.label(_blocks(ink, f, np.max) > INK_THRESHOLD, structure=np.ones((3, 3)))  # 8-connected
    if n <= 1:
        return ink
    ids = np.arange(1, n + 1)
    mass = ndimage.sum_labels(cells, labels, ids)
    # (top, bottom, left, right) of each mark, in cells, inclusive
    boxes = np.array([(r.start, r.stop - 1, c.start, c.stop - 1) for r, c in ndimage.find_objects(labels)])
    top, bottom, left, right = boxes.T
    main = int(mass.argmax())
    size = max(bottom[main] - top[main], right[main] - left[main]) + 1
    gap_y = np.maximum(np.maximum(top[main] - bottom, top - bottom[main]), 0)
    gap_x = np.maximum(np.maximum(left[main] - right, left - right[main]), 0)
    gap = np.hypot(gap_y, gap_x) / size  # 0 for marks touching or inside the digit's box
    stray = gap > STRAY_GAP_PER_INK * mass / mass[main]
    if not stray.any():
        return ink
    keep = ~np.concatenate([[False], stray])[labels]  # per grid cell (label 0, no ink, is kept too)
    keep = keep.repeat(f, 0).repeat(f, 1)[: ink.shape[0], : ink.shape[1]]
    return ink * keep


def _ink_box(mask: np.ndarray) -> tuple[slice, slice]:
    """(rows, columns) slices of the box holding the True pixels of a boolean mask."""
    return ndimage.find_objects(mask.view(np.uint8))[0]


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width (pixels) of a boolean mask: twice its area over its boundary length (a stroke
    of length L and width w has area L*w and two edges of length L)."""
    area = int(mask.sum())
    boundary = area - int(ndimage.binary_erosion(mask).sum())  # pixels with a 4-neighbour off the mask or outside
    return 2.0 * area / max(boundary, 1)


def thicken_thin_strokes(ink: np.ndarray) -> np.ndarray:
    """Ink map -> the same, with strokes widened by a max filter when they are thinner than STROKE_MIN of
    the digit's size (to STROKE_TARGET); MNIST-like strokes are left alone. A large picture is first
    max-pooled to at most THICKEN_SIDE a side (which keeps hairlines), so the filter stays cheap."""
    mask = ink > INK_THRESHOLD
    size = max(s.stop - s.start for s in _ink_box(mask))
    width = stroke_width(mask)
    if width >= STROKE_MIN * size:
        return ink
    f = -(-max(ink.shape) // THICKEN_SIDE)
    if f > 1:
        ink = _blocks(ink, f, np.max)
        size, width = size / f, max(width / f, 1.0)
    k = 2 * max(1, round((STROKE_TARGET * size - width) / 2)) + 1  # odd window: widens by k - 1 pixels
    return ndimage.maximum_filter(ink, size=k, mode="constant")  # ink >= 0, so the zero border never wins


def centre_in_field(ink: np.ndarray) -> np.ndarray:
    """Ink map (H, W) in 0..1 -> (28, 28) float in 0..1, MNIST-style crop, scale and centre of mass."""
    crop = ink[_ink_box(ink > INK_THRESHOLD)]
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]
    # antialias only matters when shrinking; it averages a big stroke instead of sampling it
    small = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0, 0]
    small = small.clamp(0, 1).numpy()
    cy, cx = ndimage.center_of_mass(small)
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
