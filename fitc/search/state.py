"""The compression state of the search: the lattice, the weights under a state and the moves.

Contract:
- A :class:`Node` is one point of the lattice of a :class:`~fitc.space.SearchSpace`: a
  weight-ladder index per layer, an activation-ladder index per input group (layers reading the
  same tensor share a quantizer), a pruning-ladder index (one global, or one per layer with
  ``per_layer_prune``) and a pruning-mask token per layer; plus its layer plans and its cost.
- :class:`Lattice` owns the float weights, the pruning masks (stored once, referred to by token)
  and the simulated weights of a (layer, mask, bits): ``quantize_weight(w * mask, bits)``, cached.
- Pruning to a level keeps the weights of highest importance ``F·w²`` (``F`` the weight Fisher
  given by :meth:`Lattice.set_fisher_weights`); already pruned weights rank below everything, so
  masks only ever shrink. Unpruning to a lower level brings back the pruned weights of highest
  importance until ``floor(level·n)`` stay pruned, so masks only ever grow. Global pruning ranks
  the whole model's weights together, per-layer pruning one layer's.
- :meth:`Lattice.forward_moves` lists every one-rung compression move of a node (weight bits of
  one layer down, activation bits of one input group down, one pruning level up) and
  :meth:`Lattice.reverse_moves` every one-rung reverse move, each in a fixed order; a
  :class:`Move` says which layers' simulated weights and activation bits change, so a scorer
  rescores only those. :meth:`Lattice.child` applies a move (only the changed layer plans are
  replaced before the cost model is called on the whole tuple).

No scoring here: what a move is worth is :mod:`fitc.search.scoring`'s business.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from fitc.artifacts import LayerPlan
from fitc.cost import CostModel
from fitc.fisher import LayerInfo
from fitc.space import SearchSpace, quantize_weight

__all__ = ["Lattice", "Move", "Node", "WeightChange"]

THETA_CACHE_NUMEL = 16_000_000  # simulated weights kept for reuse (64 MB of float32)


@dataclass(eq=False)
class Node:
    wb: tuple[int, ...]  # weight-ladder index per layer
    ab: tuple[int, ...]  # activation-ladder index per input group
    pr: tuple[int, ...]  # prune-level index: one (global) or one per layer
    masks: tuple[int, ...]  # mask token per layer
    plans: tuple[LayerPlan, ...]
    cost: float
    g: float = 0.0
    h: float = 0.0
    f: float = 0.0
    parent: Node | None = None
    move: str = "start"

    @property
    def key(self) -> tuple:
        return (self.wb, self.ab, self.pr)


class WeightChange(NamedTuple):
    """The simulated weights of one layer before and after a move (mask tokens, bits, flat
    tensors)."""

    layer: int
    old_mask: int
    old_bits: int
    new_mask: int
    new_bits: int
    old: torch.Tensor
    new: torch.Tensor


class Move(NamedTuple):
    """One rung of one ladder, from a node to the state ``(wb, ab, pr, masks)``.

    ``weights``: a :class:`WeightChange` for every layer whose simulated weights change, in layer
    order; ``acts``: ``(layer, old bits, new bits)`` of every layer whose activation bits change;
    ``plans``: ``(layer, new plan)`` of the changed layers.
    """

    label: str
    wb: tuple[int, ...]
    ab: tuple[int, ...]
    pr: tuple[int, ...]
    masks: tuple[int, ...]
    weights: tuple[WeightChange, ...] = ()
    acts: tuple[tuple[int, int, int], ...] = ()
    plans: tuple[tuple[int, LayerPlan], ...] = ()


def _bump(t: tuple[int, ...], i: int, d: int) -> tuple[int, ...]:
    return t[:i] + (t[i] + d,) + t[i + 1 :]


class Lattice:
    """The states of the search space over the layers ``infos`` with float ``weights``."""

    def __init__(
        self,
        infos: Sequence[LayerInfo],
        weights: Sequence[torch.Tensor],
        space: SearchSpace,
        cost: CostModel,
    ) -> None:
        self.infos = list(infos)
        self.names = [i.name for i in infos]
        self.L = len(infos)
        self.space = space
        self.cost_model = cost
        # Hardware costs take out the logic synthesis removes: a layer with no non-zero weight
        # (and with it the whole network, whose output then ignores the input) costs ~0, so a
        # hardware budget would otherwise always be "met" by a dead network.
        self.keep_layers_live = getattr(cost, "kind", "size") not in ("size", "bops")
        self.w = [w.detach().float().flatten().clone() for w in weights]
        self.shapes = [tuple(w.shape) for w in weights]
        self.N = sum(w.numel() for w in self.w)
        # Activation bits are per input tensor: layers reading the same tensor share a quantizer.
        groups = sorted({i.input_group for i in infos})
        self.group_of = [groups.index(i.input_group) for i in infos]
        self.group_layers = [
            [li for li in range(self.L) if self.group_of[li] == g] for g in range(len(groups))
        ]
        self.F: list[torch.Tensor] | None = None
        self.fisher_version = 0
        self._prune_cache: dict[tuple, tuple[int, ...]] = {}
        self._tokens = itertools.count()
        self.mask_store: dict[int, torch.Tensor] = {}
        self.full_masks = tuple(
            self._new_mask(torch.ones(w.numel(), dtype=torch.bool)) for w in self.w
        )
        self._theta: dict[tuple[int, int, int], tuple[torch.Tensor, int]] = {}
        self._theta_numel = 0

    # -- the weights under a state ---------------------------------------------------------

    def set_fisher_weights(self, F: Sequence[torch.Tensor]) -> None:
        """The per-layer weight Fisher (flat, layer order) that ranks weights for pruning."""
        self.F = list(F)
        self.fisher_version += 1
        self._prune_cache = {}

    def _new_mask(self, mask: torch.Tensor) -> int:
        tok = next(self._tokens)
        self.mask_store[tok] = mask
        return tok

    def theta(self, li: int, tok: int, bits: int) -> tuple[torch.Tensor, int]:
        """The simulated flat weights of layer ``li`` under mask ``tok`` at ``bits``, and their
        non-zero count."""
        key = (li, tok, bits)
        hit = self._theta.get(key)
        if hit is None:
            if self._theta_numel > THETA_CACHE_NUMEL:
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

    def node_theta(self, node: Node, li: int) -> torch.Tensor:
        return self.theta(li, node.masks[li], self.wbits(node.wb[li]))[0]

    def weights_of(self, node: Node) -> dict[str, torch.Tensor]:
        return {
            self.names[li]: self.node_theta(node, li).reshape(self.shapes[li]).clone()
            for li in range(self.L)
        }

    def masks_of(self, node: Node) -> dict[str, torch.Tensor]:
        return {
            self.names[li]: self.mask_store[node.masks[li]].reshape(self.shapes[li]).clone()
            for li in range(self.L)
        }

    # -- states ----------------------------------------------------------------------------

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

    def make_node(self, wb, ab, pr, masks) -> Node:
        plans = tuple(
            self.layer_plan(
                li, wb[li], ab[self.group_of[li]], self.theta(li, masks[li], self.wbits(wb[li]))[1]
            )
            for li in range(self.L)
        )
        return Node(wb, ab, pr, masks, plans, float(self.cost_model(plans)))

    def start(self) -> Node:
        """The uncompressed state: highest bits, no pruning."""
        n_groups = len(self.group_layers)
        n_pr = self.L if self.space.per_layer_prune else 1
        return self.make_node((0,) * self.L, (0,) * n_groups, (0,) * n_pr, self.full_masks)

    def most_compressed(self) -> Node:
        """Lowest bits and the highest pruning level everywhere."""
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

    def child(self, node: Node, move: Move, label: str) -> Node:
        """The node ``move`` leads to from ``node``, its cost from the updated plans; the caller
        scores it (``g``, ``h``, ``f`` start at 0)."""
        plans = list(node.plans)
        for li, lp in move.plans:
            plans[li] = lp
        plans_t = tuple(plans)
        c = float(self.cost_model(plans_t))
        return Node(move.wb, move.ab, move.pr, move.masks, plans_t, c, 0.0, 0.0, 0.0, node, label)

    # -- pruning ---------------------------------------------------------------------------

    def _fisher(self) -> list[torch.Tensor]:
        if self.F is None:
            raise RuntimeError("Lattice.set_fisher_weights must be called before pruning")
        return self.F

    def _importance(self, li: int, tok: int) -> torch.Tensor:
        # Pruned weights rank below everything so masks only ever shrink.
        F = self._fisher()
        m = self.mask_store[tok]
        return torch.where(m, F[li] * self.w[li] ** 2, torch.full_like(F[li], -1.0))

    def prune_masks(
        self, masks: tuple[int, ...], level: float, layer: int | None
    ) -> tuple[int, ...]:
        """The masks at pruning ``level``: globally (``layer`` None) or of one layer."""
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
        F = self._fisher()
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
                        torch.full_like(F[li], -1.0),
                        F[li] * self.w[li] ** 2,
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

    def _change(self, li: int, t0: int, b0: int, t1: int, b1: int) -> tuple[WeightChange, int]:
        """The change of layer ``li``'s simulated weights, and their new non-zero count."""
        q0, _ = self.theta(li, t0, b0)
        q1, nnz = self.theta(li, t1, b1)
        return WeightChange(li, t0, b0, t1, b1, q0, q1), nnz

    def _weight_move(self, node: Node, li: int, d: int) -> Move:
        b0, b1 = self.wbits(node.wb[li]), self.wbits(node.wb[li] + d)
        tok = node.masks[li]
        change, nnz = self._change(li, tok, b0, tok, b1)
        lp = dataclasses.replace(node.plans[li], weight_bits=b1, n_nonzero=nnz)
        return Move(
            f"{self.names[li]}:w{b0}->w{b1}",
            _bump(node.wb, li, d),
            node.ab,
            node.pr,
            node.masks,
            weights=(change,),
            plans=((li, lp),),
        )

    def _act_move(self, node: Node, gi: int, d: int) -> Move:
        members = self.group_layers[gi]
        a0, a1 = self.abits(node.ab[gi]), self.abits(node.ab[gi] + d)
        label = "+".join(self.names[li] for li in members)
        return Move(
            f"{label}:a{a0}->a{a1}",
            node.wb,
            _bump(node.ab, gi, d),
            node.pr,
            node.masks,
            acts=tuple((li, a0, a1) for li in members),
            plans=tuple((li, dataclasses.replace(node.plans[li], act_bits=a1)) for li in members),
        )

    def _prune_move(self, node: Node, pi: int, layer: int | None, d: int) -> Move:
        levels = self.space.prune_levels
        old, level = levels[node.pr[pi]], levels[node.pr[pi] + d]
        if d > 0:
            masks = self.prune_masks(node.masks, level, layer)
        else:
            masks = self.unprune_masks(node.masks, level, layer)
        weights, plans = [], []
        for li in range(self.L):
            if masks[li] == node.masks[li]:
                continue
            b = self.wbits(node.wb[li])
            change, nnz = self._change(li, node.masks[li], b, masks[li], b)
            weights.append(change)
            plans.append((li, dataclasses.replace(node.plans[li], n_nonzero=nnz)))
        name = "prune" if layer is None else f"{self.names[layer]}:prune"
        label = f"{name}:{level:.4g}" if d > 0 else f"{name}:{old:.4g}->{level:.4g}"
        return Move(
            label,
            node.wb,
            node.ab,
            _bump(node.pr, pi, d),
            masks,
            weights=tuple(weights),
            plans=tuple(plans),
        )

    def _prune_targets(self) -> list[int | None]:
        return list(range(self.L)) if self.space.per_layer_prune else [None]

    def forward_moves(self, node: Node) -> Iterator[Move]:
        """Every one-rung compression move of ``node``: weight bits (layer order), activation
        bits (group order), pruning (global, or layer order). Under a hardware cost
        (``keep_layers_live``) a move that leaves a layer without any non-zero weight is not
        one: that layer's output, and so the network's, no longer depends on the input."""
        for move in self._forward_moves(node):
            if not self.keep_layers_live or all(lp.n_nonzero > 0 for _, lp in move.plans):
                yield move

    def _forward_moves(self, node: Node) -> Iterator[Move]:
        sp = self.space
        for li in range(self.L):
            if node.wb[li] + 1 < len(sp.weight_bits):
                yield self._weight_move(node, li, +1)
        for gi in range(len(self.group_layers)):
            if node.ab[gi] + 1 < len(sp.act_bits):
                yield self._act_move(node, gi, +1)
        for pi, layer in enumerate(self._prune_targets()):
            if node.pr[pi] + 1 < len(sp.prune_levels):
                yield self._prune_move(node, pi, layer, +1)

    def reverse_moves(self, node: Node) -> Iterator[Move]:
        """Every one-rung reverse move of ``node``: weight bits up (layer order), activation bits
        up (group order), pruning level down (global, or layer order)."""
        for li in range(self.L):
            if node.wb[li] > 0:
                yield self._weight_move(node, li, -1)
        for gi in range(len(self.group_layers)):
            if node.ab[gi] > 0:
                yield self._act_move(node, gi, -1)
        for pi, layer in enumerate(self._prune_targets()):
            if node.pr[pi] > 0:
                yield self._prune_move(node, pi, layer, -1)
