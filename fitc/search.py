"""FITCompress: FIT and path planning through the compression space under a budget.

Contract:
- :func:`fit_value` is FIT (Zandonati et al.): ``Σ_l Tr(F_w,l)·Δ_w,l² + Σ_l Tr(F_a,l)·Δ_a,l²``
  with ``Δ = range / (2^b − 1)``; a layer missing from a bit mapping contributes nothing (float).
  :func:`sensitivity_table` lists the per-layer terms, most sensitive first.
- :func:`search_plan` walks the lattice of :class:`~fitc.space.SearchSpace` from the uncompressed
  state (highest bits, no pruning). A move lowers one layer's weight bits one rung, one input
  group's activation bits one rung, or the pruning level one rung (global by default: the
  lowest-importance weights ``F·w²`` of the whole model; pruned weights stay pruned). A move's
  length is its Fisher length ``sqrt(Σ F·δθ²)`` (weights: the exact change of the simulated
  weights, :func:`~fitc.space.quantize_weight` of the masked float weights; activations: the
  uniform-noise expectation ``Tr(F_a)·(Δ_new² − Δ_old²)/12``). ``g`` sums lengths along the path;
  ``h = max(cost − limit, 0) / cost_start · sqrt(Σ F·θ²)`` (the reference's remaining-distance
  estimate: the fraction of the cost still to remove times the Fisher length of removing every
  weight, ``θ`` the weights of the state being expanded); ``f = g + lam·h``.
  ``algorithm="greedy"`` (default) takes the child with least ``f`` until the budget is met;
  ``"astar"`` keeps an open set and returns the first state popped that meets the budget (after
  ``max_expansions`` it finishes greedily). Moves that do not lower the cost are only taken when
  no move does. Only the changed layers' terms are recomputed for a candidate move.
- With ``refresh_data`` the Fisher is re-estimated at the current state's weights every
  ``refresh_every`` expansions on ``refresh_batches`` seeded batches.
- Budget fill (``refine=True``, the default): from the state the path search returns, reverse
  moves are taken while one fits the budget: raise one layer's weight bits one rung, lower the
  pruning level one rung (global, or one layer's with ``per_layer_prune``: the pruned weights of
  highest importance ``F·w²`` come back until the lower level's count is reached) or raise one
  input group's activation bits one rung. Among the moves whose cost stays ≤ the limit and that
  lower the distance to the uncompressed model ``D = Σ F·(θ − w)² + Σ Tr(F_a)·Δ_a²/12`` (the
  search's current Fisher; only the changed layers are rescored), the one with the largest
  decrease of ``D`` per unit of cost added is taken (moves adding no cost first, by decrease;
  ties go to the first in a fixed order). Refinement moves are recorded in the path as
  ``refine:<move>`` with ``h = 0``; ``g`` keeps summing Fisher lengths. ``refine=False`` gives
  the path search's state unchanged.
- An unreachable budget raises :class:`~fitc.errors.BudgetInfeasibleError` up front, from the
  cost of the most compressed state.
- The result is deterministic for a given model, Fisher, budget, space and seed. Under the
  greedy search a tighter budget never gives a higher cost: ``h``'s scale comes from the expanded
  state, so the order of children not meeting the budget does not depend on the limit.
  Budget fill keeps that: its choice rule does not depend on the limit, which only decides which
  moves fit. Let ``R`` be the refined state for limit ``L`` from the search state ``S``, and
  ``L' < L``. If ``L' < cost(R)``, the plan at ``L'`` costs ≤ ``L' < cost(R)``. Otherwise
  ``cost(S) ≤ cost(R) ≤ L'``, and the greedy search at ``L'``, which follows the path it took
  at ``L`` (see above) and stops at the first state meeting the budget, stops at the same
  ``S``; every move taken at ``L`` costs ≤ ``cost(R) ≤ L'``, so it fits at ``L'`` and is still
  the best of the smaller set of fitting moves; and no move fits after ``R`` at ``L``, so none
  does at ``L'``: the plan at ``L'`` is ``R`` itself. (The argument inherits the path search's
  assumption: ``h`` is clipped at 0 for children meeting the budget, so a child meeting ``L``
  but not ``L'`` can in principle be ranked differently under the two limits.)
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fitc.artifacts import Budget, CompressionPlan, LayerPlan, PathStep
from fitc.cost import CostModel, cost_for
from fitc.errors import BudgetInfeasibleError, ConfigError
from fitc.fisher import (
    Fisher,
    LayerInfo,
    estimate_fisher,
    intra_op_threads,
    progress_bar,
    trace_layers,
)
from fitc.space import SearchSpace, quantize_weight

log = logging.getLogger(__name__)

__all__ = [
    "ALGORITHMS",
    "SearchResult",
    "fit_value",
    "search_plan",
    "sensitivity_table",
]

ALGORITHMS = ("greedy", "astar")
DEFAULT_SPACE = SearchSpace()
_THETA_CACHE_NUMEL = 16_000_000  # simulated weights kept for reuse (64 MB of float32)


# ------------------------------------------------------------------------------------------
# FIT


def _delta(value_range: float, bits: int) -> float:
    return value_range / (2.0**bits - 1.0)


def _check_names(fisher: Fisher, mapping: Mapping[str, int], what: str) -> None:
    unknown = sorted(set(mapping) - set(fisher.weight))
    if unknown:
        raise ConfigError(f"{what}: unknown layers {unknown}; layers are {fisher.layers}")


def fit_value(fisher: Fisher, weight_bits: Mapping[str, int], act_bits: Mapping[str, int]) -> float:
    """FIT of a per-layer bit configuration (layers absent from a mapping stay float)."""
    _check_names(fisher, weight_bits, "fit_value weight_bits")
    _check_names(fisher, act_bits, "fit_value act_bits")
    total = 0.0
    for name, b in weight_bits.items():
        total += fisher.weight_trace[name] * _delta(fisher.weight_range[name], int(b)) ** 2
    for name, b in act_bits.items():
        total += fisher.act_trace[name] * _delta(fisher.act_range[name], int(b)) ** 2
    return total


def sensitivity_table(
    fisher: Fisher, space: SearchSpace = DEFAULT_SPACE, bits: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Per-layer FIT terms, most sensitive first.

    Each row: ``name``, ``n_weights``, ``weight_trace``, ``act_trace``, ``weight_range``,
    ``act_range``, ``fit_w{b}`` (weight term at ``b`` bits) for ``bits`` (default: the weight
    ladder's highest, middle and lowest rung), ``fit_a{b}`` for each activation rung, and
    ``sensitivity``: the layer's FIT at the lowest weight and activation rungs (the sort key).
    """
    ladder = space.weight_bits
    if bits is None:
        bits = sorted({ladder[0], ladder[len(ladder) // 2], ladder[-1]}, reverse=True)
    rows = []
    for name in fisher.layers:
        row: dict[str, Any] = {
            "name": name,
            "n_weights": int(fisher.weight[name].numel()),
            "weight_trace": fisher.weight_trace[name],
            "act_trace": fisher.act_trace[name],
            "weight_range": fisher.weight_range[name],
            "act_range": fisher.act_range[name],
        }
        for b in bits:
            row[f"fit_w{b}"] = fit_value(fisher, {name: b}, {})
        for b in space.act_bits:
            row[f"fit_a{b}"] = fit_value(fisher, {}, {name: b})
        row["sensitivity"] = fit_value(
            fisher, {name: space.min_weight_bits}, {name: space.act_bits[-1]}
        )
        rows.append(row)
    rows.sort(key=lambda r: -r["sensitivity"])
    return rows


# ------------------------------------------------------------------------------------------
# Search


@dataclass
class SearchResult:
    """The plan, its pruning masks (True = kept, weight shape) and the weights the search
    simulated for it (``quantize_weight(w * mask, bits)``: what the built model must see)."""

    plan: CompressionPlan
    masks: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    fisher: Fisher  # the last Fisher used (after refreshes)
    expansions: int
    refreshes: int
    refinements: int = 0  # budget-fill moves taken after the path search


@dataclass(eq=False)
class _Node:
    wb: tuple[int, ...]  # weight-ladder index per layer
    ab: tuple[int, ...]  # activation-ladder index per input group
    pr: tuple[int, ...]  # prune-level index: one (global) or one per layer
    masks: tuple[int, ...]  # mask token per layer
    plans: tuple[LayerPlan, ...]
    cost: float
    g: float = 0.0
    h: float = 0.0
    f: float = 0.0
    parent: _Node | None = None
    move: str = "start"

    @property
    def key(self) -> tuple:
        return (self.wb, self.ab, self.pr)


class _Planner:
    """The lattice, the simulated weights and the incremental scoring of moves."""

    def __init__(
        self,
        model: nn.Module,
        infos: Sequence[LayerInfo],
        fisher: Fisher,
        space: SearchSpace,
        cost: CostModel,
        budget: Budget,
        lam: float,
    ) -> None:
        modules = dict(model.named_modules())
        self.infos = list(infos)
        self.names = [i.name for i in infos]
        self.L = len(infos)
        self.space = space
        self.cost_model = cost
        self.limit = float(budget.limit)
        self.lam = float(lam)
        self.w = [modules[n].weight.detach().float().flatten().clone() for n in self.names]
        self.shapes = [tuple(modules[n].weight.shape) for n in self.names]
        self.N = sum(w.numel() for w in self.w)
        # Activation bits are per input tensor: layers reading the same tensor share a quantizer.
        groups = sorted({i.input_group for i in infos})
        self.group_of = [groups.index(i.input_group) for i in infos]
        self.group_layers = [
            [li for li in range(self.L) if self.group_of[li] == g] for g in range(len(groups))
        ]
        self.fisher_version = 0
        self.set_fisher(fisher)
        self._tokens = itertools.count()
        self.mask_store: dict[int, torch.Tensor] = {}
        self.full_masks = tuple(
            self._new_mask(torch.ones(w.numel(), dtype=torch.bool)) for w in self.w
        )
        self._theta: dict[tuple[int, int, int], tuple[torch.Tensor, int]] = {}
        self._theta_numel = 0
        self._prune_cache: dict[tuple, tuple[int, ...]] = {}
        self._dist: dict[tuple[int, int, int, int], float] = {}

    # -- state pieces ----------------------------------------------------------------------

    def set_fisher(self, fisher: Fisher) -> None:
        missing = [n for n in self.names if n not in fisher.weight]
        if missing:
            raise ConfigError(
                f"the Fisher has no entry for layers {missing} (it has {fisher.layers}); "
                f"estimate it on this model"
            )
        self.fisher = fisher
        self.F = [fisher.weight[n].detach().float().flatten() for n in self.names]
        self.fisher_version += 1
        self._prune_cache = {}

    def _new_mask(self, mask: torch.Tensor) -> int:
        tok = next(self._tokens)
        self.mask_store[tok] = mask
        return tok

    def theta(self, li: int, tok: int, bits: int) -> tuple[torch.Tensor, int]:
        key = (li, tok, bits)
        hit = self._theta.get(key)
        if hit is None:
            if self._theta_numel > _THETA_CACHE_NUMEL:
                self._theta.clear()
                self._theta_numel = 0
            q = quantize_weight(self.w[li] * self.mask_store[tok], bits)
            hit = (q, int(torch.count_nonzero(q)))
            self._theta[key] = hit
            self._theta_numel += q.numel()
        return hit

    def wbits(self, idx: int) -> int:
        return self.space.weight_bits[idx]

    def abits(self, idx: int) -> int:
        return self.space.act_bits[idx]

    def layer_plan(self, li: int, wb: int, ab: int, nnz: int) -> LayerPlan:
        info = self.infos[li]
        return LayerPlan(
            name=info.name,
            kind=info.kind,
            weight_bits=self.wbits(wb),
            act_bits=self.abits(ab),
            n_weights=info.n_weights,
            n_nonzero=nnz,
            fan_in=info.fan_in,
            out_positions=info.out_positions,
        )

    def make_node(self, wb, ab, pr, masks, **kw: Any) -> _Node:
        plans = tuple(
            self.layer_plan(
                li, wb[li], ab[self.group_of[li]], self.theta(li, masks[li], self.wbits(wb[li]))[1]
            )
            for li in range(self.L)
        )
        return _Node(wb, ab, pr, masks, plans, float(self.cost_model(plans)), **kw)

    def start(self) -> _Node:
        n_groups = len(self.group_layers)
        n_pr = self.L if self.space.per_layer_prune else 1
        return self.make_node((0,) * self.L, (0,) * n_groups, (0,) * n_pr, self.full_masks)

    def fisher_mass(self, node: _Node) -> float:
        """Σ F·θ² of the node's weights: the squared Fisher length of zeroing them all."""
        total = 0.0
        for li in range(self.L):
            q, _ = self.theta(li, node.masks[li], self.wbits(node.wb[li]))
            total += float(torch.sum(self.F[li].double() * q.double() ** 2))
        return total

    def _step2(self, li: int, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.sum(self.F[li].double() * (a.double() - b.double()) ** 2))

    def _act_noise(self, li: int, bits: int) -> float:
        d = _delta(self.fisher.act_range[self.names[li]], bits)
        return self.fisher.act_trace[self.names[li]] * d * d / 12.0

    def dist(self, li: int, tok: int, bits: int) -> float:
        """Σ F·(θ − w)² of layer ``li`` (mask ``tok``, ``bits``) under the current Fisher."""
        key = (li, tok, bits, self.fisher_version)
        hit = self._dist.get(key)
        if hit is None:
            q, _ = self.theta(li, tok, bits)
            hit = float(torch.sum(self.F[li].double() * (q.double() - self.w[li].double()) ** 2))
            self._dist[key] = hit
        return hit

    # -- pruning ---------------------------------------------------------------------------

    def _importance(self, li: int, tok: int) -> torch.Tensor:
        # Pruned weights rank below everything so masks only ever shrink.
        m = self.mask_store[tok]
        return torch.where(m, self.F[li] * self.w[li] ** 2, torch.full_like(self.F[li], -1.0))

    def prune_masks(
        self, masks: tuple[int, ...], level: float, layer: int | None
    ) -> tuple[int, ...]:
        key = (masks, self.fisher_version, level, layer)
        hit = self._prune_cache.get(key)
        if hit is not None:
            return hit
        out = list(masks)
        if layer is None:
            imp = torch.cat([self._importance(li, masks[li]) for li in range(self.L)])
            k = math.floor(level * self.N + 1e-9)
            keep = torch.ones(self.N, dtype=torch.bool)
            keep[torch.argsort(imp, stable=True)[:k]] = False
            for li, part in enumerate(torch.split(keep, [w.numel() for w in self.w])):
                if not torch.equal(part, self.mask_store[masks[li]]):
                    out[li] = self._new_mask(part.clone())
        else:
            imp = self._importance(layer, masks[layer])
            k = math.floor(level * imp.numel() + 1e-9)
            keep = torch.ones(imp.numel(), dtype=torch.bool)
            keep[torch.argsort(imp, stable=True)[:k]] = False
            if not torch.equal(keep, self.mask_store[masks[layer]]):
                out[layer] = self._new_mask(keep)
        res = tuple(out)
        self._prune_cache[key] = res
        return res

    def unprune_masks(
        self, masks: tuple[int, ...], level: float, layer: int | None
    ) -> tuple[int, ...]:
        """The reverse of :meth:`prune_masks`: the pruned weights of highest importance
        ``F·w²`` come back until ``floor(level·n)`` stay pruned (masks only ever grow)."""
        key = ("unprune", masks, self.fisher_version, level, layer)
        hit = self._prune_cache.get(key)
        if hit is not None:
            return hit
        out = list(masks)
        members = range(self.L) if layer is None else [layer]
        keep = torch.cat([self.mask_store[masks[li]] for li in members])
        n = keep.numel()
        restore = (n - int(keep.sum())) - math.floor(level * n + 1e-9)
        if restore > 0:
            imp = torch.cat(
                [
                    torch.where(
                        self.mask_store[masks[li]],
                        torch.full_like(self.F[li], -1.0),
                        self.F[li] * self.w[li] ** 2,
                    )
                    for li in members
                ]
            )
            keep = keep.clone()
            keep[torch.argsort(imp, descending=True, stable=True)[:restore]] = True
            sizes = [self.w[li].numel() for li in members]
            for li, part in zip(members, torch.split(keep, sizes), strict=True):
                if not torch.equal(part, self.mask_store[masks[li]]):
                    out[li] = self._new_mask(part.clone())
        res = tuple(out)
        self._prune_cache[key] = res
        return res

    # -- moves -----------------------------------------------------------------------------

    def children(self, node: _Node, cost_start: float) -> list[_Node]:
        """All one-move successors, scored incrementally (only changed layers are touched)."""
        sp = self.space
        scale = math.sqrt(max(self.fisher_mass(node), 0.0)) / cost_start
        out: list[_Node] = []

        def emit(move: str, step2: float, wb, ab, pr, masks, changed: Mapping[int, LayerPlan]):
            plans = list(node.plans)
            for li, lp in changed.items():
                plans[li] = lp
            plans_t = tuple(plans)
            c = float(self.cost_model(plans_t))
            g = node.g + math.sqrt(max(step2, 0.0))
            h = _h(c, self.limit, scale)
            out.append(_Node(wb, ab, pr, masks, plans_t, c, g, h, g + self.lam * h, node, move))

        # weight bits, one layer one rung down
        for li in range(self.L):
            if node.wb[li] + 1 >= len(sp.weight_bits):
                continue
            b0, b1 = self.wbits(node.wb[li]), self.wbits(node.wb[li] + 1)
            q0, _ = self.theta(li, node.masks[li], b0)
            q1, nnz = self.theta(li, node.masks[li], b1)
            wb = node.wb[:li] + (node.wb[li] + 1,) + node.wb[li + 1 :]
            lp = dataclasses.replace(node.plans[li], weight_bits=b1, n_nonzero=nnz)
            emit(
                f"{self.names[li]}:w{b0}->w{b1}",
                self._step2(li, q0, q1),
                wb,
                node.ab,
                node.pr,
                node.masks,
                {li: lp},
            )
        # activation bits, one input group one rung down
        for gi, members in enumerate(self.group_layers):
            if node.ab[gi] + 1 >= len(sp.act_bits):
                continue
            a0, a1 = self.abits(node.ab[gi]), self.abits(node.ab[gi] + 1)
            step2 = sum(self._act_noise(li, a1) - self._act_noise(li, a0) for li in members)
            ab = node.ab[:gi] + (node.ab[gi] + 1,) + node.ab[gi + 1 :]
            changed = {li: dataclasses.replace(node.plans[li], act_bits=a1) for li in members}
            label = "+".join(self.names[li] for li in members)
            emit(f"{label}:a{a0}->a{a1}", step2, node.wb, ab, node.pr, node.masks, changed)
        # pruning, one rung up (globally or per layer)
        targets = range(self.L) if sp.per_layer_prune else [None]
        for pi, layer in enumerate(targets):
            if node.pr[pi] + 1 >= len(sp.prune_levels):
                continue
            level = sp.prune_levels[node.pr[pi] + 1]
            masks = self.prune_masks(node.masks, level, layer)
            step2 = 0.0
            changed = {}
            for li in range(self.L):
                if masks[li] == node.masks[li]:
                    continue
                b = self.wbits(node.wb[li])
                q0, _ = self.theta(li, node.masks[li], b)
                q1, nnz = self.theta(li, masks[li], b)
                step2 += self._step2(li, q0, q1)
                changed[li] = dataclasses.replace(node.plans[li], n_nonzero=nnz)
            pr = node.pr[:pi] + (node.pr[pi] + 1,) + node.pr[pi + 1 :]
            label = "prune" if layer is None else f"{self.names[layer]}:prune"
            emit(f"{label}:{level:.4g}", step2, node.wb, node.ab, pr, masks, changed)
        return out

    def reverse_children(self, node: _Node) -> list[tuple[_Node, float]]:
        """All one-rung reverse moves of ``node`` with their decrease of the distance ``D`` to
        the uncompressed model (only changed layers rescored), in a fixed order."""
        sp = self.space
        out: list[tuple[_Node, float]] = []

        def emit(move, gain, step2, wb, ab, pr, masks, changed: Mapping[int, LayerPlan]):
            plans = list(node.plans)
            for li, lp in changed.items():
                plans[li] = lp
            plans_t = tuple(plans)
            c = float(self.cost_model(plans_t))
            g = node.g + math.sqrt(max(step2, 0.0))
            kid = _Node(wb, ab, pr, masks, plans_t, c, g, 0.0, g, node, f"refine:{move}")
            out.append((kid, gain))

        for li in range(self.L):
            if node.wb[li] == 0:
                continue
            b0, b1 = self.wbits(node.wb[li]), self.wbits(node.wb[li] - 1)
            tok = node.masks[li]
            q0, _ = self.theta(li, tok, b0)
            q1, nnz = self.theta(li, tok, b1)
            wb = node.wb[:li] + (node.wb[li] - 1,) + node.wb[li + 1 :]
            lp = dataclasses.replace(node.plans[li], weight_bits=b1, n_nonzero=nnz)
            emit(
                f"{self.names[li]}:w{b0}->w{b1}",
                self.dist(li, tok, b0) - self.dist(li, tok, b1),
                self._step2(li, q0, q1),
                wb,
                node.ab,
                node.pr,
                node.masks,
                {li: lp},
            )
        for gi, members in enumerate(self.group_layers):
            if node.ab[gi] == 0:
                continue
            a0, a1 = self.abits(node.ab[gi]), self.abits(node.ab[gi] - 1)
            gain = sum(self._act_noise(li, a0) - self._act_noise(li, a1) for li in members)
            ab = node.ab[:gi] + (node.ab[gi] - 1,) + node.ab[gi + 1 :]
            changed = {li: dataclasses.replace(node.plans[li], act_bits=a1) for li in members}
            label = "+".join(self.names[li] for li in members)
            emit(f"{label}:a{a0}->a{a1}", gain, gain, node.wb, ab, node.pr, node.masks, changed)
        targets = range(self.L) if sp.per_layer_prune else [None]
        for pi, layer in enumerate(targets):
            if node.pr[pi] == 0:
                continue
            old, level = sp.prune_levels[node.pr[pi]], sp.prune_levels[node.pr[pi] - 1]
            masks = self.unprune_masks(node.masks, level, layer)
            gain = step2 = 0.0
            changed = {}
            for li in range(self.L):
                if masks[li] == node.masks[li]:
                    continue
                b = self.wbits(node.wb[li])
                q0, _ = self.theta(li, node.masks[li], b)
                q1, nnz = self.theta(li, masks[li], b)
                gain += self.dist(li, node.masks[li], b) - self.dist(li, masks[li], b)
                step2 += self._step2(li, q0, q1)
                changed[li] = dataclasses.replace(node.plans[li], n_nonzero=nnz)
            pr = node.pr[:pi] + (node.pr[pi] - 1,) + node.pr[pi + 1 :]
            label = "prune" if layer is None else f"{self.names[layer]}:prune"
            emit(
                f"{label}:{old:.4g}->{level:.4g}", gain, step2, node.wb, node.ab, pr, masks, changed
            )
        return out

    def refine(self, node: _Node) -> tuple[_Node, int]:
        """Budget fill: take the best-ratio fitting reverse move until none fits."""
        taken = 0
        while math.isfinite(node.cost):
            best: _Node | None = None
            best_key: tuple[float, float] = (-math.inf, -math.inf)
            for kid, gain in self.reverse_children(node):
                if not (gain > 0.0 and math.isfinite(kid.cost) and kid.cost <= self.limit):
                    continue
                added = kid.cost - node.cost
                key = (math.inf, gain) if added <= 0.0 else (gain / added, gain)
                if best is None or key > best_key:
                    best, best_key = kid, key
            if best is None:
                break
            node = best
            taken += 1
        return node, taken

    def most_compressed(self) -> _Node:
        sp = self.space
        n_groups = len(self.group_layers)
        top = len(sp.prune_levels) - 1
        masks = self.full_masks
        if sp.per_layer_prune:
            for li in range(self.L):
                masks = self.prune_masks(masks, sp.prune_levels[top], li)
            pr = (top,) * self.L
        else:
            masks = self.prune_masks(masks, sp.prune_levels[top], None)
            pr = (top,)
        return self.make_node(
            (len(sp.weight_bits) - 1,) * self.L, (len(sp.act_bits) - 1,) * n_groups, pr, masks
        )

    def weights_of(self, node: _Node) -> dict[str, torch.Tensor]:
        return {
            self.names[li]: self.theta(li, node.masks[li], self.wbits(node.wb[li]))[0]
            .reshape(self.shapes[li])
            .clone()
            for li in range(self.L)
        }

    def masks_of(self, node: _Node) -> dict[str, torch.Tensor]:
        return {
            self.names[li]: self.mask_store[node.masks[li]].reshape(self.shapes[li]).clone()
            for li in range(self.L)
        }

    def predicted_fit(self, node: _Node, fisher: Fisher) -> float:
        """Σ F·(θ − w)² over the weights (exact, pruning included) plus the activations'
        expected uniform-noise term Σ Tr(F_a)·Δ_a²/12, under ``fisher``."""
        total = 0.0
        for li, name in enumerate(self.names):
            q, _ = self.theta(li, node.masks[li], self.wbits(node.wb[li]))
            f = fisher.weight[name].detach().double().flatten()
            total += float(torch.sum(f * (q.double() - self.w[li].double()) ** 2))
            a = self.abits(node.ab[self.group_of[li]])
            total += fisher.act_trace[name] * _delta(fisher.act_range[name], a) ** 2 / 12.0
        return total


def _h(cost: float, limit: float, scale: float) -> float:
    """max(cost − limit, 0)·scale, infinite for an infinite cost (never NaN)."""
    if not math.isfinite(cost):
        return math.inf
    return max(cost - limit, 0.0) * scale


def _describe(space: SearchSpace) -> str:
    return (
        f"{space.min_weight_bits}-bit weights, {space.act_bits[-1]}-bit activations, "
        f"{space.prune_levels[-1]:.1%} pruned"
        + (" in every layer" if space.per_layer_prune else "")
    )


def search_plan(
    model: nn.Module,
    fisher: Fisher,
    budget: Budget,
    space: SearchSpace = DEFAULT_SPACE,
    *,
    cost: CostModel | None = None,
    lam: float = 1.0,
    algorithm: str = "greedy",
    refresh_every: int = 10,
    refresh_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    refresh_batches: int = 2,
    refresh_batch_size: int = 128,
    max_expansions: int = 2000,
    model_name: str = "",
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    progress: bool = False,
    num_threads: int | None = 1,
    refine: bool = True,
) -> SearchResult:
    """Search a compression plan for ``model`` meeting ``budget`` (see the module docstring).

    ``cost`` replaces the built-in size/BOPs cost (its ``kind`` must equal ``budget.kind``).
    ``input_shape`` (no batch dimension) defaults to the one the Fisher was estimated on.
    ``num_threads``: torch intra-op threads while searching (the search's tensors are small;
    None leaves torch's setting), restored afterwards.
    ``refine``: fill the budget's slack with reverse moves after the path search (the module
    docstring); False returns the path search's state.
    """
    with intra_op_threads(num_threads):
        t0 = time.perf_counter()
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"search algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if not (math.isfinite(lam) and lam >= 0):
            raise ConfigError(f"search lam must be a finite number ≥ 0, got {lam!r}")
        if refresh_every < 0 or refresh_batches < 1:
            raise ConfigError(
                f"refresh_every must be ≥ 0 and refresh_batches ≥ 1, got {refresh_every}, "
                f"{refresh_batches}"
            )
        cost = cost if cost is not None else cost_for(budget)
        if getattr(cost, "kind", None) != budget.kind:
            raise ConfigError(
                f"cost model {cost!r} measures {getattr(cost, 'kind', None)!r} but the budget is "
                f"{budget}; pass a cost model of kind {budget.kind!r}"
            )
        shape = tuple(input_shape) if input_shape is not None else tuple(fisher.input_shape)
        if not shape:
            raise ConfigError("search_plan needs input_shape (the Fisher does not record one)")
        infos = trace_layers(model, torch.zeros((1, *shape)))
        if {i.name for i in infos} != set(fisher.layers):
            raise ConfigError(
                f"the Fisher's layers {fisher.layers} are not the model's compressible layers "
                f"{[i.name for i in infos]}; estimate the Fisher on this model"
            )

        planner = _Planner(model, infos, fisher, space, cost, budget, lam)
        start = planner.start()
        # h's cost normaliser; an infinite or zero start cost (a zero hardware limit) gives 1
        cost_start = start.cost if math.isfinite(start.cost) and start.cost > 0 else 1.0
        floor = planner.most_compressed()
        if floor.cost > planner.limit:
            raise BudgetInfeasibleError(
                f"budget {budget} is unreachable: the most compressed state of the search space "
                f"({_describe(space)}) has {budget.kind} cost {floor.cost:.6g}; raise the limit to "
                f"at least that or widen the search space (lower bits, higher pruning levels)",
                smallest_reachable=floor.cost,
            )
        start.h = _h(start.cost, planner.limit, math.sqrt(planner.fisher_mass(start)) / cost_start)
        start.f = lam * start.h

        refresh = _Refresher(
            model, planner, refresh_data, refresh_every, refresh_batches, refresh_batch_size, seed
        )
        bar = progress_bar(progress, desc=f"search {budget}", unit="exp")
        expansions = 0
        try:
            if algorithm == "greedy":
                node, expansions = _greedy(planner, start, cost_start, refresh, bar, 0)
            else:
                node, expansions = _astar(planner, start, cost_start, refresh, bar, max_expansions)
        finally:
            bar.close()
        if node.cost > planner.limit:
            raise BudgetInfeasibleError(
                f"budget {budget} was not reached: the search ended at {budget.kind} cost "
                f"{node.cost:.6g} (the most compressed state was estimated at {floor.cost:.6g}); "
                f"raise the limit",
                smallest_reachable=node.cost,
            )
        refinements = 0
        if refine:
            searched = node.cost
            node, refinements = planner.refine(node)
            log.debug("budget fill: %d moves, cost %.6g -> %.6g", refinements, searched, node.cost)

        steps = []
        n: _Node | None = node
        while n is not None:
            steps.append(PathStep(move=n.move, g=n.g, h=n.h, f=n.f, cost=n.cost))
            n = n.parent
        steps.reverse()
        wall = time.perf_counter() - t0
        plan = CompressionPlan(
            model=model_name,
            layers=node.plans,
            budget=budget,
            achieved_cost=node.cost,
            predicted_fit=planner.predicted_fit(node, fisher),
            path=tuple(steps),
            fisher_time_s=round(fisher.wall_time_s + refresh.time_s, 6),
            search_time_s=round(wall - refresh.time_s, 6),
        )
        log.info(
            "search %s: cost %.6g after %d expansions and %d budget-fill moves (%d Fisher "
            "refreshes), %.3f s",
            budget,
            node.cost,
            expansions,
            refinements,
            refresh.count,
            wall,
        )
        return SearchResult(
            plan=plan,
            masks=planner.masks_of(node),
            weights=planner.weights_of(node),
            fisher=planner.fisher,
            expansions=expansions,
            refreshes=refresh.count,
            refinements=refinements,
        )


class _Refresher:
    """Re-estimates the Fisher at the expanded state's weights every ``every`` expansions."""

    def __init__(self, model, planner, data, every, batches, batch_size, seed) -> None:
        self.model = model
        self.planner = planner
        self.data = data
        self.every = every if data is not None else 0
        self.batches = batches
        self.batch_size = batch_size
        self.seed = seed
        self.count = 0
        self.time_s = 0.0

    def maybe(self, node: _Node, expansions: int) -> None:
        if not self.every or expansions == 0 or expansions % self.every:
            return
        t0 = time.perf_counter()
        X, y = self.data
        method = (
            self.planner.fisher.method if self.planner.fisher.method != "loop" else "per_sample"
        )
        fisher = estimate_fisher(
            self.model,
            X,
            y,
            batch_size=self.batch_size,
            method=method,
            max_batches=self.batches,
            min_batches=self.batches,
            tol=0.0,
            seed=self.seed + 1 + self.count,
            weights=self.planner.weights_of(node),
        )
        old = self.planner.fisher
        # Activation ranges of a couple of batches are noisy; keep the reference ones.
        fisher.act_range = dict(old.act_range)
        self.planner.set_fisher(fisher)
        self.count += 1
        self.time_s += time.perf_counter() - t0


def _greedy(planner: _Planner, node: _Node, cost_start: float, refresh, bar, expansions: int):
    while node.cost > planner.limit:
        refresh.maybe(node, expansions)
        kids = planner.children(node, cost_start)
        if not kids:
            break
        cheaper = [k for k in kids if k.cost < node.cost]
        node = min(cheaper or kids, key=lambda k: k.f)
        expansions += 1
        bar.update(1)
        bar.set_postfix(cost=f"{node.cost:.4g}", move=node.move)
    return node, expansions


def _astar(planner: _Planner, start: _Node, cost_start: float, refresh, bar, max_expansions: int):
    tie = itertools.count()
    open_heap: list[tuple[float, int, _Node]] = [(start.f, next(tie), start)]
    best_g: dict[tuple, float] = {start.key: 0.0}
    closed: set[tuple] = set()
    expansions = 0
    node = start
    while open_heap:
        _, _, node = heapq.heappop(open_heap)
        if node.key in closed:
            continue
        if node.cost <= planner.limit:
            return node, expansions
        if expansions >= max_expansions:
            log.warning(
                "A* reached %d expansions without meeting the budget; finishing greedily",
                max_expansions,
            )
            return _greedy(planner, node, cost_start, refresh, bar, expansions)
        closed.add(node.key)
        refresh.maybe(node, expansions)
        kids = planner.children(node, cost_start)
        cheaper = [k for k in kids if k.cost < node.cost]
        for k in cheaper or kids:
            if k.key in closed or best_g.get(k.key, math.inf) <= k.g:
                continue
            best_g[k.key] = k.g
            heapq.heappush(open_heap, (k.f, next(tie), k))
        expansions += 1
        bar.update(1)
    return node, expansions
