"""``search_plan``: the argument checks, the Fisher refresh and the assembly of the result
(the contract is the package docstring, :mod:`fitc.search`)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from fitc.artifacts import Budget, CompressionPlan, PathStep
from fitc.cost import CostModel, cost_for
from fitc.errors import BudgetInfeasibleError, ConfigError
from fitc.fisher import Fisher, estimate_fisher, intra_op_threads, progress_bar, trace_layers
from fitc.search.fill import budget_fill
from fitc.search.fit import DEFAULT_SPACE
from fitc.search.paths import PathSearch
from fitc.search.scoring import Scorer, h
from fitc.search.state import Lattice, Node
from fitc.space import SearchSpace

log = logging.getLogger("fitc.search")  # one logger for the whole package

__all__ = ["ALGORITHMS", "SearchResult", "search_plan"]

ALGORITHMS = ("greedy", "astar")


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


def _use_fisher(lattice: Lattice, scorer: Scorer, fisher: Fisher) -> None:
    """Score and rank weights for pruning under ``fisher`` from now on."""
    scorer.set_fisher(fisher)
    lattice.set_fisher_weights(scorer.F)


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
    refresh_batches: int | None = None,
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
    ``refresh_batches`` (of ``refresh_batch_size`` samples) of ``refresh_data`` are drawn with
    ``seed`` once and reused by every refresh, so successive estimates differ by the weights, not
    by the samples; None: :func:`default_refresh_batches` (as many samples as the initial Fisher
    used, up to :data:`REFRESH_MACS` of forward passes).
    """
    with intra_op_threads(num_threads):
        t0 = time.perf_counter()
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"search algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if not (math.isfinite(lam) and lam >= 0):
            raise ConfigError(f"search lam must be a finite number ≥ 0, got {lam!r}")
        if refresh_every < 0 or (refresh_batches is not None and refresh_batches < 1):
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

        modules = dict(model.named_modules())
        lattice = Lattice(infos, [modules[i.name].weight for i in infos], space, cost)
        scorer = Scorer(lattice, fisher)
        lattice.set_fisher_weights(scorer.F)
        limit = float(budget.limit)
        start = lattice.start()
        # h's cost normaliser; an infinite or zero start cost (a zero hardware limit) gives 1
        cost_start = start.cost if math.isfinite(start.cost) and start.cost > 0 else 1.0
        floor = lattice.most_compressed()
        if floor.cost > limit:
            raise BudgetInfeasibleError(
                f"budget {budget} is unreachable: the most compressed state of the search space "
                f"({_describe(space)}) has {budget.kind} cost {floor.cost:.6g}; raise the limit to "
                f"at least that or widen the search space (lower bits, higher pruning levels)",
                smallest_reachable=floor.cost,
            )
        start.h = h(start.cost, limit, math.sqrt(scorer.fisher_mass(start)) / cost_start)
        start.f = lam * start.h

        refresh = _Refresher(
            model=model,
            lattice=lattice,
            scorer=scorer,
            data=refresh_data,
            every=refresh_every,
            batches=refresh_batches
            if refresh_batches is not None
            else default_refresh_batches(fisher.n_samples, infos, refresh_batch_size),
            batch_size=refresh_batch_size,
            seed=seed,
        )
        bar = progress_bar(progress, desc=f"search {budget}", unit="exp")
        paths = PathSearch(lattice, scorer, limit, float(lam), cost_start, refresh.maybe, bar)
        expansions = 0
        try:
            if algorithm == "greedy":
                node, expansions = paths.greedy(start)
            else:
                node, expansions = paths.astar(start, max_expansions)
        finally:
            bar.close()
        if node.cost > limit:
            raise BudgetInfeasibleError(
                f"budget {budget} was not reached: the search ended at {budget.kind} cost "
                f"{node.cost:.6g} (the most compressed state was estimated at {floor.cost:.6g}); "
                f"raise the limit",
                smallest_reachable=node.cost,
            )
        refinements = 0
        if refine:
            searched = node.cost
            node, refinements = budget_fill(lattice, scorer, node, limit)
            log.debug("budget fill: %d moves, cost %.6g -> %.6g", refinements, searched, node.cost)

        steps = []
        n: Node | None = node
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
            predicted_fit=scorer.predicted_fit(node, fisher),
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
            masks=lattice.masks_of(node),
            weights=lattice.weights_of(node),
            fisher=scorer.fisher,
            expansions=expansions,
            refreshes=refresh.count,
            refinements=refinements,
        )


#: Forward multiply-accumulates one Fisher refresh may spend by default (samples × MACs per
#: sample): 3 batches of 128 for resnet8 (12.5 M MACs per sample), every sample for the zoo MLPs
#: and digits-cnn (≤ 0.1 M MACs per sample, ≈ 1,000 samples).
REFRESH_MACS = 6_000_000_000


def default_refresh_batches(n_samples: int, infos, batch_size: int = 128) -> int:
    """Batches of one Fisher refresh: as many samples as the initial estimate used (``n_samples``),
    so a refresh is as precise as the estimate it replaces (2 batches of 128 gave worse plans for
    digits-mlp at size 1/32, 1/64 and 10 % of an xc7z020), but at most :data:`REFRESH_MACS` of
    forward passes and at least 2 batches. Without the cap a resnet8 refresh cost as much as its
    first estimate (1,800 samples, 8–10 s) and six refreshes made its search 20× slower."""
    macs = sum(i.n_weights * max(1, i.out_positions) for i in infos)
    wanted = max(1, math.ceil(n_samples / batch_size))
    if macs <= 0:
        return wanted
    cap = max(2, REFRESH_MACS // (macs * batch_size))
    return int(min(wanted, cap))


@dataclass
class _Refresher:
    """Re-estimates the Fisher at the expanded state's weights every ``every`` expansions
    (never without ``data``), always on the same ``batches`` seeded batches of ``data``: the
    Fisher changes along the path because the weights change, not because the samples do."""

    model: nn.Module
    lattice: Lattice
    scorer: Scorer
    data: tuple[torch.Tensor, torch.Tensor] | None
    every: int
    batches: int
    batch_size: int
    seed: int
    count: int = 0
    time_s: float = 0.0

    def __post_init__(self) -> None:
        if self.data is None:
            self.every = 0

    def maybe(self, node: Node, expansions: int) -> None:
        if not self.every or expansions == 0 or expansions % self.every:
            return
        t0 = time.perf_counter()
        X, y = self.data
        old = self.scorer.fisher
        method = old.method if old.method != "loop" else "per_sample"
        fisher = estimate_fisher(
            self.model,
            X,
            y,
            batch_size=self.batch_size,
            method=method,
            max_batches=self.batches,
            min_batches=self.batches,
            tol=0.0,
            seed=self.seed,
            weights=self.lattice.weights_of(node),
        )
        # Activation ranges of a couple of batches are noisy; keep the reference ones.
        fisher.act_range = dict(old.act_range)
        _use_fisher(self.lattice, self.scorer, fisher)
        self.count += 1
        self.time_s += time.perf_counter() - t0
