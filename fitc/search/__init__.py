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
  ``refresh_every`` expansions, every time on the same seeded samples (by default as many as the
  initial Fisher used), so successive estimates differ by the weights, not by sampling noise.
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

Layout (each piece imports only torch, numpy and the fitc core, never brevitas/qonnx/hls4ml):
- :mod:`fitc.search.fit`: FIT and the sensitivity table;
- :mod:`fitc.search.state`: the lattice, the simulated weights and pruning masks of a state, and
  the forward and reverse moves (:class:`~fitc.search.state.Lattice`);
- :mod:`fitc.search.scoring`: Fisher lengths of moves, distances to the uncompressed model and
  ``h`` (:class:`~fitc.search.scoring.Scorer`);
- :mod:`fitc.search.paths`: greedy and A* (:class:`~fitc.search.paths.PathSearch`);
- :mod:`fitc.search.fill`: the budget fill (:func:`~fitc.search.fill.budget_fill`);
- :mod:`fitc.search.core`: :func:`search_plan` (checks, Fisher refresh, the result).
"""

from fitc.search.core import ALGORITHMS, SearchResult, search_plan
from fitc.search.fit import DEFAULT_SPACE, fit_value, sensitivity_table

__all__ = [
    "ALGORITHMS",
    "DEFAULT_SPACE",
    "SearchResult",
    "fit_value",
    "search_plan",
    "sensitivity_table",
]
