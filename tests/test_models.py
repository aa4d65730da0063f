import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from core.architecture import receptive_field_table
from core.layers import FastDropout
from core.models import MODELS, build_model, count_parameters, variant_rows

SEED_MODEL3_TABLE = [  # (block, output HxWxC, receptive field) from shared/SEED.md
    ("convblock1", (8, 26, 26), 3),
    ("convblock2", (12, 24, 24), 5),
    ("convblock3", (8, 24, 24), 5),
    ("pool1", (8, 12, 12), 6),
    ("convblock4", (12, 10, 10), 10),
    ("convblock5", (12, 8, 8), 14),
    ("convblock6", (12, 6, 6), 18),
    ("convblock7", (12, 4, 4), 22),
]


@pytest.mark.parametrize("name", list(MODELS))
def test_every_variant_maps_a_batch_to_ten_logits(name):
    model = build_model(name)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)


def test_parameter_budgets():
    params = {name: count_parameters(build_model(name)) for name in MODELS}
    assert 150_000 <= params["Model1"] <= 250_000
    for name in ("Model2", "Model2b", "Model2c", "Model3"):
        assert params[name] < 8_000, (name, params[name])
    assert params["Tiny4k"] < 5_000
    assert params["Sep4k"] < 5_000  # Tiny4k's budget: wider after the pool (separable) and at conv2
    assert params["Sep3k"] < 4_000  # issue 16's moonshot


def test_a_separable_block_is_a_depthwise_then_a_pointwise_conv():
    model = build_model("Sep4k")
    dw, pw = model.convblock5[0], model.convblock5[1]
    assert (dw.groups, dw.in_channels, dw.out_channels, dw.kernel_size) == (26, 26, 26, (3, 3))
    assert (pw.groups, pw.kernel_size, pw.out_channels) == (1, (1, 1), 26)
    assert model.convblock2[0].groups == 1  # before the pool: full convs, as Tiny4k's
    # one layer in the receptive-field table: the pointwise half adds no field and its parameters join the row
    rows = {r.name: r for r in receptive_field_table(model)}
    assert (rows["convblock5"].out_shape, rows["convblock5"].rf, rows["convblock5"].params) == ((26, 8, 8), 14, 9 * 26 + 26 * 26 + 52)


def test_model3_receptive_field_matches_seed_table():
    rows = receptive_field_table(build_model("Model3"))
    got = [(r.name, r.out_shape, r.rf) for r in rows[: len(SEED_MODEL3_TABLE)]]
    assert got == SEED_MODEL3_TABLE
    gap = rows[len(SEED_MODEL3_TABLE)]
    # The seed's GAP row repeats 22; averaging all 4x4 positions (jump 2) actually sees 22 + 3*2 = 28.
    assert (gap.kind, gap.kernel, gap.rf) == ("gap", 4, 28)


def test_variants_table_lists_every_variant_with_its_receptive_fields_and_our_best():
    rows = {r["variant"]: r for r in variant_rows({"Tiny4k": 99.5})}
    assert list(rows) == list(MODELS)
    m3 = rows["Model3"]
    assert (m3["params"], m3["RF of last 3x3 conv"], m3["RF of output"]) == (count_parameters(build_model("Model3")), 22, 28)
    assert m3["seed's test %"] == 99.27 and m3["our best test %"] is None
    assert rows["Tiny4k"]["seed's test %"] is None and rows["Tiny4k"]["our best test %"] == 99.5


def test_layer_table_params_add_up_to_the_model():
    for name in MODELS:
        model = build_model(name)
        assert sum(r.params for r in receptive_field_table(model)) == count_parameters(model), name


def test_each_step_adds_its_idea():
    def has(name, kind):
        return any(isinstance(m, kind) for m in build_model(name).modules())

    assert not has("Model1", nn.BatchNorm2d) and not has("Model1", FastDropout)
    assert has("Model2", nn.BatchNorm2d) and not has("Model2", FastDropout)
    assert build_model("Model2b").convblock1[-1].p == 0.25
    assert has("Model2c", nn.AdaptiveAvgPool2d) and not has("Model2b", nn.AdaptiveAvgPool2d)
    assert build_model("Model3").convblock1[-1].p == 0.1


def test_unknown_model_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="Model3"):
        build_model("ResNet50")


def test_models_command_prints_every_variant():
    out = subprocess.run([sys.executable, "-m", "core.models"], capture_output=True, text=True, check=True).stdout
    for name in MODELS:
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{count_parameters(build_model(name)):,}" in line


def test_command_line_overrides_read_json_else_strings():
    from core.config import ConfigError, parse_overrides

    assert parse_overrides(["lr=0.05", "nesterov=true", "dropout=null", "optimizer=adam"]) == {
        "lr": 0.05, "nesterov": True, "dropout": None, "optimizer": "adam"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["lr"])


def test_config_diff_lists_only_the_settings_that_differ():
    from core.config import TrainConfig, config_diff, recipe

    rows = config_diff({"seed": recipe("Model3", "seed"), "tuned": recipe("Model3", "reference"),
                        "tiny": recipe("Tiny4k", "reference")})
    settings = [r["setting"] for r in rows]
    assert "model" in settings and "lr" in settings and "scheduler" in settings and "rotate_deg" not in settings
    lr = next(r for r in rows if r["setting"] == "lr")
    assert (lr["seed"], lr["tuned"], lr["tiny"]) == (0.01, 0.05, 0.1)
    ema = next(r for r in rows if r["setting"] == "ema")
    assert (ema["seed"], ema["tuned"], ema["tiny"]) == (0.0, 0.999, 0.0)
    assert config_diff({"a": TrainConfig(), "b": TrainConfig()}) == []


def test_distillation_loss_is_zero_only_where_the_student_matches_the_teacher():
    from core.train import distillation_loss

    teacher = torch.randn(8, 10)
    assert distillation_loss(teacher.clone(), teacher, 4.0).abs().item() < 1e-6
    student = torch.randn(8, 10, requires_grad=True)
    loss = distillation_loss(student, teacher, 4.0)
    # KL(p_teacher || p_student) at temperature T, times T^2, against a direct computation
    p, q = torch.softmax(teacher / 4, 1), torch.log_softmax(student / 4, 1)
    assert torch.allclose(loss, (p * (p.log() - q)).sum(1).mean() * 16, atol=1e-6)
    loss.backward()  # the gradient pulls the student's softened outputs toward the teacher's
    assert torch.allclose(student.grad, (torch.softmax(student / 4, 1) - p).detach() * 4 / 8, atol=1e-6)


def test_a_distilled_run_learns_from_the_teacher_and_leaves_it_as_shipped(synthetic_root):
    from core.config import recipe
    from core.data import load_mnist
    from core.reference import load_reference_model
    from core.train import Trainer

    data = load_mnist(synthetic_root)

    def trained(**changes):
        trainer = Trainer(recipe("Tiny4k", distill_from="Model3", train_limit=256, test_limit=64, epochs=1, **changes), data)
        next(trainer.epochs())
        return trainer

    taught, plain_run = trained(), trained(distill_weight=0.0)
    shipped = load_reference_model("Model3").state_dict()
    assert not taught.teacher.training
    assert all(torch.equal(v, shipped[k]) for k, v in taught.teacher.state_dict().items())
    # Weight 0 is the plain recipe step for step; weight 0.5 moves the student elsewhere.
    untaught = Trainer(recipe("Tiny4k", train_limit=256, test_limit=64, epochs=1), data)
    assert untaught.teacher is None
    next(untaught.epochs())
    params = lambda t: torch.cat([p.detach().flatten() for p in t.model.parameters()])  # noqa: E731
    assert torch.equal(params(plain_run), params(untaught))
    assert not torch.allclose(params(taught), params(untaught), atol=1e-4)


def test_padding_keeps_parameters_and_receptive_fields_and_grows_the_last_map():
    from core.models import SmallNet

    plain, padded = SmallNet(), SmallNet(pad=(0, 0, 0, 1, 1, 0, 0))
    assert count_parameters(plain) == count_parameters(padded)
    rows = {r.name: r for r in receptive_field_table(padded)}
    blocks = lambda m: [r.rf for r in receptive_field_table(m) if r.name.startswith("convblock")]  # noqa: E731
    assert blocks(padded) == blocks(plain) == [3, 5, 5, 10, 14, 18, 22]
    assert rows["convblock7"].out_shape == (12, 8, 8)  # 12 -> 12 -> 12 -> 10 -> 8 instead of 10 -> 8 -> 6 -> 4
