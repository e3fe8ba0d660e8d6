"""The zoo: every model builds, runs a batch, has its documented layer names and only allowed modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fitc.errors import UnknownModelError
from fitc.models import MODELS, ModelSpec, build_model, get_spec
from fitc.models.zoo import ResidualBlock

ALLOWED = (nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Sequential, ResidualBlock)

EXPECTED_PARAMS = {
    "jet-mlp": ["fc1", "fc2", "fc3", "fc4"],
    "digits-mlp": ["fc1", "fc2", "fc3", "fc4"],
    "digits-cnn": ["conv1", "conv2", "fc1"],
    "resnet8": [
        "conv1",
        "stage1.conv1",
        "stage1.conv2",
        "stage2.conv1",
        "stage2.conv2",
        "stage2.shortcut",
        "stage3.conv1",
        "stage3.conv2",
        "stage3.shortcut",
        "fc",
    ],
}


def test_zoo_has_the_four_models():
    assert set(MODELS) == {"jet-mlp", "digits-mlp", "digits-cnn", "resnet8"}
    for name, spec in MODELS.items():
        assert isinstance(spec, ModelSpec) and spec.name == name and get_spec(name) is spec
        assert spec.task == "classification"


def test_specs():
    assert get_spec("jet-mlp").input_shape == (16,) and get_spec("jet-mlp").default_data is None
    assert get_spec("digits-mlp").input_shape == (64,)
    assert get_spec("digits-cnn").input_shape == (1, 8, 8)
    r = get_spec("resnet8")
    assert r.input_shape == (3, 32, 32) and r.synthetic and "generated" in r.description.lower()
    assert not any(get_spec(n).synthetic for n in ("jet-mlp", "digits-mlp", "digits-cnn"))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape_and_names(name):
    spec = get_spec(name)
    model = build_model(name)
    x = torch.randn(5, *spec.input_shape)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (5, spec.num_classes)
    assert torch.isfinite(out).all()
    weights = [n[: -len(".weight")] for n, _ in model.named_parameters() if n.endswith(".weight")]
    assert weights == EXPECTED_PARAMS[name]
    for mod_name, mod in model.named_modules():
        assert isinstance(mod, ALLOWED), f"{name}: {mod_name} is {type(mod).__name__}"


def test_mlp_layer_sizes():
    sizes = [
        (m.in_features, m.out_features)
        for m in build_model("jet-mlp").modules()
        if isinstance(m, nn.Linear)
    ]
    assert sizes == [(16, 64), (64, 32), (32, 32), (32, 5)]
    sizes = [
        (m.in_features, m.out_features)
        for m in build_model("digits-mlp").modules()
        if isinstance(m, nn.Linear)
    ]
    assert sizes == [(64, 64), (64, 32), (32, 32), (32, 10)]
    names = [n for n, _ in build_model("digits-mlp").named_children()]
    assert names == ["fc1", "relu1", "fc2", "relu2", "fc3", "relu3", "fc4"]


def test_digits_cnn_structure():
    names = [n for n, _ in build_model("digits-cnn").named_children()]
    assert names == ["conv1", "relu1", "conv2", "relu2", "pool", "flatten", "fc1"]


def test_resnet8_is_small_and_residual():
    model = build_model("resnet8")
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 80_000
    # The skip path matters: zeroing a block's convs leaves relu(shortcut(x)), not zero.
    block = model.stage1
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        assert torch.equal(block(x), torch.relu(x))


def test_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("digits-mlp", seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = build_model("digits-mlp", seed=7)
    c = build_model("digits-mlp", seed=8)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na
    assert not all(
        torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_unknown_model_names_nearest():
    with pytest.raises(UnknownModelError, match="did you mean 'digits-mlp'"):
        get_spec("digit-mlp")
    with pytest.raises(UnknownModelError, match="resnet8"):
        build_model("resnet-8")


def test_spec_validation():
    from fitc.errors import ConfigError

    assert ModelSpec(name="x", input_shape=[4, 2], num_classes=3).input_shape == (4, 2)
    with pytest.raises(ConfigError, match="input_shape"):
        ModelSpec(name="x", input_shape=(0,), num_classes=3)
    with pytest.raises(ConfigError, match="num_classes"):
        ModelSpec(name="x", input_shape=(4,), num_classes=1)
    with pytest.raises(ConfigError, match="task"):
        ModelSpec(name="x", input_shape=(4,), num_classes=3, task="regression")
