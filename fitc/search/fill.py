"""Budget fill: reverse moves from the path search's state while one fits the budget.

Contract: from ``node``, among the one-rung reverse moves (:meth:`Lattice.reverse_moves`) whose
cost is finite and ≤ ``limit`` and whose :meth:`Scorer.gain` (decrease of the Fisher distance to
the uncompressed model) is > 0, take the one with the largest gain per unit of cost added (moves
adding no cost first, by gain; ties go to the first in the lattice's fixed order); repeat until
none fits. The rule does not depend on ``limit``, which only decides which moves fit. Each move
taken is recorded as ``refine:<move>`` with ``h = 0`` and ``f = g``; ``g`` keeps summing Fisher
lengths.
"""

from __future__ import annotations

import math

from fitc.search.scoring import Scorer
from fitc.search.state import Lattice, Node

__all__ = ["budget_fill", "reverse_children"]


def reverse_children(lattice: Lattice, scorer: Scorer, node: Node) -> list[tuple[Node, float]]:
    """Every one-rung reverse move of ``node`` applied, with its gain, in a fixed order."""
    out: list[tuple[Node, float]] = []
    for move in lattice.reverse_moves(node):
        gain = scorer.gain(move)
        kid = lattice.child(node, move, f"refine:{move.label}")
        kid.g = kid.f = node.g + math.sqrt(max(scorer.length2(move), 0.0))
        out.append((kid, gain))
    return out


def budget_fill(lattice: Lattice, scorer: Scorer, node: Node, limit: float) -> tuple[Node, int]:
    """Take the best-ratio fitting reverse move until none fits: (final node, moves taken)."""
    taken = 0
    while math.isfinite(node.cost):
        best: Node | None = None
        best_key: tuple[float, float] = (-math.inf, -math.inf)
        for kid, gain in reverse_children(lattice, scorer, node):
            if not (gain > 0.0 and math.isfinite(kid.cost) and kid.cost <= limit):
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
