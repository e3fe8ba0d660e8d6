"""Activation bits in the search under hardware budgets: the default ladder searches them (the
network input's quantizer included) when a budget's cost depends on them, and under a LUT budget
the search lowers them instead of only driving the weights down."""

from __future__ import annotations

import functools

import pytest
import torch

from fitc.artifacts import Budget, HardwareConfig
from fitc.backends.resources import AnalyticalModel, LutCost
from fitc.cost import MaxRatioCost, SizeCost
from fitc.fisher import estimate_fisher
from fitc.models import build_model, get_spec, load_data, train_float
from fitc.search import search_plan
from fitc.space import DEFAULT_ACT_BITS, SEARCHED_ACT_BITS, SearchSpace, default_act_bits

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _trained():
    spec = get_spec("digits-mlp")
    data = load_data(spec, seed=0)
    model = build_model("digits-mlp", seed=0)
    train_float(model, data, epochs=8, seed=0, progress=False, num_threads=1)
    X, y = torch.from_numpy(data.X_train), torch.from_numpy(data.y_train)
    fisher = estimate_fisher(model, X, y, max_batches=4, seed=0)
    return model.eval(), fisher, X, y


def test_default_act_bits_follow_the_budget_kinds():
    assert default_act_bits(["size"]) == DEFAULT_ACT_BITS == (8,)
    assert default_act_bits(["bops"]) == DEFAULT_ACT_BITS
    for kind in ("lut", "ff", "dsp", "bram", "latency"):
        assert default_act_bits([kind]) == SEARCHED_ACT_BITS
    assert default_act_bits(["size", "lut"]) == SEARCHED_ACT_BITS
    assert SEARCHED_ACT_BITS[0] == 8 and SEARCHED_ACT_BITS[-1] == 2
    assert SearchSpace(act_bits=SEARCHED_ACT_BITS).act_bits == SEARCHED_ACT_BITS


def test_activation_bits_are_lowered_under_a_lut_budget():
    model, fisher, X, y = _trained()
    hw = HardwareConfig()
    lut = LutCost(AnalyticalModel(), hw, "lut")
    dense = search_plan(model, fisher, Budget("size", 1.0)).plan.layers
    limit = 0.1 * lut(dense)
    budget = Budget("lut", limit)
    fixed = search_plan(model, fisher, budget, SearchSpace(), cost=lut)
    searched = search_plan(
        model,
        fisher,
        budget,
        SearchSpace(act_bits=default_act_bits(["lut"])),
        cost=lut,
        refresh_data=(X, y),
    )
    for res in (fixed, searched):
        assert res.plan.achieved_cost <= limit
        assert lut(res.plan.layers) == pytest.approx(res.plan.achieved_cost)
    assert all(lp.act_bits == 8 for lp in fixed.plan.layers)
    acts = [lp.act_bits for lp in searched.plan.layers]
    assert min(acts) < 8 and all(a in SEARCHED_ACT_BITS for a in acts)
    # the network input's quantizer (fc1 reads the input) is one of the searched ladders
    moves = [s.move for s in searched.plan.path]
    assert any(m.startswith("fc1:a") for m in moves), moves
    # lowering activations buys back weights: more non-zeros or wider weights than 8-bit-only
    kept = lambda r: sum(lp.n_nonzero * lp.weight_bits for lp in r.plan.layers)  # noqa: E731
    assert kept(searched) > kept(fixed)


def test_a_lut_budget_alone_never_buys_a_dead_network():
    """The models take out the logic synthesis removes, so a network pruned or quantized to no
    non-zero weight in some layer costs ~0 LUT. The search never moves there: a LUT budget too
    small for a live network is refused (the search ends above it), and a reachable one gives a
    plan with non-zero weights in every layer."""
    from fitc.errors import BudgetInfeasibleError

    model, fisher, X, y = _trained()
    hw = HardwareConfig()
    lut = LutCost(AnalyticalModel(), hw, "lut")
    with pytest.raises(BudgetInfeasibleError, match="was not reached"):
        search_plan(model, fisher, Budget("lut", 10.0), cost=lut)
    dense = search_plan(model, fisher, Budget("size", 1.0)).plan.layers
    res = search_plan(model, fisher, Budget("lut", 0.02 * lut(dense)), cost=lut)
    assert all(lp.n_nonzero > 0 for lp in res.plan.layers)


def test_activation_moves_never_pay_under_a_size_budget_with_a_hardware_one():
    """A combined size + LUT budget: activation moves are taken only for the LUT part, and the
    plan meets both."""
    model, fisher, *_ = _trained()
    hw = HardwareConfig()
    lut = LutCost(AnalyticalModel(), hw, "lut")
    dense = search_plan(model, fisher, Budget("size", 1.0)).plan.layers
    cost = MaxRatioCost([(lut, 0.2 * lut(dense)), (SizeCost(), 1 / 16)])
    res = search_plan(
        model,
        fisher,
        Budget("combined", 1.0),
        SearchSpace(act_bits=default_act_bits(["lut", "size"])),
        cost=cost,
    )
    assert res.plan.achieved_cost <= 1.0
    assert lut(res.plan.layers) <= 0.2 * lut(dense) and SizeCost()(res.plan.layers) <= 1 / 16


def test_the_pipeline_searches_activation_bits_by_the_budget():
    """RunConfig.act_bits None (the default): searched under a device (LUT, DSP, …) budget, fixed
    at 8 under a size budget; a ladder given explicitly is used as given."""
    from fitc.config import RunConfig
    from fitc.pipeline import Run, act_ladder

    assert RunConfig().act_bits is None
    size = Run(RunConfig(budget=("size=1/32",)), dir=None)
    device = Run(RunConfig(device="xc7z020", fraction=0.1), dir=None)
    given = Run(RunConfig(device="xc7z020", fraction=0.1, act_bits=(8,)), dir=None)
    assert act_ladder(size) == DEFAULT_ACT_BITS
    assert act_ladder(device) == SEARCHED_ACT_BITS
    assert act_ladder(given) == (8,)


def test_the_closed_loop_searches_below_its_hardware_limits():
    """The loop's search leaves headroom under hardware limits (the calibrated fast model still
    misses a new design's accurate LUT by a few %), never under size or BOPs ones."""
    from fitc.pipeline import LOOP_HEADROOM, _with_headroom

    assert 0.9 < LOOP_HEADROOM < 1.0
    limits = _with_headroom({"lut": 5320.0, "dsp": 22.0, "size": 1 / 32})
    assert limits == {"lut": 5320.0 * LOOP_HEADROOM, "dsp": 22.0 * LOOP_HEADROOM, "size": 1 / 32}
