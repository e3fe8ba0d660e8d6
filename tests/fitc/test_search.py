"""FIT, the sensitivity table and the path search: budgets met (recomputed independently),
monotone in the limit, deterministic, infeasible budgets reported up front."""

from __future__ import annotations

import functools
import math
from collections import OrderedDict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fitc.artifacts import Budget, CompressionPlan, LayerPlan
from fitc.cost import BopsCost, MaxRatioCost, SizeCost
from fitc.errors import BudgetInfeasibleError, ConfigError
from fitc.fisher import Fisher, estimate_fisher
from fitc.rundir import load_torch, save_torch
from fitc.search import fit_value, search_plan, sensitivity_table
from fitc.space import SearchSpace, quantize_weight

SHAPE = (1, 6, 6)


pytestmark = pytest.mark.usefixtures("one_thread")


class _Block(nn.Module):
    """conv → relu → two layers reading the same tensor (a shortcut-like fork) → add → fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.left = nn.Linear(64, 24)
        self.right = nn.Linear(64, 24)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        z = self.flat(self.relu(self.conv(x)))
        return self.head(self.relu2(self.left(z) + self.right(z)))


@functools.cache
def _setup() -> tuple[nn.Module, Fisher, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = _Block()
    X = torch.randn(160, *SHAPE)
    y = (X.flatten(1)[:, :5].argmax(1) + (X.mean((1, 2, 3)) > 0).long()) % 5
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    fisher = estimate_fisher(model, X, y, batch_size=40, min_batches=4, max_batches=4)
    return model, fisher, X, y


@functools.cache
def _floor_and_start(kind: str) -> tuple[float, float]:
    model, fisher, *_ = _setup()
    start = search_plan(model, fisher, Budget(kind, 1.0)).plan.achieved_cost
    try:
        search_plan(model, fisher, Budget(kind, 1e-9))
    except BudgetInfeasibleError as e:
        return e.smallest_reachable, start
    raise AssertionError("a budget of 1e-9 must be infeasible")


def _independent_cost(kind: str, layers) -> float:
    if kind == "size":
        return sum(lp.n_nonzero * lp.weight_bits for lp in layers) / sum(
            32 * lp.n_weights for lp in layers
        )
    num = den = 0.0
    for lp in layers:
        lg = math.log2(lp.fan_in)
        p = lp.n_nonzero / lp.n_weights
        ba, bw = lp.act_bits, lp.weight_bits
        num += lp.n_weights * lp.out_positions * (p * ba * bw + ba + bw + lg)
        den += lp.n_weights * lp.out_positions * (32 * 32 + 64 + lg)
    return num / den


def _check_result(res, model, kind: str, limit: float) -> None:
    plan = res.plan
    modules = dict(model.named_modules())
    assert [lp.name for lp in plan.layers] == ["conv", "left", "right", "head"]
    for lp in plan.layers:
        w = modules[lp.name].weight.detach()
        mask = res.masks[lp.name]
        assert mask.dtype == torch.bool and mask.shape == w.shape
        q = quantize_weight(w * mask, lp.weight_bits)
        assert torch.equal(res.weights[lp.name], q)
        assert lp.n_nonzero == int(torch.count_nonzero(q))
        assert lp.n_weights == w.numel()
    assert plan.layer("conv").out_positions == 16 and plan.layer("conv").fan_in == 9
    assert plan.layer("left").act_bits == plan.layer("right").act_bits  # same input tensor
    cost = _independent_cost(kind, plan.layers)
    assert cost == pytest.approx(plan.achieved_cost, rel=1e-12)
    assert cost <= limit
    assert plan.path[0].move == "start" and plan.path[-1].cost == plan.achieved_cost
    assert all(a.g <= b.g for a, b in zip(plan.path, plan.path[1:], strict=False))


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["size", "bops"]),
    u=st.floats(0.0, 1.0),
    shrink=st.floats(0.3, 0.95),
)
def test_random_budgets_are_met_monotone_and_deterministic(kind, u, shrink):
    model, fisher, *_ = _setup()
    floor, start = _floor_and_start(kind)
    # log-uniform between the smallest reachable cost and just below the uncompressed cost
    limit = math.exp(math.log(floor) + u * (math.log(start * 0.999) - math.log(floor)))
    limit = min(max(limit, floor), start * 0.999)
    res = search_plan(model, fisher, Budget(kind, limit))
    _check_result(res, model, kind, limit)
    tighter_limit = max(limit * shrink, floor)
    tighter = search_plan(model, fisher, Budget(kind, tighter_limit))
    _check_result(tighter, model, kind, tighter_limit)
    assert tighter.plan.achieved_cost <= res.plan.achieved_cost
    again = search_plan(model, fisher, Budget(kind, limit), seed=0)
    assert again.plan.layers == res.plan.layers and again.plan.path == res.plan.path
    assert all(torch.equal(again.masks[n], res.masks[n]) for n in res.masks)


def test_infeasible_budget_is_reported_up_front():
    model, fisher, *_ = _setup()
    floor, _ = _floor_and_start("size")
    with pytest.raises(BudgetInfeasibleError) as e:
        search_plan(model, fisher, Budget("size", floor * 0.5))
    assert e.value.smallest_reachable == pytest.approx(floor)
    assert "unreachable" in str(e.value) and "size=" in str(e.value)
    # exactly the floor is reachable
    res = search_plan(model, fisher, Budget("size", floor))
    assert res.plan.achieved_cost <= floor
    # a narrower space has a higher floor
    narrow = SearchSpace(weight_bits=(8, 6), prune_levels=(0.0, 0.5))
    with pytest.raises(BudgetInfeasibleError) as e2:
        search_plan(model, fisher, Budget("size", 0.05), narrow)
    assert e2.value.smallest_reachable > 0.05


def test_uncompressed_state_meeting_the_budget_is_returned():
    model, fisher, *_ = _setup()
    res = search_plan(model, fisher, Budget("size", 0.5), model_name="block")
    assert res.expansions == 0 and len(res.plan.path) == 1
    assert all(lp.weight_bits == 8 and lp.act_bits == 8 for lp in res.plan.layers)
    assert all(bool(m.all()) for m in res.masks.values())
    assert res.plan.model == "block" and res.plan.predicted_fit > 0


def test_astar_without_heuristic_finds_a_shortest_path():
    model, fisher, *_ = _setup()
    space = SearchSpace(weight_bits=(8, 6, 4, 2), prune_levels=(0.0, 0.3, 0.6, 0.9))
    budget = Budget("size", 0.06)
    greedy = search_plan(model, fisher, budget, space, lam=0.0)
    astar = search_plan(model, fisher, budget, space, lam=0.0, algorithm="astar")
    for res in (greedy, astar):
        _check_result(res, model, "size", budget.limit)
    assert astar.plan.path[-1].g <= greedy.plan.path[-1].g + 1e-12
    default = search_plan(model, fisher, budget, space, algorithm="astar")
    _check_result(default, model, "size", budget.limit)


def test_per_layer_pruning_and_activation_bits():
    model, fisher, *_ = _setup()
    space = SearchSpace(act_bits=(8, 6, 4), per_layer_prune=True)
    res = search_plan(model, fisher, Budget("bops", 0.012), space)
    _check_result(res, model, "bops", 0.012)
    moves = [s.move for s in res.plan.path]
    assert any(":a" in m for m in moves)
    assert any(
        m.startswith(("conv:prune", "left:prune", "right:prune", "head:prune")) for m in moves
    )
    assert any("left+right:a" in m for m in moves) or (
        res.plan.layer("left").act_bits == res.plan.layer("right").act_bits == 8
    )
    # under a size budget activation moves never pay: they are not taken
    size = search_plan(model, fisher, Budget("size", 0.05), space)
    assert all(":a" not in s.move for s in size.plan.path)


def test_fisher_refresh_along_the_path():
    model, fisher, X, y = _setup()
    budget = Budget("size", 0.03)
    res = search_plan(
        model, fisher, budget, refresh_every=3, refresh_data=(X, y), refresh_batch_size=40
    )
    _check_result(res, model, "size", budget.limit)
    assert res.refreshes >= 1 and res.fisher is not fisher
    assert res.plan.fisher_time_s >= fisher.wall_time_s
    again = search_plan(
        model, fisher, budget, refresh_every=3, refresh_data=(X, y), refresh_batch_size=40
    )
    assert again.plan.layers == res.plan.layers
    # the model itself is never modified
    fresh = estimate_fisher(model, X, y, batch_size=40, min_batches=4, max_batches=4)
    assert torch.equal(fresh.weight["conv"], fisher.weight["conv"])


def test_fisher_refresh_reuses_the_same_samples():
    """Every refresh estimates on the same seeded batches: at the same weights two refreshes agree
    exactly, and a refresh equals an estimate on those batches at the state's simulated
    weights."""
    from fitc.fisher import trace_layers
    from fitc.search.core import _Refresher, _use_fisher
    from fitc.search.scoring import Scorer
    from fitc.search.state import Lattice

    model, fisher, X, y = _setup()
    infos = trace_layers(model, torch.zeros((1, *SHAPE)))
    modules = dict(model.named_modules())
    lattice = Lattice(infos, [modules[i.name].weight for i in infos], SearchSpace(), SizeCost())
    scorer = Scorer(lattice, fisher)
    _use_fisher(lattice, scorer, fisher)
    node = lattice.start()
    refresh = _Refresher(model, lattice, scorer, (X, y), every=1, batches=3, batch_size=40, seed=7)
    refresh.maybe(node, 1)
    first = scorer.fisher
    refresh.maybe(node, 2)
    second = scorer.fisher
    assert refresh.count == 2 and first is not second
    ref = estimate_fisher(
        model, X, y, batch_size=40, max_batches=3, min_batches=3, tol=0.0, seed=7,
        weights=lattice.weights_of(node),
    )  # fmt: skip
    for name in fisher.layers:
        assert torch.equal(first.weight[name], second.weight[name])
        assert torch.equal(first.weight[name], ref.weight[name])
        assert first.act_range[name] == fisher.act_range[name]  # the reference ranges are kept
    assert first.n_samples == 120

    # search_plan's default: as many samples as the initial Fisher (160 here, 4 batches of 40),
    # the same at every refresh
    res = search_plan(
        model, fisher, Budget("size", 0.03), refresh_every=3, refresh_data=(X, y),
        refresh_batch_size=40,
    )  # fmt: skip
    assert res.refreshes >= 1 and res.fisher.n_samples == fisher.n_samples == 160
    again = search_plan(
        model, fisher, Budget("size", 0.03), refresh_every=3, refresh_data=(X, y),
        refresh_batch_size=40,
    )  # fmt: skip
    assert again.plan.layers == res.plan.layers and again.plan.path == res.plan.path
    fewer = search_plan(
        model, fisher, Budget("size", 0.03), refresh_every=3, refresh_data=(X, y),
        refresh_batch_size=40, refresh_batches=1,
    )  # fmt: skip
    assert fewer.fisher.n_samples == 40


class _FakeLut:
    """A stand-in hardware cost: 'LUTs' = Σ non-zeros × weight bits × act bits / 8."""

    kind = "lut"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, layers) -> float:
        self.calls += 1
        assert all(isinstance(lp, LayerPlan) for lp in layers)
        return sum(lp.n_nonzero * lp.weight_bits * lp.act_bits / 8 for lp in layers)


def test_pluggable_cost_model():
    model, fisher, *_ = _setup()
    lut = _FakeLut()
    start = lut(search_plan(model, fisher, Budget("size", 1.0)).plan.layers)
    res = search_plan(model, fisher, Budget("lut", start / 5), cost=lut)
    assert lut(res.plan.layers) <= start / 5 and res.plan.achieved_cost <= start / 5
    assert lut.calls > 10
    with pytest.raises(ConfigError, match="kind"):
        search_plan(model, fisher, Budget("size", 0.1), cost=lut)
    with pytest.raises(ConfigError, match="cost="):
        search_plan(model, fisher, Budget("dsp", 3))
    # the plan's cost is the pluggable model's value of its layers, recomputed by hand
    hand = sum(lp.n_nonzero * lp.weight_bits * lp.act_bits / 8 for lp in res.plan.layers)
    assert res.plan.achieved_cost == pytest.approx(hand, rel=1e-12)
    # passing the built-in cost model of a kind is the same as passing none
    default = search_plan(model, fisher, Budget("bops", 0.05))
    explicit = search_plan(model, fisher, Budget("bops", 0.05), cost=BopsCost())
    assert explicit.plan.layers == default.plan.layers
    assert explicit.plan.achieved_cost == pytest.approx(
        _independent_cost("bops", explicit.plan.layers), rel=1e-12
    )


def test_combined_budgets_and_infinite_costs():
    model, fisher, *_ = _setup()
    combined = MaxRatioCost([(SizeCost(), 0.05), (BopsCost(), 0.02)])
    res = search_plan(model, fisher, Budget("combined", 1.0), cost=combined)
    assert SizeCost()(res.plan.layers) <= 0.05 and BopsCost()(res.plan.layers) <= 0.02
    assert res.plan.achieved_cost == pytest.approx(max(combined.ratios(res.plan.layers).values()))

    class _WideMultipliers:
        """A 'DSP' count under a zero limit: any weight wider than 4 bits is infinitely over."""

        kind = "dsp"

        def __call__(self, layers) -> float:
            return float(sum(lp.n_nonzero for lp in layers if lp.weight_bits > 4))

    ratio = MaxRatioCost([(_WideMultipliers(), 0.0)])
    assert math.isinf(ratio(search_plan(model, fisher, Budget("size", 1.0)).plan.layers))
    res = search_plan(model, fisher, Budget("combined", 1.0), cost=ratio)
    assert all(lp.weight_bits <= 4 or lp.n_nonzero == 0 for lp in res.plan.layers)
    assert not any(math.isnan(x) for s in res.plan.path for x in (s.g, s.h, s.f))


def test_plan_artifacts_roundtrip(tmp_path):
    model, fisher, *_ = _setup()
    res = search_plan(model, fisher, Budget.parse("size=1/16"), model_name="block")
    plan = res.plan
    assert CompressionPlan.from_dict(plan.to_dict()) == plan
    d = plan.to_dict()
    assert d["budget"] == {"kind": "size", "limit": 0.0625}
    assert {"g", "h", "f", "cost", "move"} <= set(d["path"][1])
    assert all("sparsity" in lp for lp in d["layers"])
    save_torch(tmp_path / "masks.pt", res.masks)
    back = load_torch(tmp_path / "masks.pt")
    assert all(torch.equal(back[n], res.masks[n]) for n in res.masks)


def test_fit_value_and_sensitivity_table():
    _, fisher, *_ = _setup()
    wb = {"conv": 4, "head": 2}
    ab = {"left": 6}
    want = (
        fisher.weight_trace["conv"] * (fisher.weight_range["conv"] / 15) ** 2
        + fisher.weight_trace["head"] * (fisher.weight_range["head"] / 3) ** 2
        + fisher.act_trace["left"] * (fisher.act_range["left"] / 63) ** 2
    )
    assert fit_value(fisher, wb, ab) == pytest.approx(want, rel=1e-12)
    assert fit_value(fisher, {}, {}) == 0.0
    assert fit_value(fisher, {"conv": 2}, {}) > fit_value(fisher, {"conv": 3}, {})
    with pytest.raises(ConfigError, match="unknown layers"):
        fit_value(fisher, {"nope": 4}, {})
    rows = sensitivity_table(fisher)
    assert [r["name"] for r in rows] != [] and len(rows) == 4
    assert all(a["sensitivity"] >= b["sensitivity"] for a, b in zip(rows, rows[1:], strict=False))
    assert {"fit_w8", "fit_w5", "fit_w2", "fit_a8", "weight_trace", "act_trace"} <= set(rows[0])
    r = rows[0]
    assert r["sensitivity"] == pytest.approx(r["fit_w2"] + r["fit_a8"])


def test_bad_arguments():
    model, fisher, *_ = _setup()
    with pytest.raises(ConfigError, match="algorithm"):
        search_plan(model, fisher, Budget("size", 0.1), algorithm="beam")
    other = nn.Sequential(OrderedDict(flat=nn.Flatten(), fc=nn.Linear(36, 5)))
    with pytest.raises(ConfigError, match="Fisher"):
        search_plan(other, fisher, Budget("size", 0.1))


# ------------------------------------------------------------------------------------------
# Budget fill (refine=True, the default)


def _distance(res, fisher: Fisher) -> float:
    """Σ F·(θ − w)² + Σ Tr(F_a)·Δ_a²/12 recomputed from the result's weights (the metric the
    refinement lowers; equals the plan's predicted_fit when the Fisher was not refreshed)."""
    model = dict(_setup()[0].named_modules())
    total = 0.0
    for lp in res.plan.layers:
        w = model[lp.name].weight.detach().double()
        f = fisher.weight[lp.name].double()
        total += float(torch.sum(f * (res.weights[lp.name].double() - w) ** 2))
        d = fisher.act_range[lp.name] / (2.0**lp.act_bits - 1)
        total += fisher.act_trace[lp.name] * d * d / 12.0
    return total


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["size", "bops"]),
    u=st.floats(0.0, 1.0),
    per_layer=st.booleans(),
    v=st.floats(0.0, 1.0),
)
def test_budget_fill_meets_budget_lowers_distance_and_is_stable_in_its_slack(kind, u, per_layer, v):
    model, fisher, *_ = _setup()
    floor, start = _floor_and_start(kind)
    limit = math.exp(math.log(floor) + u * (math.log(start * 0.999) - math.log(floor)))
    limit = min(max(limit, floor), start * 0.999)
    space = SearchSpace(act_bits=(8, 6, 4), per_layer_prune=True) if per_layer else SearchSpace()
    try:
        raw = search_plan(model, fisher, Budget(kind, limit), space, refine=False)
    except BudgetInfeasibleError:  # the per-layer space's floor is above the default one's
        return
    res = search_plan(model, fisher, Budget(kind, limit), space)
    _check_result(res, model, kind, limit)
    _check_result(raw, model, kind, limit)
    n = len(raw.plan.path)
    # the path search's moves first, then only budget-fill moves; refine=False takes none
    assert res.plan.path[:n] == raw.plan.path and raw.refinements == 0
    assert all(s.move.startswith("refine:") for s in res.plan.path[n:])
    assert all(not s.move.startswith("refine:") for s in raw.plan.path)
    assert res.refinements == len(res.plan.path) - n and res.expansions == raw.expansions
    assert all(s.h == 0.0 and s.f == s.g and s.cost <= limit for s in res.plan.path[n:])
    assert raw.plan.achieved_cost <= res.plan.achieved_cost <= limit
    # every fill move lowers the Fisher distance to the uncompressed model
    assert res.plan.predicted_fit <= raw.plan.predicted_fit
    if res.refinements:
        assert res.plan.predicted_fit < raw.plan.predicted_fit
    assert res.plan.predicted_fit == pytest.approx(_distance(res, fisher), rel=1e-9)
    # reverse moves only: bits never lower, masks only grow
    for a, b in zip(raw.plan.layers, res.plan.layers, strict=True):
        assert b.weight_bits >= a.weight_bits and b.act_bits >= a.act_bits
        assert bool((res.masks[a.name] | ~raw.masks[a.name]).all())
    # monotone in the limit by design: any limit in [refined cost, limit] gives the same plan,
    # and a tighter one gives a plan no more costly
    mid = res.plan.achieved_cost + v * (limit - res.plan.achieved_cost)
    same = search_plan(model, fisher, Budget(kind, mid), space)
    assert same.plan.layers == res.plan.layers
    # the same moves (h and f along the path depend on the limit)
    assert [(p.move, p.g, p.cost) for p in same.plan.path] == [
        (p.move, p.g, p.cost) for p in res.plan.path
    ]
    assert all(torch.equal(same.masks[k], res.masks[k]) for k in res.masks)


def test_budget_fill_uses_every_kind_of_reverse_move():
    model, fisher, *_ = _setup()
    floor, start = _floor_and_start("bops")
    moves: set[str] = set()
    space = SearchSpace(act_bits=(8, 6, 4), per_layer_prune=True)
    for sp in (SearchSpace(), space, SearchSpace(act_bits=(8, 6, 4, 3))):
        for i in range(12):
            limit = math.exp(math.log(floor) + (i + 0.5) / 12 * (math.log(start) - math.log(floor)))
            for kind in ("size", "bops"):
                try:
                    res = search_plan(model, fisher, Budget(kind, limit), sp)
                except BudgetInfeasibleError:
                    continue
                _check_result(res, model, kind, limit)
                for s in res.plan.path:
                    if s.move.startswith("refine:"):
                        m = s.move.split(":")
                        moves.add("prune" if "prune" in m else m[-1][0])
    assert moves == {"w", "prune", "a"}


def test_budget_fill_fills_the_slack_of_a_coarse_ladder():
    model, fisher, *_ = _setup()
    space = SearchSpace(weight_bits=(8, 4, 2), prune_levels=(0.0, 0.5, 0.9))
    budget = Budget("size", 0.05)
    raw = search_plan(model, fisher, budget, space, refine=False)
    res = search_plan(model, fisher, budget, space)
    _check_result(res, model, "size", budget.limit)
    assert res.refinements >= 1 and res.plan.achieved_cost > raw.plan.achieved_cost
    assert res.plan.path[-1].move.startswith("refine:")
    assert res.plan.predicted_fit < raw.plan.predicted_fit
    # A* gets the same treatment
    astar = search_plan(model, fisher, budget, space, algorithm="astar")
    _check_result(astar, model, "size", budget.limit)
    assert (
        astar.plan.achieved_cost
        >= search_plan(
            model, fisher, budget, space, algorithm="astar", refine=False
        ).plan.achieved_cost
    )


def test_budget_fill_with_a_refreshed_fisher():
    model, fisher, X, y = _setup()
    budget = Budget("size", 0.03)
    kw = dict(refresh_every=3, refresh_data=(X, y), refresh_batch_size=40)
    raw = search_plan(model, fisher, budget, refine=False, **kw)
    res = search_plan(model, fisher, budget, **kw)
    _check_result(res, model, "size", budget.limit)
    assert res.plan.path[: len(raw.plan.path)] == raw.plan.path
    assert raw.plan.achieved_cost <= res.plan.achieved_cost <= budget.limit
    # the fill lowers the distance in the search's (last, refreshed) Fisher
    assert _distance(res, res.fisher) <= _distance(raw, res.fisher)


def test_default_refresh_is_as_large_as_the_first_estimate_up_to_a_compute_cap():
    """Small networks refresh on as many samples as the first Fisher used; a network whose
    refresh would cost more than REFRESH_MACS of forward passes refreshes on fewer batches (at
    least 2), so a large CNN's search is not dominated by refreshes."""
    from fitc.fisher import LayerInfo
    from fitc.search.core import REFRESH_MACS, default_refresh_batches

    def layer(n_weights, positions):
        return LayerInfo("l", "conv2d", n_weights, 9, positions, (1, 1, 1), 0)

    small = [layer(4096, 1), layer(2048, 1)]  # an MLP: 6 k MACs per sample
    assert default_refresh_batches(1078, small, 128) == 9  # ceil(1078 / 128): every sample
    big = [layer(36_864, 64), layer(18_432, 64), layer(9_216, 256)]  # 5.9 M MACs per sample
    macs = 36_864 * 64 + 18_432 * 64 + 9_216 * 256
    n = default_refresh_batches(1800, big, 128)
    assert n == max(2, REFRESH_MACS // (macs * 128)) < math.ceil(1800 / 128)
    assert n * 128 * macs <= REFRESH_MACS
    huge = [layer(10**8, 100)]
    assert default_refresh_batches(1800, huge, 128) == 2  # never fewer than 2 batches
