"""The pieces of the search on their own, on a tiny hand-made state: the lattice (states, moves,
pruning masks), the scorer (Fisher lengths and distances under a hand-made Fisher), the budget
fill and the path search's scoring. Expectations are recomputed here from the definitions."""

from __future__ import annotations

import math

import pytest
import torch

from fitc.cost import SizeCost
from fitc.errors import ConfigError
from fitc.fisher import Fisher, LayerInfo
from fitc.search.fill import budget_fill, reverse_children
from fitc.search.paths import PathSearch
from fitc.search.scoring import Scorer, h
from fitc.search.state import Lattice
from fitc.space import SearchSpace, quantize_weight

# three dense layers: "a" reads the input, "b" and "c" read the same tensor (one quantizer)
NAMES = ("a", "b", "c")
SIZES = {"a": 6, "b": 4, "c": 4}
GROUPS = {"a": 0, "b": 1, "c": 1}
ACT_TRACE = {"a": 2.0, "b": 3.0, "c": 5.0}
ACT_RANGE = {"a": 1.0, "b": 2.0, "c": 0.5}


def _infos() -> list[LayerInfo]:
    return [
        LayerInfo(n, "linear", SIZES[n], SIZES[n] // 2, 1, (SIZES[n] // 2,), GROUPS[n])
        for n in NAMES
    ]


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {n: torch.randn((2, SIZES[n] // 2), generator=g) for n in NAMES}


def _fisher_weights(reverse: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    for k, n in enumerate(NAMES):
        f = torch.arange(1, SIZES[n] + 1, dtype=torch.float32) / (k + 1.5)
        out[n] = (f.flip(0) if reverse else f).reshape(2, SIZES[n] // 2)
    return out


def _fisher(reverse: bool = False) -> Fisher:
    fw = _fisher_weights(reverse)
    w = _weights()
    return Fisher(
        weight=fw,
        weight_trace={n: float(fw[n].sum()) for n in NAMES},
        act_trace=dict(ACT_TRACE),
        weight_range={n: float(w[n].max() - w[n].min()) for n in NAMES},
        act_range=dict(ACT_RANGE),
        n_samples=1,
        n_batches=1,
        converged=True,
        wall_time_s=0.0,
    )


SPACE = SearchSpace(weight_bits=(8, 4, 2), act_bits=(8, 4), prune_levels=(0.0, 0.5, 0.75))


def _lattice(space: SearchSpace = SPACE, fisher: Fisher | None = None) -> Lattice:
    w = _weights()
    lat = Lattice(_infos(), [w[n] for n in NAMES], space, SizeCost())
    f = fisher or _fisher()
    lat.set_fisher_weights([f.weight[n].flatten() for n in NAMES])
    return lat


def _flat(d: dict[str, torch.Tensor]) -> list[float]:
    return [float(x) for n in NAMES for x in d[n].flatten()]


def _mask_list(lat: Lattice, masks) -> list[bool]:
    return [bool(x) for li in range(3) for x in lat.mask_store[masks[li]]]


# ------------------------------------------------------------------------------------------
# Lattice


def test_start_and_most_compressed_states():
    lat = _lattice()
    w = _weights()
    start = lat.start()
    assert (start.wb, start.ab, start.pr) == ((0, 0, 0), (0, 0), (0,))
    assert [lp.name for lp in start.plans] == list(NAMES)
    assert all(lp.weight_bits == 8 and lp.act_bits == 8 for lp in start.plans)
    nnz = [int(torch.count_nonzero(quantize_weight(w[n], 8))) for n in NAMES]
    assert [lp.n_nonzero for lp in start.plans] == nnz
    assert start.cost == pytest.approx(sum(8 * k for k in nnz) / (14 * 32), rel=1e-15)
    low = lat.most_compressed()
    assert (low.wb, low.ab, low.pr) == ((2, 2, 2), (1, 1), (2,))
    assert all(lp.weight_bits == 2 and lp.act_bits == 4 for lp in low.plans)
    # 75 % of the 14 weights pruned globally: the 4 of highest importance F·w² are kept
    imp = [f * x * x for f, x in zip(_flat(_fisher_weights()), _flat(w), strict=True)]
    kept = sorted(range(14), key=lambda i: -imp[i])[: 14 - math.floor(0.75 * 14)]
    assert _mask_list(lat, low.masks) == [i in kept for i in range(14)]
    for li, n in enumerate(NAMES):  # the simulated weights are the masked, quantized weights
        mask = lat.mask_store[low.masks[li]].reshape(w[n].shape)
        assert torch.equal(lat.weights_of(low)[n], quantize_weight(w[n] * mask, 2))
        assert torch.equal(lat.masks_of(low)[n], mask)


def test_moves_in_a_fixed_order_with_what_they_change():
    lat = _lattice()
    start = lat.start()
    fwd = list(lat.forward_moves(start))
    assert [m.label for m in fwd] == [
        "a:w8->w4",
        "b:w8->w4",
        "c:w8->w4",
        "a:a8->a4",
        "b+c:a8->a4",
        "prune:0.5",
    ]
    assert list(lat.reverse_moves(start)) == []
    wa, act_bc, prune = fwd[0], fwd[4], fwd[5]
    tok = start.masks[0]
    ((*head, q0, q1),) = wa.weights
    assert head == [0, tok, 8, tok, 4] and wa.acts == () and wa.wb == (1, 0, 0)
    assert torch.equal(q0, quantize_weight(_weights()["a"].flatten(), 8))
    assert torch.equal(q1, quantize_weight(_weights()["a"].flatten(), 4))
    assert [li for li, _ in wa.plans] == [0] and wa.plans[0][1].weight_bits == 4
    assert act_bc.acts == ((1, 8, 4), (2, 8, 4)) and act_bc.weights == () and act_bc.ab == (0, 1)
    assert [lp.act_bits for _, lp in act_bc.plans] == [4, 4]
    assert prune.pr == (1,) and [t[0] for t in prune.weights] == sorted(
        {t[0] for t in prune.weights}
    )
    kid = lat.child(start, prune, "x")
    assert kid.parent is start and kid.move == "x" and (kid.g, kid.h, kid.f) == (0, 0, 0)
    assert kid.cost == pytest.approx(SizeCost()(kid.plans), rel=0) and kid.cost < start.cost
    assert sum(lp.n_nonzero for lp in kid.plans) <= 7

    low = lat.most_compressed()
    assert [m.label for m in lat.reverse_moves(low)] == [
        "a:w2->w4",
        "b:w2->w4",
        "c:w2->w4",
        "a:a4->a8",
        "b+c:a4->a8",
        "prune:0.75->0.5",
    ]
    assert list(lat.forward_moves(low)) == []
    per_layer = _lattice(
        SearchSpace(weight_bits=(8, 4), prune_levels=(0.0, 0.5), per_layer_prune=True)
    )
    labels = [m.label for m in per_layer.forward_moves(per_layer.start())]
    assert labels == [
        "a:w8->w4",
        "b:w8->w4",
        "c:w8->w4",
        "a:prune:0.5",
        "b:prune:0.5",
        "c:prune:0.5",
    ]


def test_pruning_ranks_by_importance_and_masks_only_shrink_or_grow():
    lat = _lattice()
    w = _flat(_weights())
    full = lat.full_masks
    half = lat.prune_masks(full, 0.5, None)
    imp = [f * x * x for f, x in zip(_flat(_fisher_weights()), w, strict=True)]
    kept = set(sorted(range(14), key=lambda i: -imp[i])[:7])
    assert _mask_list(lat, half) == [i in kept for i in range(14)]
    assert lat.prune_masks(full, 0.5, None) is half  # cached
    # a new Fisher ranks the other way round, but pruned weights stay pruned
    lat.set_fisher_weights([_fisher_weights(reverse=True)[n].flatten() for n in NAMES])
    imp2 = [f * x * x for f, x in zip(_flat(_fisher_weights(reverse=True)), w, strict=True)]
    more = lat.prune_masks(half, 0.75, None)
    kept2 = set(sorted(kept, key=lambda i: -imp2[i])[:4])
    assert _mask_list(lat, more) == [i in kept2 for i in range(14)]
    # unpruning back to 0.5 returns the pruned weights of highest (current) importance
    back = lat.unprune_masks(more, 0.5, None)
    pruned = [i for i in range(14) if i not in kept2]
    restored = set(sorted(pruned, key=lambda i: -imp2[i])[:3])
    assert _mask_list(lat, back) == [i in kept2 | restored for i in range(14)]
    assert lat.unprune_masks(back, 0.5, None) == back  # nothing more to restore
    # per layer: only that layer's mask changes
    b_half = lat.prune_masks(full, 0.5, 1)
    assert b_half[0] == full[0] and b_half[2] == full[2] and b_half[1] != full[1]
    b_imp = imp2[6:10]
    b_kept = set(sorted(range(4), key=lambda i: -b_imp[i])[:2])
    assert [bool(x) for x in lat.mask_store[b_half[1]]] == [i in b_kept for i in range(4)]


def test_importance_is_fisher_times_squared_weight():
    # layer x: F·w² keeps the 2nd weight, F·|w| and F alone the 1st; layer y: F·w² keeps the
    # 1st weight, |w| alone the 2nd
    w = [torch.tensor([0.5, 2.0]), torch.tensor([1.0, 1.5])]
    infos = [LayerInfo(n, "linear", 2, 2, 1, (2,), i) for i, n in enumerate("xy")]
    space = SearchSpace(weight_bits=(8,), prune_levels=(0.0, 0.5), per_layer_prune=True)
    lat = Lattice(infos, w, space, SizeCost())
    lat.set_fisher_weights([torch.tensor([4.0, 0.9]), torch.tensor([3.0, 1.0])])
    masks = lat.prune_masks(lat.prune_masks(lat.full_masks, 0.5, 0), 0.5, 1)
    assert [lat.mask_store[t].tolist() for t in masks] == [[False, True], [True, False]]
    glob = Lattice(infos, w, SearchSpace(weight_bits=(8,), prune_levels=(0.0, 0.75)), SizeCost())
    glob.set_fisher_weights([torch.tensor([4.0, 0.9]), torch.tensor([3.0, 1.0])])
    low = glob.most_compressed()  # 3 of 4 pruned: F·w² = 1, 3.6 | 3, 2.25
    assert [glob.mask_store[t].tolist() for t in low.masks] == [[False, True], [False, False]]
    back = glob.unprune_masks(low.masks, 0.5, None)  # the best pruned one returns: F·w² = 3
    assert [glob.mask_store[t].tolist() for t in back] == [[False, True], [True, False]]


# ------------------------------------------------------------------------------------------
# Scorer


def _D(lat: Lattice, node, fisher: Fisher) -> float:
    """Σ F·(θ − w)² + Σ Tr(F_a)·Δ_a²/12, from the definitions."""
    total = 0.0
    w = _weights()
    for li, n in enumerate(NAMES):
        mask = lat.mask_store[node.masks[li]].reshape(w[n].shape)
        q = quantize_weight(w[n] * mask, node.plans[li].weight_bits).double()
        total += float((fisher.weight[n].double() * (q - w[n].double()) ** 2).sum())
        d = ACT_RANGE[n] / (2.0 ** node.plans[li].act_bits - 1)
        total += ACT_TRACE[n] * d * d / 12
    return total


def test_scorer_on_a_hand_made_fisher():
    fisher = _fisher()
    lat = _lattice(fisher=fisher)
    sc = Scorer(lat, fisher)
    w = _weights()
    start = lat.start()
    wa, _, _, _, act_bc, prune = lat.forward_moves(start)
    f_a = fisher.weight["a"].double()
    want = float(
        (f_a * (quantize_weight(w["a"], 4).double() - quantize_weight(w["a"], 8)) ** 2).sum()
    )
    assert sc.length2(wa) == pytest.approx(want, rel=1e-12)
    noise = {
        (n, b): ACT_TRACE[n] * (ACT_RANGE[n] / (2.0**b - 1)) ** 2 / 12
        for n in NAMES
        for b in (8, 4)
    }
    act = sum(noise[(n, 4)] - noise[(n, 8)] for n in ("b", "c"))
    assert act > 0 and sc.length2(act_bc) == pytest.approx(act, rel=1e-12)
    # gain = D(old) − D(new): negative for compression moves
    for move in (wa, act_bc, prune):
        kid = lat.child(start, move, move.label)
        assert sc.gain(move) == pytest.approx(
            _D(lat, start, fisher) - _D(lat, kid, fisher), rel=1e-9
        )
        assert sc.gain(move) < 0
        # the reverse move from the child gains it back, and has the same length
        (back,) = [
            m
            for m in lat.reverse_moves(kid)
            if m.wb == start.wb and m.ab == start.ab and m.pr == start.pr
        ]
        assert sc.gain(back) == pytest.approx(-sc.gain(move), rel=1e-9)
        assert sc.length2(back) == pytest.approx(sc.length2(move), rel=1e-12)
    assert sc.predicted_fit(start, fisher) == pytest.approx(_D(lat, start, fisher), rel=1e-12)
    mass = sum(
        float((fisher.weight[n].double() * quantize_weight(w[n], 8).double() ** 2).sum())
        for n in NAMES
    )
    assert sc.fisher_mass(start) == pytest.approx(mass, rel=1e-12)
    # a refreshed Fisher rescales everything (distances are cached per Fisher)
    other = _fisher(reverse=True)
    before = sc.gain(wa)
    sc.set_fisher(other)
    assert sc.gain(wa) == pytest.approx(
        _D(lat, start, other) - _D(lat, lat.child(start, wa, ""), other), rel=1e-9
    )
    assert sc.gain(wa) != before
    broken = _fisher()
    del broken.weight["b"]
    with pytest.raises(ConfigError, match="no entry for layers"):
        sc.set_fisher(broken)


def test_heuristic():
    assert h(math.inf, 1.0, 2.0) == math.inf
    assert h(0.5, 1.0, 2.0) == 0.0
    assert h(3.0, 1.0, 2.0) == 4.0
    assert h(3.0, 1.0, 0.0) == 0.0


# ------------------------------------------------------------------------------------------
# Budget fill and path search


def _fill_key(gain: float, added: float) -> tuple[float, float]:
    return (math.inf, gain) if added <= 0.0 else (gain / added, gain)


@pytest.mark.parametrize("frac", [0.0, 0.3, 0.6, 1.0])
def test_budget_fill_takes_the_best_fitting_reverse_move_until_none_fits(frac):
    fisher = _fisher()
    lat = _lattice(fisher=fisher)
    sc = Scorer(lat, fisher)
    low, start = lat.most_compressed(), lat.start()
    limit = low.cost + frac * (start.cost - low.cost)
    node, taken = budget_fill(lat, sc, low, limit)
    path = []
    n = node
    while n is not low:
        path.append(n)
        n = n.parent
    path.reverse()
    assert len(path) == taken and all(p.move.startswith("refine:") for p in path)
    assert all(p.cost <= limit and p.h == 0.0 and p.f == p.g for p in path)
    prev = low
    for p in path:  # each step: the best key among the fitting moves, recomputed
        options = []
        for move in lat.reverse_moves(prev):
            kid = lat.child(prev, move, move.label)
            gain = _D(lat, prev, fisher) - _D(lat, kid, fisher)
            if gain > 0 and kid.cost <= limit:
                options.append((_fill_key(gain, kid.cost - prev.cost), kid))
        best = max(k for k, _ in options)
        chosen = [kid for k, kid in options if kid.key == p.key]
        assert chosen and _fill_key(
            _D(lat, prev, fisher) - _D(lat, p, fisher), p.cost - prev.cost
        ) == pytest.approx(best, rel=1e-9)
        assert p.g == pytest.approx(
            prev.g
            + math.sqrt(
                sc.length2(next(m for m in lat.reverse_moves(prev) if (m.wb, m.ab, m.pr) == p.key))
            ),
            rel=1e-12,
        )
        prev = p
    # nothing fits any more
    assert not [k for k, gain in reverse_children(lat, sc, node) if gain > 0 and k.cost <= limit]
    # activation bits cost nothing under a size budget: they come back first
    if taken:
        assert path[0].move.startswith("refine:") and ":a4->a8" in path[0].move
    if frac == 1.0:
        assert node.key == start.key and node.cost == start.cost


def test_path_search_scores_children_and_greedy_stops_at_the_budget():
    fisher = _fisher()
    lat = _lattice(fisher=fisher)
    sc = Scorer(lat, fisher)
    start = lat.start()
    limit = start.cost / 3
    ps = PathSearch(lat, sc, limit, 0.5, start.cost)
    scale = math.sqrt(sc.fisher_mass(start)) / start.cost
    kids = ps.children(start)
    assert [k.move for k in kids] == [m.label for m in lat.forward_moves(start)]
    for k, m in zip(kids, lat.forward_moves(start), strict=True):
        assert k.g == pytest.approx(math.sqrt(sc.length2(m)), rel=1e-12)
        assert k.h == pytest.approx(max(k.cost - limit, 0.0) * scale, rel=1e-12)
        assert k.f == pytest.approx(k.g + 0.5 * k.h, rel=1e-12)
    node, expansions = ps.greedy(start)
    assert node.cost <= limit < node.parent.cost
    steps = []
    n = node
    while n.parent is not None:
        steps.append(n)
        n = n.parent
    assert len(steps) == expansions
    for step in steps:  # each step: the least f among the cheaper children of its parent
        sibs = [k for k in ps.children(step.parent) if k.cost < step.parent.cost]
        assert step.f == min(k.f for k in sibs)
    astar, _ = ps.astar(start, max_expansions=500)
    assert astar.cost <= limit
