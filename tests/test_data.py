import math

import numpy as np
import pytest
import torch

from core.data import BACKGROUND, FILES, MEAN, STD, DataError, augment_batch, load_mnist, raw_dir, read_idx
from tests.conftest import make_synthetic_mnist, write_idx


def test_synthetic_idx_files_load_through_the_real_loader(tmp_path):
    root = make_synthetic_mnist(tmp_path, n_train=64, n_test=16)
    d = load_mnist(root)
    assert d.train_x.shape == (64, 1, 28, 28) and d.test_x.shape == (16, 1, 28, 28)
    assert d.train_y.dtype == torch.int64 and 0 <= d.train_y.min() and d.train_y.max() <= 9
    raw = read_idx(raw_dir(root) / FILES["train", "images"], "images")
    assert torch.allclose(d.train_x[:, 0], (raw.float() / 255 - MEAN) / STD)


def test_data_root_comes_from_the_environment(tmp_path, monkeypatch):
    root = make_synthetic_mnist(tmp_path / "elsewhere", n_train=32, n_test=8)
    monkeypatch.setenv("MNIST_ROOT", str(root))
    assert len(load_mnist().train_y) == 32


def test_missing_files_name_the_files_and_the_setting(tmp_path):
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path / "empty")
    msg = str(e.value)
    assert "MNIST_ROOT" in msg and all(f in msg for f in FILES.values())


def test_truncated_file_is_a_clear_error(tmp_path):
    root = make_synthetic_mnist(tmp_path, n_train=32, n_test=8)
    f = raw_dir(root) / FILES["train", "images"]
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_mnist(root)


def test_wrong_magic_is_a_clear_error(tmp_path):
    root = make_synthetic_mnist(tmp_path, n_train=32, n_test=8)
    f = raw_dir(root) / FILES["test", "labels"]
    f.write_bytes(b"\x1f\x8b\x08\x00" + f.read_bytes()[4:])  # looks like gzip
    with pytest.raises(DataError, match="not an MNIST labels IDX file"):
        load_mnist(root)


def test_images_and_labels_of_different_lengths_are_refused(tmp_path):
    root = make_synthetic_mnist(tmp_path, n_train=32, n_test=8)
    write_idx(raw_dir(root) / FILES["train", "labels"], np.zeros(31, np.uint8))
    with pytest.raises(DataError, match="32 images but 31 labels"):
        load_mnist(root)


def test_zero_augmentation_is_the_identity():
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(augment_batch(x, rotate_deg=0.0), x, atol=1e-5)


def test_rotation_fills_with_background_and_matches_torchvision():
    from torchvision.transforms.functional import InterpolationMode, rotate

    img = torch.full((1, 1, 28, 28), BACKGROUND)
    img[0, 0, 4:24, 12:16] = 2.0  # a vertical bar
    g = torch.Generator().manual_seed(3)
    out = augment_batch(img, rotate_deg=45.0, generator=g)
    angle = (torch.rand(1, 4, generator=torch.Generator().manual_seed(3))[0, 0] * 2 - 1) * 45.0
    # Our angle has torchvision's sign convention; bilinear sampling matches its bilinear rotate.
    ref = rotate(img - BACKGROUND, angle.item(), interpolation=InterpolationMode.BILINEAR) + BACKGROUND
    assert out[0, 0, 0, 0].item() == pytest.approx(BACKGROUND)  # corners stay black
    assert (out - ref).abs().max() < 1e-4
    assert not torch.allclose(out, img)
    assert math.isclose(out.mean().item(), img.mean().item(), rel_tol=0.1)
