"""MNIST held whole in memory as tensors, with augmentation applied per batch on tensors.

Files are torchvision's layout: <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.
The root comes from --data, else $MNIST_ROOT, else ./data.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

MEAN, STD = 0.1307, 0.3081
BACKGROUND = (0.0 - MEAN) / STD  # a black pixel after normalisation
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


class DataError(RuntimeError):
    """MNIST is missing or unreadable; the message says what to do."""


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Where MNIST lives: the explicit setting, else $MNIST_ROOT, else ./data."""
    return Path(explicit or os.environ.get("MNIST_ROOT") or "data").expanduser()


def raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def read_idx(path: Path, kind: str) -> torch.Tensor:
    """Read one IDX file ('images' -> uint8 (N, 28, 28), 'labels' -> uint8 (N,)), checking its header."""
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(f"{path} is truncated ({len(blob)} bytes): replace it with the original MNIST file")
    magic = int.from_bytes(blob[0:4], "big")
    if magic != IDX_MAGIC[kind]:
        raise DataError(
            f"{path} is not an MNIST {kind} IDX file (magic {magic:#010x}, expected {IDX_MAGIC[kind]:#010x}); "
            "is it still gzip-compressed or corrupt?"
        )
    dims = [int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if len(blob) != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header promises {dims} ({expected} bytes), file has {len(blob)} bytes"
        )
    if kind == "images" and dims[1:] != [28, 28]:
        raise DataError(f"{path} holds {dims[1]}x{dims[2]} images; MNIST's are 28x28: replace it with the original MNIST file")
    if dims[0] == 0:
        raise DataError(f"{path} holds no {kind}: replace it with the original MNIST file")
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8, offset=header).reshape(dims)
    if kind == "labels" and int(data.max()) > 9:
        raise DataError(f"{path} has label {int(data.max())}; MNIST's labels are 0-9: replace it with the original MNIST file")
    return data


def _missing(root: Path) -> list[str]:
    return [f for f in FILES.values() if not (raw_dir(root) / f).is_file()]


def ensure_mnist(root: Path) -> None:
    """Make sure the four IDX files are under root; try torchvision's download when they are not."""
    if not _missing(root):
        return
    download_error = ""
    try:
        import torchvision

        for train in (True, False):
            torchvision.datasets.MNIST(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - any download failure ends in the one message below
        download_error = f" (download failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    missing = _missing(root)
    if missing:
        raise DataError(
            f"MNIST not found in {raw_dir(root).resolve()}{download_error}. Missing: {', '.join(missing)}. "
            "Set MNIST_ROOT (or pass --data) to a folder holding MNIST/raw/ with those four IDX files "
            "(torchvision's layout, uncompressed)."
        )


@dataclass
class MNIST:
    """Both splits as normalised float tensors (N, 1, 28, 28) and int64 labels (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def subset(self, train_limit: int = 0, test_limit: int = 0) -> MNIST:
        """The first N images of each split (0 = all): for quick runs and tests."""
        tl = train_limit or len(self.train_y)
        vl = test_limit or len(self.test_y)
        return MNIST(self.train_x[:tl], self.train_y[:tl], self.test_x[:vl], self.test_y[:vl])

    def to(self, device: torch.device | str) -> MNIST:
        return MNIST(*(t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)))


def normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) with the seed's mean/std."""
    x = images_uint8.float()
    x.div_(255.0).sub_(MEAN).div_(STD)  # in place: no 188 MB temporaries for the 60,000 training images
    return x.unsqueeze(1)


@functools.lru_cache(maxsize=2)
def _load(root: str) -> MNIST:
    path = Path(root)
    ensure_mnist(path)
    split = {}
    for (name, kind), fname in FILES.items():
        split[name, kind] = read_idx(raw_dir(path) / fname, kind)
    for name in ("train", "test"):
        n_img, n_lab = len(split[name, "images"]), len(split[name, "labels"])
        if n_img != n_lab:
            raise DataError(f"MNIST {name} split has {n_img} images but {n_lab} labels: the files do not belong together")
    return MNIST(
        normalise(split["train", "images"]),
        split["train", "labels"].long(),
        normalise(split["test", "images"]),
        split["test", "labels"].long(),
    )


def load_mnist(root: str | os.PathLike | None = None) -> MNIST:
    """Load (once per process) the whole of MNIST from the data root."""
    return _load(str(data_root(root).resolve()))


def augment_batch(
    x: torch.Tensor, rotate_deg: float, translate: float = 0.0, scale: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random rotation (+-rotate_deg), optional shift (fraction of size) and zoom (+-scale), one per image.

    Done for the whole batch with one affine_grid/grid_sample; pixels that come in from outside the
    image are background (black), as with torchvision's RandomRotation(fill=0).
    """
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator, device="cpu").to(x.device) * 2 - 1  # uniform in [-1, 1]
    angle = u[:, 0] * math.radians(rotate_deg)
    zoom = 1.0 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid works in [-1, 1] coordinates, so a shift of `translate` of the width is 2*translate.
    theta = torch.stack(
        [torch.stack([cos, -sin, u[:, 2] * 2 * translate], 1), torch.stack([sin, cos, u[:, 3] * 2 * translate], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - BACKGROUND, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + BACKGROUND
