"""The own-digits set: stored with its pictures on SQLite and PostgreSQL, exported and imported as an ImageFolder
zip (all or nothing; zip-slip, nested archives, non-pictures and bombs refused), and ImageFolder folders read
for --extra-data."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from core import digits
from core.digits import (
    DigitsError,
    OwnDigits,
    export_zip,
    import_zip,
    png_array,
    read_image_folder,
    read_zip,
    save_drawing,
    split_held_out,
)
from core.predict import as_picture, read_picture
from core.runs import RunStore


def drawing(digit: int, shift: int = 0) -> np.ndarray:
    """A 280x280 RGBA canvas picture (white strokes on black, as Draw's canvas returns) of a rough `digit`."""
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 255))
    d = ImageDraw.Draw(img)
    d.text((60 + shift, 40), str(digit), fill=(255, 255, 255, 255), font_size=180)
    return np.asarray(img)


def png(digit: int, shift: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(drawing(digit, shift)).save(buf, format="PNG")
    return buf.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> RunStore:
    if request.param == "sqlite":
        return RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    return RunStore(request.getfixturevalue("pg_url"))


def test_labelled_set_round_trip(store):
    image = drawing(7)
    first = save_drawing(store, image, 7, read_by="Model3 (reference)", read_as=1)
    second = save_drawing(store, drawing(3), 3)
    save_drawing(store, drawing(3, 20), 3, owner="ann")  # another user's: not in the set of the user without one

    rows = store.digits()
    assert [r["id"] for r in rows] == [first, second]
    r = rows[0]
    assert (r["label"], r["read_by"], r["read_as"], r["owner"]) == (7, "Model3 (reference)", 1, None)
    assert np.array_equal(png_array(r["picture"]), image)  # the original picture, lossless
    assert np.array_equal(png_array(r["reading"]), as_picture(read_picture(image).x))  # what the models see
    assert r["created_at"] > 1.7e9
    assert store.digit_counts() == {d: int(d in (3, 7)) for d in range(10)}
    assert store.digit_counts("ann")[3] == 1
    assert "picture" not in store.digits(pictures=False)[0]

    assert not store.delete_digit(first, owner="ann")  # not ann's
    assert store.delete_digit(first)
    assert [r["id"] for r in store.digits()] == [second]
    assert len(store.digits("ann")) == 1


def test_blank_drawing_or_bad_label_is_refused(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    with pytest.raises(DigitsError, match="blank"):
        save_drawing(store, np.zeros((280, 280, 4), np.uint8), 3)
    with pytest.raises(DigitsError, match="0-9"):
        save_drawing(store, drawing(3), 12)
    assert store.digits() == []


def test_zip_export_import_round_trip(store, tmp_path):
    for d, shift in ((1, 0), (4, 10), (4, -10), (9, 0)):
        save_drawing(store, drawing(d, shift), d)
    data = export_zip(store.digits())
    names = sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert [n.split("/")[0] for n in names] == ["1", "4", "4", "9"]  # ImageFolder: <digit>/<name>.png

    other = RunStore(f"sqlite:///{tmp_path / 'other.db'}")
    assert import_zip(other, data, owner="bob") == 4
    before = {(r["label"], r["picture"], r["reading"]) for r in store.digits()}
    after = {(r["label"], r["picture"], r["reading"]) for r in other.digits("bob")}
    assert before == after


def test_zip_with_a_top_folder_and_mac_leftovers_is_read():
    data = zip_of({"class-7b/2/a.png": png(2), "class-7b/5/b.png": png(5), "__MACOSX/class-7b/2/._a.png": b"junk",
                   "class-7b/.DS_Store": b"junk"})
    assert sorted(p.label for p in read_zip(data)) == [2, 5]


GOOD = {"3/good.png": png(3)}  # comes first in every bad zip below: an import is all or nothing


@pytest.mark.parametrize("members, message", [
    ({"../3/evil.png": png(3)}, "zip-slip"),
    ({"3/../../evil.png": png(3)}, "zip-slip"),
    ({"/etc/3/evil.png": png(3)}, "zip-slip"),
    ({"C:/3/evil.png": png(3)}, "zip-slip"),
    ({"3\\..\\evil.png": png(3)}, "zip-slip"),
    ({"3/inner.zip": zip_of({"3/a.png": png(3)})}, "nested"),
    ({"3/inner.png": zip_of({"3/a.png": png(3)})}, "zip inside the zip"),
    ({"3/notes.txt": b"hello"}, "not a picture"),
    ({"3/fake.png": b"this is not a PNG"}, "not a readable picture"),
    ({"x/a.png": png(3)}, "not a digit"),
    ({"12/a.png": png(3)}, "not a digit"),
    ({"a.png": png(3)}, "not in a digit folder"),
    ({"3/blank.png": b"", "3/black.png": None}, "blank"),
    ({"3/bomb.png": b"\0" * (3 * 2**20)}, "unpacks to 3.0 MB"),
])
def test_bad_zips_are_refused_and_nothing_is_saved(tmp_path, members, message):
    black = io.BytesIO()
    Image.new("L", (100, 100), 0).save(black, format="PNG")
    members = {k: (black.getvalue() if v is None else v) for k, v in members.items() if v != b""}
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    with pytest.raises(DigitsError, match=message) as e:
        import_zip(store, zip_of({**GOOD, **members}))
    assert "\n" not in str(e.value)
    assert store.digits() == []


def test_zip_bounds_on_count_and_total_size(tmp_path, monkeypatch):
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    monkeypatch.setattr(digits, "MAX_PICTURES", 2)
    with pytest.raises(DigitsError, match="holds 3 files"):
        import_zip(store, zip_of({f"3/{i}.png": png(3) for i in range(3)}))
    monkeypatch.setattr(digits, "MAX_PICTURES", 100)
    monkeypatch.setattr(digits, "MAX_TOTAL_BYTES", 2 * len(png(3)))
    with pytest.raises(DigitsError, match="unpacks to"):
        import_zip(store, zip_of({f"3/{i}.png": png(3) for i in range(3)}))
    with pytest.raises(DigitsError, match="not a readable zip"):
        import_zip(store, b"PK\x03\x04 but not a zip")
    with pytest.raises(DigitsError, match="no pictures"):
        import_zip(store, zip_of({"3/": b""}))
    assert store.digits() == []


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_image_folder_is_read_like_a_drawing(tmp_path):
    root = write_folder(tmp_path / "mine", {"0/a.png": png(0), "8/b.png": png(8), "8/c.png": png(8, 15)})
    pictures = read_image_folder(root)
    assert [p.label for p in pictures] == [0, 8, 8]
    assert torch.equal(pictures[1].x, read_picture(np.asarray(Image.open(root / "8/b.png"))).x)


def test_bad_extra_data_folders_are_refused(tmp_path):
    huge = io.BytesIO()
    Image.new("L", (5000, 20), 0).save(huge, format="PNG")
    cases = [
        ({}, "holds no pictures"),
        ({"seven/a.png": png(7)}, "not a digit"),
        ({"7/a.txt": b"hello"}, "not a picture"),
        ({"7/a.png": b"not a png"}, "not a readable picture"),
        ({"7/a.png": huge.getvalue()}, "too large"),
        ({"a.png": png(7)}, "not in a digit folder"),
    ]
    for n, (files, message) in enumerate(cases):
        root = write_folder(tmp_path / f"case{n}", files)
        root.mkdir(exist_ok=True)
        with pytest.raises(DigitsError, match=message):
            read_image_folder(root)
    with pytest.raises(DigitsError, match="no such folder"):
        read_image_folder(tmp_path / "nowhere")


def test_every_fourth_picture_of_each_digit_is_held_out():
    rows = [{"id": i, "label": i % 2} for i in range(1, 17)]  # eight 0s and eight 1s
    train, held = split_held_out(rows)
    assert [r["id"] for r in held] == [7, 8, 15, 16]
    assert len(train) == 12 and not {r["id"] for r in train} & {r["id"] for r in held}


def test_own_digits_take_their_share_of_each_batch():
    own = OwnDigits(torch.full((5, 1, 28, 28), 7.0), torch.full((5,), 7), share=0.25)
    x, y = torch.zeros(64, 1, 28, 28), torch.zeros(64, dtype=torch.long)
    mx, my = own.mix(x, y, torch.Generator().manual_seed(0))
    assert mx.shape == x.shape and int((my == 7).sum()) == 16 and int((mx[:, 0, 0, 0] == 7).sum()) == 16
    _, small = own.mix(x[:3], y[:3], torch.Generator().manual_seed(0))
    assert int((small == 7).sum()) == 1  # at least one in the last, short batch
