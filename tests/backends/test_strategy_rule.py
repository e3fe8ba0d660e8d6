"""The strategy rule (``strategy: auto``): distributed arithmetic under a hardware budget at
io_parallel and reuse factor 1, Latency otherwise; an explicit strategy is always kept; the run
resolves it with the io type, so the search, the lowering and the fingerprints see one strategy."""

from __future__ import annotations

import pytest

from fitc.backends.hls.strategy_rule import STRATEGIES, choose_strategy
from fitc.config import RunConfig
from fitc.models import build_model, get_spec

DA = "distributed_arithmetic"


def _choose(requested="auto", hardware_budget=True, io_type="io_parallel", rf=1, backend="Vitis"):
    return choose_strategy(
        requested, hardware_budget=hardware_budget, io_type=io_type, reuse_factor=rf,
        backend=backend,
    )  # fmt: skip


def test_auto_is_da_only_under_a_hardware_budget_at_io_parallel_and_reuse_one():
    assert _choose().strategy == DA
    assert "hardware budget" in _choose().reason
    assert _choose(hardware_budget=False).strategy == "Latency"
    stream = _choose(io_type="io_stream")
    assert stream.strategy == "Latency" and "io_stream" in stream.reason
    assert _choose(rf=4).strategy == "Latency"
    assert _choose(backend="rtl", hardware_budget=False).strategy == DA


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_explicit_strategy_is_kept(strategy):
    for budget in (True, False):
        choice = _choose(strategy, hardware_budget=budget)
        assert choice.strategy == strategy and "as configured" in choice.reason
    assert choice.to_dict() == {"strategy": strategy, "strategy_reason": choice.reason}


def test_unknown_strategies_are_refused():
    with pytest.raises(ValueError, match="Fast"):
        _choose("Fast")


def test_run_resolves_auto_by_its_budget(monkeypatch):
    from fitc.pipeline import Run

    class Net:
        def compiled_fresh(self, seed):
            return build_model("digits-mlp", seed)

    monkeypatch.setattr(Run, "spec", property(lambda self: get_spec("digits-mlp")))
    for kwargs, expected in (
        ({"device": "xc7z020", "fraction": 0.1}, DA),
        ({"budget": ("lut=5000",)}, DA),
        ({"budget": ("size=1/16",)}, "Latency"),
        ({"device": "xc7z020", "fraction": 0.1, "reuse_factor": 2}, "Latency"),
        ({"device": "xc7z020", "fraction": 0.1, "strategy": "Latency"}, "Latency"),
        ({"budget": ("size=1/16",), "strategy": DA}, DA),
    ):
        cfg = RunConfig(model="digits-mlp", **kwargs)
        assert cfg.strategy == kwargs.get("strategy", "auto")
        run = Run(cfg, dir=None)  # type: ignore[arg-type]
        run.__dict__["_network_and_data"] = (Net(), None)
        assert run.hardware.strategy == expected, kwargs
        assert run.strategy_choice.strategy == expected
