"""What a state or a move is worth under the Fisher: lengths, distances and the heuristic.

Contract (``F`` the current weight Fisher, flat per layer; ``θ`` a state's simulated weights,
``w`` the float weights; activation terms the uniform-noise expectation ``Tr(F_a)·Δ_a²/12``):
- :meth:`Scorer.length2` is a move's squared Fisher length: ``Σ F·(θ_new − θ_old)²`` over the
  layers whose simulated weights change, plus ``Σ Tr(F_a)·(Δ_lo² − Δ_hi²)/12`` over the layers
  whose activation bits change (``lo``/``hi`` the lower/higher of the two widths).
- :meth:`Scorer.gain` is a move's decrease of the distance to the uncompressed model
  ``D = Σ F·(θ − w)² + Σ Tr(F_a)·Δ_a²/12``: ``D(old) − D(new)``, only the changed layers
  rescored (per (layer, mask, bits) cached under one Fisher).
- :meth:`Scorer.fisher_mass` is ``Σ F·θ²`` of a node: the squared Fisher length of zeroing every
  weight, the scale of the heuristic :func:`h`.
- :meth:`Scorer.predicted_fit` is ``D`` of a node under a given Fisher.
Sums are in float64; the terms are added in layer order.
"""

from __future__ import annotations

import math

import torch

from fitc.errors import ConfigError
from fitc.fisher import Fisher
from fitc.search.fit import delta
from fitc.search.state import Lattice, Move, Node

__all__ = ["Scorer", "h"]


def h(cost: float, limit: float, scale: float) -> float:
    """max(cost − limit, 0)·scale, infinite for an infinite cost (never NaN)."""
    if not math.isfinite(cost):
        return math.inf
    return max(cost - limit, 0.0) * scale


class Scorer:
    """Fisher lengths and distances of the states and moves of ``lattice``."""

    def __init__(self, lattice: Lattice, fisher: Fisher) -> None:
        self.lattice = lattice
        self.version = 0
        self._dist: dict[tuple[int, int, int, int], float] = {}
        self.set_fisher(fisher)

    def set_fisher(self, fisher: Fisher) -> None:
        names = self.lattice.names
        missing = [n for n in names if n not in fisher.weight]
        if missing:
            raise ConfigError(
                f"the Fisher has no entry for layers {missing} (it has {fisher.layers}); "
                f"estimate it on this model"
            )
        self.fisher = fisher
        self.F = [fisher.weight[n].detach().float().flatten() for n in names]
        self.version += 1

    # -- per-layer terms -------------------------------------------------------------------

    def step2(self, li: int, a: torch.Tensor, b: torch.Tensor) -> float:
        """Σ F·(a − b)² of layer ``li``."""
        return float(torch.sum(self.F[li].double() * (a.double() - b.double()) ** 2))

    def act_noise(self, li: int, bits: int) -> float:
        """Tr(F_a)·Δ_a²/12 of layer ``li``'s input at ``bits``."""
        name = self.lattice.names[li]
        d = delta(self.fisher.act_range[name], bits)
        return self.fisher.act_trace[name] * d * d / 12.0

    def dist(self, li: int, tok: int, bits: int) -> float:
        """Σ F·(θ − w)² of layer ``li`` (mask ``tok``, ``bits``) under the current Fisher."""
        key = (li, tok, bits, self.version)
        hit = self._dist.get(key)
        if hit is None:
            q, _ = self.lattice.theta(li, tok, bits)
            w = self.lattice.w[li]
            hit = float(torch.sum(self.F[li].double() * (q.double() - w.double()) ** 2))
            self._dist[key] = hit
        return hit

    # -- states and moves ------------------------------------------------------------------

    def fisher_mass(self, node: Node) -> float:
        """Σ F·θ² of the node's weights: the squared Fisher length of zeroing them all."""
        total = 0.0
        for li in range(self.lattice.L):
            q = self.lattice.node_theta(node, li)
            total += float(torch.sum(self.F[li].double() * q.double() ** 2))
        return total

    def length2(self, move: Move) -> float:
        """The squared Fisher length of ``move``."""
        total = 0.0
        for c in move.weights:
            total += self.step2(c.layer, c.old, c.new)
        if move.acts:
            total += sum(
                self.act_noise(li, min(a0, a1)) - self.act_noise(li, max(a0, a1))
                for li, a0, a1 in move.acts
            )
        return total

    def gain(self, move: Move) -> float:
        """The decrease ``D(old) − D(new)`` of the distance to the uncompressed model."""
        total = 0.0
        for c in move.weights:
            total += self.dist(c.layer, c.old_mask, c.old_bits) - self.dist(
                c.layer, c.new_mask, c.new_bits
            )
        if move.acts:
            total += sum(
                self.act_noise(li, a0) - self.act_noise(li, a1) for li, a0, a1 in move.acts
            )
        return total

    def predicted_fit(self, node: Node, fisher: Fisher) -> float:
        """Σ F·(θ − w)² over the weights (exact, pruning included) plus the activations'
        expected uniform-noise term Σ Tr(F_a)·Δ_a²/12, under ``fisher``."""
        lat = self.lattice
        total = 0.0
        for li, name in enumerate(lat.names):
            q = lat.node_theta(node, li)
            f = fisher.weight[name].detach().double().flatten()
            total += float(torch.sum(f * (q.double() - lat.w[li].double()) ** 2))
            a = lat.abits(node.ab[lat.group_of[li]])
            total += fisher.act_trace[name] * delta(fisher.act_range[name], a) ** 2 / 12.0
        return total
