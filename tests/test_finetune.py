"""Fine-tuning on own digits: `--init` starts from trained weights, `--extra-data` mixes an ImageFolder into every
batch; bad input gets one line and records nothing; old configs and checkpoints (without these settings) still
load and resume. The slow test: mirror-written digits, which the shipped Model3 misreads, learned from 300
examples through the real CLI while MNIST's test accuracy holds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from core.cli import main as train_main
from core.config import ConfigError, TrainConfig, finetune_recipe
from core.data import load_mnist
from core.reference import load_reference_model
from core.runs import RunStore
from core.train import Trainer
from core.worker import execute_run
from tests import mirror_digits

ROOT = Path(__file__).resolve().parent.parent
NEW_FIELDS = ("init", "extra_data", "extra_share")


def own_folder(root: Path, digits=(1, 4, 7), per_digit: int = 2) -> Path:
    """A small ImageFolder of drawn digits (white on black, 280 px, like the canvas)."""
    for d in digits:
        (root / str(d)).mkdir(parents=True, exist_ok=True)
        for n in range(per_digit):
            img = Image.new("L", (280, 280), 0)
            ImageDraw.Draw(img).text((50 + 20 * n, 40), str(d), fill=255, font_size=180)
            img.save(root / str(d) / f"{n}.png")
    return root


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def small(**kw) -> TrainConfig:
    return TrainConfig.from_dict({"epochs": 2, "batch_size": 64, "train_limit": 256, "test_limit": 64, "device": "cpu", **kw})


def test_old_configs_and_checkpoints_without_the_fine_tuning_settings_still_load_and_resume(synthetic_root, store_url):
    config = small()
    old = json.dumps({k: v for k, v in json.loads(config.to_json()).items() if k not in NEW_FIELDS}, sort_keys=True)
    assert TrainConfig.from_json(old) == config  # missing settings read as their defaults

    store = RunStore(store_url)
    run_id = store.create_run(config)
    store.update(run_id, config=old, status="stopped")  # as a store written before these settings existed
    trainer = Trainer(config, load_mnist(synthetic_root))
    result = next(trainer.epochs())
    store.add_epoch(run_id, result)
    store.save_checkpoint(run_id, "last", {**trainer.state_dict(), "config": old})

    assert execute_run(run_id, store, str(synthetic_root), log=lambda s: None) == "finished"
    assert [e["epoch"] for e in store.epochs(run_id)] == [1, 2]


def test_trainer_starts_from_the_init_weights(synthetic_root):
    reference = load_reference_model("Model3").state_dict()
    trainer = Trainer(small(init="reference"), load_mnist(synthetic_root), reference)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, reference[name]), name


def test_init_switches_to_the_fine_tuning_recipe_and_bad_values_are_refused():
    ft = finetune_recipe("Model3", init="reference")
    assert (ft.epochs, ft.init, ft.lr) == (2, "reference", 0.005)  # a tenth of the tuned recipe's peak lr 0.05
    for bad in ("referense", "run:", "run:x", "run:-1"):
        with pytest.raises(ConfigError, match="init must be reference or run:N"):
            small(init=bad)
    with pytest.raises(ConfigError, match="extra_share"):
        small(extra_share=1.5)


def test_cli_fine_tunes_a_run_on_own_digits_and_reports_before_after(synthetic_root, tmp_path, monkeypatch):
    db = str(tmp_path / "runs.db")
    common = ["--train-limit", "256", "--test-limit", "64", "--batch-size", "64", "--device", "cpu", "--quiet",
              "--data", str(synthetic_root), "--runs", db]
    base = cli("-m", "core.train", "--model", "Model1", "--epochs", "2", "--lr", "0.05", *common)  # learns the bars
    assert base.returncode == 0, base.stderr
    mine = own_folder(tmp_path / "mine")
    monkeypatch.chdir(tmp_path)  # a relative --extra-data is kept as the folder it meant
    ft = cli("-m", "core.train", "--model", "Model1", "--init", "run:1", "--extra-data", str(mine), "--epochs", "1", *common)
    assert ft.returncode == 0, ft.stderr
    assert "note: 6 extra pictures" in ft.stdout
    store = RunStore(db)
    run = store.get(2)
    assert (run.status, run.config.init, run.config.extra_data, run.config.lr) == ("finished", "run:1", str(mine), 0.001)
    assert store.has_checkpoint(2, "best")

    report = cli("-m", "core.finetune", "2", "--held-out", str(mine), "--runs", db, "--data", str(synthetic_root))
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert "held-out own digits (6)" in lines[1]
    assert lines[2].startswith("before") and lines[3].startswith("after")


def test_bad_fine_tune_input_gets_one_line_and_records_nothing(synthetic_root, tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    store = RunStore(db)
    queued = store.create_run(small())  # a run without a checkpoint
    bad = tmp_path / "bad"
    (bad / "named" / "seven").mkdir(parents=True)
    (bad / "named" / "seven" / "a.png").write_bytes((own_folder(bad / "ok") / "1" / "0.png").read_bytes())
    (bad / "text" / "3").mkdir(parents=True)
    (bad / "text" / "3" / "notes.txt").write_text("hello")
    (bad / "empty").mkdir()
    cases = {
        ("--init", "bogus"): "init must be reference or run:N",
        ("--init", "run:99"): "no run 99",
        ("--init", f"run:{queued}"): "has no checkpoint",
        ("--init", "reference", "--extra-data", str(tmp_path / "nowhere")): "no such folder",
        ("--init", "reference", "--extra-data", str(bad / "empty")): "holds no pictures",
        ("--init", "reference", "--extra-data", str(bad / "named")): "not a digit",
        ("--init", "reference", "--extra-data", str(bad / "text")): "not a picture",
    }
    for args, message in cases.items():
        code = train_main(["--model", "Model3", "--data", str(synthetic_root), "--runs", db, "--device", "cpu", *args])
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert message in err and len(err.splitlines()) == 1, (args, err)
    assert [r.id for r in store.list_runs()] == [queued]  # nothing recorded


@pytest.mark.slow
def test_mirror_written_digits_are_learned_while_mnist_holds(mnist_root, tmp_path):
    """300 mirrored digits (30 per digit, MNIST train images 50,000+) mixed into 2 epochs over 20,000 MNIST images;
    held out: 500 mirrored test digits (other writers)."""
    train = mirror_digits.write_folder(tmp_path / "train", "train", 30, str(mnist_root), skip=50_000)
    held = mirror_digits.write_folder(tmp_path / "held", "test", 50, str(mnist_root))
    db = str(tmp_path / "runs.db")
    ft = cli("-m", "core.train", "--model", "Model3", "--init", "reference", "--extra-data", str(train),
             "--train-limit", "20000", "--quiet", "--data", str(mnist_root), "--runs", db, timeout=1800)
    assert ft.returncode == 0, ft.stderr
    report = cli("-m", "core.finetune", "1", "--held-out", str(held), "--runs", db, "--data", str(mnist_root))
    assert report.returncode == 0, report.stderr
    print(report.stdout)
    figures = {line.split()[0]: [float(v) for v in re.findall(r"([\d.]+)%", line)] for line in report.stdout.splitlines()[2:]}
    (own_before, mnist_before), (own_after, mnist_after) = figures["before"], figures["after"]
    # README: 36.80% -> 67.00% with the shipped Model3 at one thread (the epoch kept is the best on MNIST)
    assert own_before < 50 and own_after > own_before + 25, figures
    assert mnist_after > mnist_before - 0.5, figures
