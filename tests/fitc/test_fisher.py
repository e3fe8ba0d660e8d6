"""The empirical Fisher: per-sample (vmap) against a plain autograd loop, the batch
approximation against its definition, stopping, fallbacks and layer discovery."""

from __future__ import annotations

import functools
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fitc.errors import ConfigError, DataError, UnsupportedLayerError
from fitc.fisher import Fisher, compressible_layers, estimate_fisher, trace_layers
from fitc.models import build_model, get_spec, load_data
from fitc.rundir import load_torch, save_torch

N = 96
BATCH = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_data(get_spec(name))
    return torch.as_tensor(data.X_train[:N]), torch.as_tensor(data.y_train[:N])


def _digits(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return build_model(name, seed=3), *_data(name)


def _loop_fisher(model: nn.Module, X: torch.Tensor, y: torch.Tensor):
    """Reference: one backward per sample; input gradients from retained activations."""
    layers = compressible_layers(model, X[:1])
    acts: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(m, args):
            args[0].retain_grad()
            acts[name] = args[0]

        return hook

    handles = [m.register_forward_pre_hook(keep(n)) for n, m in layers]
    fw = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in layers}
    fa = dict.fromkeys(fw, 0.0)
    model.eval()
    try:
        for i in range(len(X)):
            model.zero_grad()
            x = X[i : i + 1].clone().requires_grad_(True)
            F.cross_entropy(model(x), y[i : i + 1]).backward()
            for n, m in layers:
                fw[n] += m.weight.grad.double() ** 2
                fa[n] += float((acts[n].grad.double() ** 2).sum())
    finally:
        for h in handles:
            h.remove()
        model.zero_grad()
    return {n: v / len(X) for n, v in fw.items()}, {n: v / len(X) for n, v in fa.items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_per_sample_fisher_equals_autograd_loop(name):
    model, X, y = _digits(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fisher = estimate_fisher(model, X, y, batch_size=BATCH, min_batches=10, max_batches=10)
    assert model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert fisher.n_samples == N and fisher.n_batches == N // BATCH
    fw, fa = _loop_fisher(model, X, y)
    assert fisher.layers == list(fw)
    for n in fw:
        assert fisher.weight[n].shape == fw[n].shape
        assert _rel(fisher.weight[n], fw[n]) < 1e-5, n
        assert fisher.weight_trace[n] == pytest.approx(float(fw[n].sum()), rel=1e-5)
        assert fisher.act_trace[n] == pytest.approx(fa[n], rel=1e-5)
        assert fisher.act_trace[n] > 0 and fisher.weight_trace[n] > 0


def test_batch_approximation_equals_its_definition():
    model, X, y = _digits("digits-cnn")
    fisher = estimate_fisher(
        model, X, y, batch_size=BATCH, method="batch", min_batches=10, max_batches=10, seed=7
    )
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(7))
    layers = compressible_layers(model, X[:1])
    want = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in layers}
    for b in range(N // BATCH):
        idx = perm[b * BATCH : (b + 1) * BATCH]
        loss = F.cross_entropy(model(X[idx]), y[idx])
        grads = torch.autograd.grad(loss, [m.weight for _, m in layers])
        for (n, _), g in zip(layers, grads, strict=True):
            want[n] += BATCH * g.double() ** 2
    for n in want:
        assert _rel(fisher.weight[n], want[n] / (N // BATCH)) < 1e-6, n
    # the activation trace needs no approximation: it equals the per-sample one
    exact = estimate_fisher(model, X, y, batch_size=BATCH, min_batches=10, max_batches=10, seed=7)
    for n in want:
        assert fisher.act_trace[n] == pytest.approx(exact.act_trace[n], rel=1e-5)


def test_ranges_weights_override_and_state_roundtrip(tmp_path):
    model, X, y = _digits("digits-mlp")
    fisher = estimate_fisher(model, X, y, batch_size=BATCH, max_batches=2, min_batches=2)
    w = model.fc2.weight
    assert fisher.weight_range["fc2"] == pytest.approx(float(w.detach().max() - w.detach().min()))
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    batches = [X[perm[i * BATCH : (i + 1) * BATCH]] for i in range(2)]
    want = sum(float(b.max() - b.min()) for b in batches) / 2
    assert fisher.act_range["fc1"] == pytest.approx(want, rel=1e-6)
    # evaluating at other weights equals evaluating a model that has them
    other = {"fc2": torch.zeros_like(w), "fc4": model.fc4.weight * 0.5}
    got = estimate_fisher(
        model, X, y, batch_size=BATCH, max_batches=2, min_batches=2, weights=other
    )
    twin = build_model("digits-mlp", seed=3)
    with torch.no_grad():
        twin.fc2.weight.zero_()
        twin.fc4.weight.mul_(0.5)
    ref = estimate_fisher(twin, X, y, batch_size=BATCH, max_batches=2, min_batches=2)
    for n in ref.layers:
        assert torch.allclose(got.weight[n], ref.weight[n], rtol=1e-6, atol=0)
    assert torch.equal(model.fc2.weight, w)
    save_torch(tmp_path / "fisher.pt", fisher.to_state())
    again = Fisher.from_state(load_torch(tmp_path / "fisher.pt"))  # weights_only load
    assert again.layers == fisher.layers and again.act_trace == fisher.act_trace
    assert all(torch.equal(again.weight[n], fisher.weight[n]) for n in fisher.layers)
    assert again.input_shape == (64,) and again.n_samples == fisher.n_samples
    with pytest.raises(ConfigError, match="unknown layers"):
        estimate_fisher(model, X, y, weights={"nope": w})
    with pytest.raises(ConfigError, match="shape"):
        estimate_fisher(model, X, y, weights={"fc2": w.T})


def test_stops_when_converged_or_at_max_batches():
    model, X, y = _digits("digits-mlp")
    loose = estimate_fisher(model, X, y, batch_size=16, min_batches=2, max_batches=6, tol=1e9)
    assert loose.converged and loose.n_batches == 2
    strict = estimate_fisher(model, X, y, batch_size=16, min_batches=2, max_batches=4, tol=0.0)
    assert not strict.converged and strict.n_batches == 4 and strict.n_samples == 64
    assert len(strict.trace_history) == 4
    # the data running out ends estimation too (one pass)
    short = estimate_fisher(model, X[:40], y[:40], batch_size=16, max_batches=50, tol=0.0)
    assert short.n_batches == 3 and short.n_samples == 40


class _NeedsLoop(nn.Module):
    """``.item()`` in forward breaks vmap: the estimator must fall back to a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        if x.sum().item() > 1e30:  # data-dependent Python control flow
            x = x * 0
        return self.fc2(self.relu(self.fc1(x)))


def test_vmap_failure_falls_back_to_loop_and_chunks_agree():
    torch.manual_seed(0)
    X, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    model = _NeedsLoop()
    got = estimate_fisher(model, X, y, batch_size=10)
    ref = estimate_fisher(model, X, y, batch_size=10, method="loop")
    for n in ref.layers:
        assert _rel(got.weight[n], ref.weight[n]) < 1e-6
    m2, X2, y2 = _digits("digits-cnn")
    a = estimate_fisher(m2, X2, y2, batch_size=BATCH, max_batches=1)
    b = estimate_fisher(m2, X2, y2, batch_size=BATCH, max_batches=1, chunk_size=5)
    for n in a.layers:
        assert _rel(a.weight[n], b.weight[n]) < 1e-6


def test_layer_order_geometry_and_shared_inputs_on_resnet8():
    model = build_model("resnet8")
    infos = trace_layers(model, torch.zeros(1, 3, 32, 32))
    names = [i.name for i in infos]
    # the shortcut runs before the block's first conv (forward order, not registration order)
    assert names.index("stage2.shortcut") < names.index("stage2.conv1")
    by = {i.name: i for i in infos}
    assert by["stage2.shortcut"].input_group == by["stage2.conv1"].input_group
    assert by["stage2.conv2"].input_group != by["stage2.conv1"].input_group
    assert by["conv1"].out_positions == 32 * 32 and by["stage2.conv1"].out_positions == 16 * 16
    assert by["stage2.conv1"].fan_in == 16 * 9 and by["fc"].fan_in == 64
    assert by["fc"].out_positions == 1 and by["fc"].kind == "linear"
    assert [n for n, _ in compressible_layers(model, torch.zeros(1, 3, 32, 32))] == names
    assert set(n for n, _ in compressible_layers(model)) == set(names)


def test_bad_inputs_are_reported():
    model, X, y = _digits("digits-mlp")
    with pytest.raises(ConfigError, match="method"):
        estimate_fisher(model, X, y, method="kfac")
    with pytest.raises(DataError, match="shape"):
        estimate_fisher(model, X, y[:-1])
    with pytest.raises(DataError, match="labels"):
        estimate_fisher(model, X, y + 10)
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        estimate_fisher(model, bad, y)
    with pytest.raises(UnsupportedLayerError):
        estimate_fisher(nn.Sequential(OrderedDict(relu=nn.ReLU())), X, y)
