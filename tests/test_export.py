"""Exported models: ONNX agrees with torch under onnxruntime, any batch size; the README's snippet runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core.config import TrainConfig
from core.data import load_mnist
from core.export import checkpoint_bytes, load_named, main, onnx_bytes
from core.reference import model_from_state
from core.runs import RunStore
from core.worker import execute_run
from tests.conftest import make_synthetic_mnist

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model3_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model3.onnx"
    assert main(["Model3", "--out", str(path)]) == 0
    return path


def test_onnx_and_torch_agree_on_real_test_digits_at_any_batch_size(model3_onnx, mnist_root):
    data = load_mnist(mnist_root)
    model, _ = load_named("Model3")
    session = ort.InferenceSession(str(model3_onnx))
    x = data.test_x[:1000]
    with torch.no_grad():
        expected = model(x).numpy()
    got = np.concatenate([session.run(None, {"image": x[i : i + n].numpy()})[0]
                          for i, n in ((0, 1), (1, 7), (8, 992))])
    assert got.shape == (1000, 10)
    assert np.abs(got - expected).max() < 1e-3
    assert (got.argmax(1) == expected.argmax(1)).all()
    print(f"ONNX vs torch on 1,000 test digits: max |logit difference| {np.abs(got - expected).max():.2e}, "
          f"same answer on all 1,000")


def test_a_run_exports_to_onnx_and_to_a_checkpoint_that_loads(tmp_path):
    root = make_synthetic_mnist(tmp_path / "mnist", n_train=256, n_test=64)
    store = RunStore(str(tmp_path / "runs.db"))
    run_id = store.create_run(TrainConfig(model="Tiny4k", epochs=1, batch_size=64, device="cpu"))
    execute_run(run_id, store, str(root), max_running=None, log=lambda s: None)
    model, config = load_named(f"run:{run_id}", store.url)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort.InferenceSession(onnx_bytes(model)).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-3
    state = torch.load(__import__("io").BytesIO(checkpoint_bytes(model, config)), weights_only=True)
    with torch.no_grad():
        assert torch.allclose(model_from_state(state)(x), torch.from_numpy(expected), atol=1e-5)


@pytest.mark.parametrize("args, says", [
    (["Model9", "--out", "x.onnx"], "unknown model 'Model9'"),
    (["run:999", "--out", "x.onnx"], "no run 999"),
    (["run:abc", "--out", "x.onnx"], "write run:N"),
    (["Model3", "--out", "x.txt"], "must end in .onnx or .pt"),
])
def test_bad_exports_are_one_line(args, says, tmp_path):
    out = subprocess.run([sys.executable, "-m", "core.export", *args, "--runs", str(tmp_path / "r.db")], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_the_readme_snippet_runs_as_written(model3_onnx, mnist_root, tmp_path):
    from PIL import Image

    snippet = re.search(r"onnxruntime alone.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    data = load_mnist(mnist_root)
    right = 0
    for i in range(10):
        pixels = (data.test_x[i, 0] * 0.3081 + 0.1307).clamp(0, 1).numpy() * 255
        big = Image.fromarray(255 - pixels.astype(np.uint8)).resize((140, 140))  # a photo: dark ink on paper
        big.save(tmp_path / "digit.png")
        (tmp_path / "model.onnx").write_bytes(model3_onnx.read_bytes())
        out = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        right += out.stdout.strip() == f"digit: {int(data.test_y[i])}"
    assert right >= 9, right
