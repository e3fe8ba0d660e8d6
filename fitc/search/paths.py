"""The path search through the lattice: greedy or A* on ``f = g + lam·h``.

Contract: a child of a node is one forward move (:meth:`Lattice.forward_moves`), with
``g = g_parent + sqrt(length2)`` (:meth:`Scorer.length2`),
``h = max(cost − limit, 0) / cost_start · sqrt(fisher_mass(parent))`` and ``f = g + lam·h``.
Moves that do not lower the cost are only taken when no move does.
- :meth:`PathSearch.greedy` takes the child with least ``f`` (the first on ties) until the
  budget is met or no move is left.
- :meth:`PathSearch.astar` keeps an open set (ties by insertion order) and returns the first
  state popped that meets the budget; after ``max_expansions`` it finishes greedily.
``refresh(node, expansions)`` is called before each expansion (the Fisher refresh hook).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

from fitc.search.scoring import Scorer, h
from fitc.search.state import Lattice, Node

log = logging.getLogger("fitc.search")  # one logger for the whole package

__all__ = ["PathSearch"]


def _no_refresh(node: Node, expansions: int) -> None:
    pass


class PathSearch:
    """Greedy and A* search from a node to the first state with ``cost ≤ limit``."""

    def __init__(
        self,
        lattice: Lattice,
        scorer: Scorer,
        limit: float,
        lam: float,
        cost_start: float,
        refresh: Callable[[Node, int], None] = _no_refresh,
        bar: Any = None,
    ) -> None:
        self.lattice = lattice
        self.scorer = scorer
        self.limit = limit
        self.lam = lam
        self.cost_start = cost_start
        self.refresh = refresh
        self.bar = bar

    def children(self, node: Node) -> list[Node]:
        """All one-move successors, scored incrementally (only changed layers are touched)."""
        scale = math.sqrt(max(self.scorer.fisher_mass(node), 0.0)) / self.cost_start
        out: list[Node] = []
        for move in self.lattice.forward_moves(node):
            kid = self.lattice.child(node, move, move.label)
            kid.g = node.g + math.sqrt(max(self.scorer.length2(move), 0.0))
            kid.h = h(kid.cost, self.limit, scale)
            kid.f = kid.g + self.lam * kid.h
            out.append(kid)
        return out

    def _tick(self, node: Node | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if node is not None:
            self.bar.set_postfix(cost=f"{node.cost:.4g}", move=node.move)

    def greedy(self, node: Node, expansions: int = 0) -> tuple[Node, int]:
        while node.cost > self.limit:
            self.refresh(node, expansions)
            kids = self.children(node)
            if not kids:
                break
            cheaper = [k for k in kids if k.cost < node.cost]
            node = min(cheaper or kids, key=lambda k: k.f)
            expansions += 1
            self._tick(node)
        return node, expansions

    def astar(self, start: Node, max_expansions: int) -> tuple[Node, int]:
        tie = itertools.count()
        open_heap: list[tuple[float, int, Node]] = [(start.f, next(tie), start)]
        best_g: dict[tuple, float] = {start.key: 0.0}
        closed: set[tuple] = set()
        expansions = 0
        node = start
        while open_heap:
            _, _, node = heapq.heappop(open_heap)
            if node.key in closed:
                continue
            if node.cost <= self.limit:
                return node, expansions
            if expansions >= max_expansions:
                log.warning(
                    "A* reached %d expansions without meeting the budget; finishing greedily",
                    max_expansions,
                )
                return self.greedy(node, expansions)
            closed.add(node.key)
            self.refresh(node, expansions)
            kids = self.children(node)
            cheaper = [k for k in kids if k.cost < node.cost]
            for k in cheaper or kids:
                if k.key in closed or best_g.get(k.key, math.inf) <= k.g:
                    continue
                best_g[k.key] = k.g
                heapq.heappush(open_heap, (k.f, next(tie), k))
            expansions += 1
            self._tick()
        return node, expansions
