"""Your own digits: the labelled set (kept in the run store), its zip in torchvision's ImageFolder layout
(`<digit>/<name>.png`), and ImageFolder folders read MNIST-style for fine-tuning (`--extra-data DIR`).

Every picture, drawn, imported or in a folder, is read the way Draw reads a drawing (core.predict), so a
model is fine-tuned on exactly what it is shown later. Archives are read in memory, member by member with
bounded reads, and checked whole before anything is saved: nothing is ever extracted to disk.
"""

from __future__ import annotations

import io
import re
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from core import PROJECT_ROOT
from core.data import MEAN, STD, DataError
from core.predict import EmptyImageError, as_picture, as_uint8_image, decode_picture, read_picture

if TYPE_CHECKING:
    from core.runs import RunStore

DIGIT_FOLDERS = tuple(str(d) for d in range(10))
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")  # what core.predict.decode_picture opens
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar")
MAX_PICTURE_BYTES = 2 * 2**20  # one picture's file, as Draw's upload
MAX_PICTURE_SIDE = 4000  # pixels; larger pictures are refused before they are decoded
MAX_PICTURES = 5000  # in one zip or folder
MAX_TOTAL_BYTES = 100 * 2**20  # all pictures of one zip or folder together, uncompressed
MAX_ZIP_BYTES = 50 * 2**20  # the zip file itself
HELD_OUT_EVERY = 4  # fine-tuning from the page holds out every 4th picture of each digit (oldest first)


class DigitsError(DataError):
    """A labelled picture, folder or zip that cannot be used; the one-line message says which and why."""


@dataclass(frozen=True)
class LabelledPicture:
    """A picture checked and read: what goes into the store, a zip or a training batch."""

    label: int  # 0-9
    name: str  # where it came from ("3/a.png"), for messages
    png: bytes  # the picture itself, as PNG
    x: torch.Tensor  # its reading, normalised (1, 1, 28, 28)

    def row(self, read_by: str | None = None, read_as: int | None = None) -> dict:
        """The store's row for it (RunStore.add_digits)."""
        return {"label": self.label, "picture": self.png, "reading": png_bytes(as_picture(self.x)),
                "read_by": read_by, "read_as": read_as}


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 picture (H, W), (H, W, 3) or (H, W, 4) as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def png_array(data: bytes) -> np.ndarray:
    """PNG bytes (one the store holds) back to a uint8 array."""
    return np.asarray(Image.open(io.BytesIO(data), formats=["PNG"]))


def read_labelled(label: int, name: str, data: bytes) -> LabelledPicture:
    """A picture file's bytes, checked (a picture, not too large, not blank) and read MNIST-style."""
    if len(data) > MAX_PICTURE_BYTES:
        raise DigitsError(f"{name} is {len(data) / 2**20:.1f} MB: pictures must be under {MAX_PICTURE_BYTES // 2**20} MB")
    try:
        image = decode_picture(data, max_side=MAX_PICTURE_SIDE)
        x = read_picture(image).x
    except EmptyImageError:
        raise DigitsError(f"{name} is blank: no digit to learn from") from None
    except ValueError as e:
        raise DigitsError(f"{name}: {e}") from None
    return LabelledPicture(label, name, png_bytes(image), x)


def label_of(folder: str, name: str) -> int:
    """The digit a folder name stands for; DigitsError unless it is 0-9."""
    if folder not in DIGIT_FOLDERS:
        raise DigitsError(f"{name}: the folder {folder!r} is not a digit; an ImageFolder has one folder per digit, named 0-9")
    return int(folder)


def check_suffix(name: str) -> None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in ARCHIVE_SUFFIXES:
        raise DigitsError(f"{name} is an archive inside the archive: nested archives are not read; unpack it first")
    if suffix not in PICTURE_SUFFIXES:
        raise DigitsError(f"{name} is not a picture: only {', '.join(PICTURE_SUFFIXES)} files belong in a digit folder")


def skipped(name: str) -> bool:
    """Entries an archive or folder may carry that are no one's pictures: macOS's __MACOSX/ and hidden files."""
    parts = PurePosixPath(name).parts
    return bool(parts) and (parts[0] == "__MACOSX" or any(p.startswith(".") and p not in (".", "..") for p in parts))


# ---- zip: export and import -------------------------------------------------------------------------------
def export_zip(rows: list[dict]) -> bytes:
    """The labelled set (RunStore.digits rows, with pictures) as a zip in ImageFolder layout: <digit>/digit-<id>.png."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # PNGs are compressed already
        for r in rows:
            zf.writestr(f"{r['label']}/digit-{r['id']:05d}.png", r["picture"])
    return buf.getvalue()


def unsafe_path(name: str) -> bool:
    """A member name that would land outside the archive's folder if extracted: absolute, a drive letter,
    backslashes (Windows separators), or a '..' part (zip-slip)."""
    return (name.startswith(("/", "\\")) or "\\" in name or re.match(r"^[A-Za-z]:", name) is not None
            or ".." in PurePosixPath(name).parts)


def read_zip(data: bytes) -> list[LabelledPicture]:
    """Every picture of an ImageFolder zip, checked and read in memory; DigitsError (one line) on the first
    problem, so that an import takes all of the zip or none of it. A single top folder (a zipped folder
    holding the digit folders) is allowed."""
    if len(data) > MAX_ZIP_BYTES:
        raise DigitsError(f"the zip is {len(data) / 2**20:.0f} MB: import at most {MAX_ZIP_BYTES // 2**20} MB at once")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError):
        raise DigitsError("not a readable zip file: export one from the My digits page, or zip the digit folders 0-9") from None
    with zf:
        members = []
        for info in zf.infolist():
            if unsafe_path(info.filename):
                raise DigitsError(f"{info.filename} points outside the archive's folder (zip-slip): nothing imported")
            if info.is_dir() or skipped(info.filename):
                continue
            members.append(info)
        if not members:
            raise DigitsError("the zip holds no pictures: put them in folders named 0-9 (<digit>/<name>.png)")
        if len(members) > MAX_PICTURES:
            raise DigitsError(f"the zip holds {len(members):,} files: import at most {MAX_PICTURES:,} at once")
        declared = sum(i.file_size for i in members)
        if declared > MAX_TOTAL_BYTES:
            raise DigitsError(f"the zip unpacks to {declared / 2**20:.0f} MB: import at most {MAX_TOTAL_BYTES // 2**20} MB of pictures at once")
        parts = [PurePosixPath(i.filename).parts for i in members]
        top = {p[0] for p in parts}
        strip = 1 if all(len(p) == 3 for p in parts) and len(top) == 1 and top.pop() not in DIGIT_FOLDERS else 0
        pictures, total = [], 0
        for info, p in zip(members, parts, strict=True):
            name = info.filename
            p = p[strip:]
            if len(p) != 2:
                raise DigitsError(f"{name} is not in a digit folder: the zip must hold <digit>/<name>.png, digits 0-9")
            check_suffix(name)
            label = label_of(p[0], name)
            if info.file_size > MAX_PICTURE_BYTES:
                raise DigitsError(f"{name} unpacks to {info.file_size / 2**20:.1f} MB: pictures must be under {MAX_PICTURE_BYTES // 2**20} MB")
            try:
                with zf.open(info) as f:
                    blob = f.read(MAX_PICTURE_BYTES + 1)  # bounded, whatever the header claims
            except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, NotImplementedError) as e:
                raise DigitsError(f"{name} cannot be read from the zip ({' '.join(str(e).split())[:100]})") from None
            total += len(blob)
            if total > MAX_TOTAL_BYTES:
                raise DigitsError(f"the zip unpacks to more than {MAX_TOTAL_BYTES // 2**20} MB of pictures: import fewer at once")
            if blob[:4] == b"PK\x03\x04":
                raise DigitsError(f"{name} is a zip inside the zip: nested archives are not read; unpack it first")
            pictures.append(read_labelled(label, name, blob))
    return pictures


# ---- folders: what --extra-data reads, and what the page writes for a fine-tune -----------------------------
def read_image_folder(folder: str | Path) -> list[LabelledPicture]:
    """Every picture of an ImageFolder (folder/<digit>/*.png|jpg...), checked and read MNIST-style; DigitsError
    (one line) for a folder that is missing or empty, a sub-folder not named 0-9, a non-picture, a picture
    too large or blank."""
    root = Path(folder)
    if not root.is_dir():
        raise DigitsError(f"extra data {root}: no such folder; give an ImageFolder: DIR/<digit>/*.png, digits 0-9")
    files, total = [], 0
    for sub in sorted(root.iterdir()):
        if skipped(sub.name):
            continue
        if not sub.is_dir():
            raise DigitsError(f"extra data {sub} is not in a digit folder: put pictures in DIR/<digit>/, digits 0-9")
        label = label_of(sub.name, str(sub))
        for f in sorted(sub.iterdir()):
            if skipped(f.name):
                continue
            if f.is_dir():
                raise DigitsError(f"extra data {f} is a folder inside a digit folder: put the pictures straight into {sub}")
            check_suffix(str(f))
            size = f.stat().st_size
            if size > MAX_PICTURE_BYTES:
                raise DigitsError(f"extra data {f} is {size / 2**20:.1f} MB: pictures must be under {MAX_PICTURE_BYTES // 2**20} MB")
            total += size
            files.append((label, f))
            if len(files) > MAX_PICTURES or total > MAX_TOTAL_BYTES:
                raise DigitsError(f"extra data {root} holds more than {MAX_PICTURES:,} pictures or "
                                  f"{MAX_TOTAL_BYTES // 2**20} MB: use fewer")
    if not files:
        raise DigitsError(f"extra data {root} holds no pictures: put them in DIR/<digit>/*.png, digits 0-9")
    return [read_labelled(label, str(f), f.read_bytes()) for label, f in files]


def as_tensors(pictures: list[LabelledPicture]) -> tuple[torch.Tensor, torch.Tensor]:
    """Readings (N, 1, 28, 28) and labels (N,) int64."""
    return torch.cat([p.x for p in pictures]), torch.tensor([p.label for p in pictures], dtype=torch.long)


def readings(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored 28x28 readings of RunStore.digits rows as normalised (N, 1, 28, 28), and their labels."""
    if not rows:
        return torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)
    pics = np.stack([png_array(r["reading"]) for r in rows]).astype(np.float32) / 255.0
    return ((torch.from_numpy(pics) - MEAN) / STD)[:, None], torch.tensor([r["label"] for r in rows], dtype=torch.long)


def split_held_out(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(to train on, held out): every HELD_OUT_EVERY-th picture of each digit, oldest first, is held out, so the
    split is fixed for a given set and each digit with enough pictures is in both parts."""
    seen: dict[int, int] = {}
    train, held = [], []
    for r in sorted(rows, key=lambda r: r["id"]):
        n = seen[r["label"]] = seen.get(r["label"], 0) + 1
        (held if n % HELD_OUT_EVERY == 0 else train).append(r)
    return train, held


def write_image_folder(rows: list[dict], folder: Path) -> Path:
    """The rows' original pictures as an ImageFolder: folder/<digit>/digit-<id>.png."""
    for r in rows:
        (folder / str(r["label"])).mkdir(parents=True, exist_ok=True)
        (folder / str(r["label"]) / f"digit-{r['id']:05d}.png").write_bytes(r["picture"])
    return folder


def finetune_folder(store: RunStore) -> Path:
    """A new folder for one fine-tune's pictures, beside the store (runs/runs.finetune/<stamp> for runs/runs.db;
    runs/finetune/<stamp> in the project for a database server, read by local training processes)."""
    if store.folder is not None:
        base = store.folder.parent / store.folder.name.replace(".checkpoints", ".finetune")
    else:
        base = PROJECT_ROOT / "runs" / "finetune"
    return base / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


# ---- the labelled set in the store ------------------------------------------------------------------------
def save_drawing(store: RunStore, image: np.ndarray, label: int, read_by: str | None = None,
                 read_as: int | None = None, owner: str | None = None) -> int:
    """Save a drawn (or uploaded) picture as `label` with what `read_by` read it as; returns its id."""
    if label not in range(10):
        raise DigitsError(f"a digit is 0-9, got {label!r}")
    try:
        x = read_picture(image).x
    except EmptyImageError:
        raise DigitsError("the picture is blank: draw a digit before labelling it") from None
    picture = LabelledPicture(label, "the drawing", png_bytes(as_uint8_image(image)), x)
    return store.add_digits([picture.row(read_by, read_as)], owner)[0]


def import_zip(store: RunStore, data: bytes, owner: str | None = None) -> int:
    """Add every picture of an ImageFolder zip to the owner's set, all or none; returns how many."""
    pictures = read_zip(data)
    return len(store.add_digits([p.row() for p in pictures], owner))


class OwnDigits:
    """Labelled pictures as tensors on the training device, mixed into each training batch (--extra-data)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, share: float):
        self.x, self.y, self.share = x, y, share

    @classmethod
    def from_folder(cls, folder: str | Path, share: float, device: torch.device | str = "cpu") -> OwnDigits:
        x, y = as_tensors(read_image_folder(folder))
        return cls(x.to(device), y.to(device), share)

    def mix(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch with its first round(share * size) images (at least one) replaced by own digits drawn at
        random (with replacement). MNIST's batch order is random already, so which ones go does not matter."""
        k = max(1, round(self.share * len(y)))
        pick = torch.randint(len(self.y), (k,), generator=generator).to(self.y.device)
        return torch.cat([self.x[pick], x[k:]]), torch.cat([self.y[pick], y[k:]])
