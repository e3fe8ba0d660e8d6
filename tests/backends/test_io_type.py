"""The io type rule (``io_type: auto``) and the emulation's row sample.

- MLPs and small CNNs are lowered with io_parallel, CNNs whose largest feature map exceeds
  ``STREAM_ABOVE`` values with io_stream; an explicit io type is always kept.
- The run resolves ``auto`` per network and records the choice with its reason.
- A small CNN the rule streams lowers with io_stream and stays bit-exact (compiled).
- The emulation check samples rows only above its MAC budget, and the sample holds every
  output's extreme rows.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from fitc.artifacts import HardwareConfig
from fitc.backends.hls import emulation_check, lower
from fitc.backends.hls.emulation import MIN_ROWS, graph_macs, rows_limit, sample_rows
from fitc.backends.hls.io_rule import (
    STREAM_ABOVE,
    choose_io_type,
    io_choice_for,
    network_feature_maps,
)
from fitc.config import RunConfig
from fitc.errors import ConfigError
from fitc.models import build_model, get_spec

# --------------------------------------------------------------------------------------------
# The rule


def test_rule_streams_only_cnns_above_the_threshold():
    assert choose_io_type("auto", False, []).io_type == "io_parallel"
    assert choose_io_type("auto", False, [10 * STREAM_ABOVE]).io_type == "io_parallel"  # no conv
    assert choose_io_type("auto", True, [STREAM_ABOVE]).io_type == "io_parallel"
    big = choose_io_type("auto", True, [64, STREAM_ABOVE + 1, 8])
    assert big.io_type == "io_stream"
    assert big.largest_feature_map == STREAM_ABOVE + 1
    assert str(STREAM_ABOVE + 1) in big.reason and "io_stream" in big.reason


@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
def test_an_explicit_io_type_is_kept(io_type):
    for has_conv, maps in ((False, []), (True, [1]), (True, [10**6])):
        choice = choose_io_type(io_type, has_conv, maps)
        assert choice.io_type == io_type
        assert "as configured" in choice.reason


def test_rule_refuses_unknown_io_types():
    with pytest.raises(ValueError, match="io_serial"):
        choose_io_type("io_serial", True, [1])


@pytest.mark.parametrize(
    "name, largest, io_type",
    [("digits-mlp", 0, "io_parallel"), ("digits-cnn", 288, "io_parallel"),
     ("resnet8", 16 * 32 * 32, "io_stream")],
)  # fmt: skip
def test_zoo_models_get_the_rule_s_io_type(name, largest, io_type):
    spec = get_spec(name)
    model = build_model(name)
    has_conv, sizes = network_feature_maps(model, spec.input_shape)
    assert has_conv == (name != "digits-mlp")
    assert max(sizes, default=0) == largest
    choice = io_choice_for(model, spec.input_shape, "auto")
    assert choice.io_type == io_type
    assert choice.to_dict()["io_type_reason"] == choice.reason


def test_config_default_is_auto_and_checked():
    cfg = RunConfig()
    assert cfg.io_type == "auto"
    assert cfg.hardware().io_type in ("io_parallel", "io_stream")
    assert RunConfig(io_type="io_stream").hardware().io_type == "io_stream"
    with pytest.raises(ConfigError, match="io_type"):
        RunConfig(io_type="io_serial")


def test_run_resolves_auto_by_the_network(monkeypatch):
    """Run.hardware carries the rule's choice (the search, the lowering and the stage
    fingerprints all see the same io type); an explicit one is left alone."""
    from fitc.pipeline import Run

    class Net:
        def __init__(self, name):
            self.name = name

        def compiled_fresh(self, seed):
            return build_model(self.name, seed)

    for name, cfg_io, expected in (
        ("resnet8", "auto", "io_stream"),
        ("digits-cnn", "auto", "io_parallel"),
        ("resnet8", "io_parallel", "io_parallel"),
    ):
        run = Run(RunConfig(model=name, io_type=cfg_io), dir=None)  # type: ignore[arg-type]
        run.__dict__["_network_and_data"] = (Net(name), None)
        monkeypatch.setattr(Run, "spec", property(lambda self, n=name: get_spec(n)))
        assert run.hardware.io_type == expected
        assert run.io_choice.io_type == expected


# --------------------------------------------------------------------------------------------
# Which rows the emulation check runs


def test_sample_holds_every_output_s_extremes_and_is_deterministic():
    ref = np.random.default_rng(3).normal(size=(500, 4))
    idx = sample_rows(ref, 40, seed=0)
    assert len(idx) == 40 == len(set(idx.tolist()))
    assert np.all(np.diff(idx) > 0)
    for j in range(4):
        assert int(np.argmax(ref[:, j])) in idx and int(np.argmin(ref[:, j])) in idx
    assert np.array_equal(idx, sample_rows(ref, 40, seed=0))
    assert not np.array_equal(idx, sample_rows(ref, 40, seed=1))
    assert np.array_equal(sample_rows(ref, 900), np.arange(500))


def _cnn(channels: int = 8) -> nn.Module:
    # 1×16×16 → conv 8×14×14 (1568 values > STREAM_ABOVE) → conv 8×12×12 → pool 8×6×6 → dense
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, channels, 3),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(channels, 8, 3),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(8 * 6 * 6, 5),
        )
    )


INPUT = (1, 16, 16)


@pytest.fixture(scope="module")
def streamed_cnn(tmp_path_factory):
    from fitc.build import apply_plan, calibrate, magnitude_masks, make_plan
    from fitc.export import export_qonnx

    torch.manual_seed(0)
    model = _cnn().eval()
    masks = magnitude_masks(model, 0.6)
    plan = make_plan(
        model, model_name="test", input_shape=INPUT,
        weight_bits={"conv1": 6, "conv2": 4, "fc1": 5},
        act_bits={"conv1": 8, "conv2": 6, "fc1": 5}, masks=masks,
    )  # fmt: skip
    X = torch.randn((160, *INPUT), generator=torch.Generator().manual_seed(1)) * 1.5
    qmodel = calibrate(apply_plan(model, plan, masks), X)
    out = tmp_path_factory.mktemp("streamed_cnn")
    exported = export_qonnx(qmodel, INPUT, out, plan=plan)
    X = X.numpy()
    with torch.no_grad():
        y = model(torch.from_numpy(X)).argmax(1).numpy()
    return model, plan, exported, X, y


def test_rows_limit_samples_only_above_the_budget(streamed_cnn):
    from fitc.export import load_onnx

    _, _, exported, X, _ = streamed_cnn
    proto = load_onnx(exported.qonnx_path)
    macs = graph_macs(proto)
    assert macs == 8 * 9 * 14 * 14 + 8 * 8 * 9 * 12 * 12 + 5 * 288
    assert rows_limit(proto, len(X)) is None  # a small CNN: every row
    assert rows_limit(proto, 1000, budget=10 * macs) == MIN_ROWS
    assert rows_limit(proto, 1000, budget=500 * macs) == 500
    assert rows_limit(proto, 400, budget=500 * macs) is None


@pytest.mark.compile
def test_rule_streams_a_small_cnn_and_io_stream_is_bit_exact(streamed_cnn, tmp_path):
    model, plan, exported, X, y = streamed_cnn
    choice = io_choice_for(model, INPUT, "auto")
    assert choice.io_type == "io_stream" and choice.largest_feature_map == 8 * 14 * 14
    project = lower(
        exported.qonnx_path, tmp_path / "hls4ml", HardwareConfig(io_type=choice.io_type),
        plan=plan, layer_map=exported.layer_map,
    )  # fmt: skip
    assert project.hardware.io_type == "io_stream"
    report = emulation_check(project, exported.qonnx_path, X, y)
    assert report.n_samples == len(X)
    assert report.exact and report.argmax_agreement == 1.0
    # A sampled check runs the rows asked for, and they agree too.
    sampled = emulation_check(project, exported.qonnx_path, X, y, max_rows=40)
    assert sampled.n_samples == 40 and sampled.exact
