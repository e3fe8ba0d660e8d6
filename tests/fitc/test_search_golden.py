"""Golden plans: ``search_plan`` on the zoo models gives exactly the plans recorded in
``tests/fixtures/golden_plans.json``.

A refactor of the search must not change a single plan. Every case builds a zoo model at its
seeded initialisation (``build_model(name, seed=0)``, no training), draws deterministic generated
data (a seeded random teacher labels seeded Gaussian inputs), estimates the Fisher and searches
with the pipeline's settings (``refresh_every=10`` on the training data). The cases cover size,
BOPs, a combined size+BOPs budget, a hardware-like (LUT-like) cost in a combined budget, the
activation-bit ladder with per-layer pruning, and A*; every case runs the budget fill.

Recorded per case: per layer (name, weight_bits, act_bits, n_nonzero, a checksum of the kept
positions of the mask), the moves of the path, expansions / Fisher refreshes / budget-fill moves,
and achieved_cost, predicted_fit and the path's final g (floats, compared to a relative 1e-12).

The fixture records what the code did when it was written; it is not a statement of what the
best plan is. Regenerate it only for an intended change of the search's behaviour:

    python tests/fitc/test_search_golden.py --write
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fitc.artifacts import Budget
from fitc.cost import BopsCost, MaxRatioCost, SizeCost
from fitc.fisher import estimate_fisher
from fitc.models import build_model, get_spec
from fitc.search import search_plan
from fitc.space import SearchSpace

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "golden_plans.json"
REL = 1e-12
N_SAMPLES = {"jet-mlp": 256, "digits-mlp": 256, "digits-cnn": 256, "resnet8": 128}


class _LutLike:
    """A deterministic stand-in for a hardware cost (not a ratio, absolute units): 'LUTs' of a
    multiplier array, Σ n_nonzero·w_bits·a_bits/8 plus an adder tree per output."""

    kind = "lut"

    def __call__(self, layers) -> float:
        return float(
            sum(
                lp.n_nonzero * lp.weight_bits * lp.act_bits / 8
                + lp.n_weights / lp.fan_in * (lp.act_bits + lp.weight_bits)
                for lp in layers
            )
        )


def _costs(case: dict[str, Any], start_lut: float):
    """(budget, cost model) of a case."""
    kind = case["cost"]
    if kind in ("size", "bops"):
        return Budget(kind, case["limit"]), None
    if kind == "size+bops":
        return Budget("combined", 1.0), MaxRatioCost(
            [(SizeCost(), case["limit"]), (BopsCost(), case["limit2"])]
        )
    if kind == "lut+size":
        return Budget("combined", 1.0), MaxRatioCost(
            [(_LutLike(), start_lut * case["limit"]), (SizeCost(), case["limit2"])]
        )
    raise AssertionError(kind)


CASES: list[dict[str, Any]] = [
    dict(id="digits-mlp-size-1/16", model="digits-mlp", cost="size", limit=1 / 16),
    dict(id="digits-mlp-size-1/64", model="digits-mlp", cost="size", limit=1 / 64),
    dict(
        id="digits-mlp-size+bops", model="digits-mlp", cost="size+bops", limit=1 / 16, limit2=0.02
    ),
    dict(id="digits-mlp-lut+size", model="digits-mlp", cost="lut+size", limit=0.15, limit2=1 / 12),
    dict(
        id="digits-mlp-bops-act-ladder",
        model="digits-mlp",
        cost="bops",
        limit=0.015,
        act_bits=(8, 6, 4, 3),
    ),
    dict(
        id="digits-mlp-coarse-ladders",
        model="digits-mlp",
        cost="size",
        limit=0.06,
        weight_bits=(8, 2),
        act_bits=(8, 4, 3),
        prune_levels=(0.0, 0.3, 0.6, 0.9),
    ),
    dict(id="digits-cnn-size-1/16", model="digits-cnn", cost="size", limit=1 / 16),
    dict(id="digits-cnn-size-1/64", model="digits-cnn", cost="size", limit=1 / 64),
    dict(
        id="digits-cnn-bops-act-per-layer",
        model="digits-cnn",
        cost="bops",
        limit=0.015,
        act_bits=(8, 6, 4),
        per_layer_prune=True,
    ),
    dict(id="resnet8-size-1/16", model="resnet8", cost="size", limit=1 / 16),
    dict(id="resnet8-size-1/64", model="resnet8", cost="size", limit=1 / 64),
    dict(id="jet-mlp-size-1/16", model="jet-mlp", cost="size", limit=1 / 16),
    dict(
        id="jet-mlp-astar-size-1/32",
        model="jet-mlp",
        cost="size",
        limit=1 / 32,
        algorithm="astar",
        weight_bits=(8, 6, 4, 2),
        prune_levels=(0.0, 0.3, 0.6, 0.8, 0.9),
    ),
]


@functools.cache
def _model_and_data(name: str):
    """The seeded float model, generated data labelled by a seeded random teacher, its Fisher."""
    spec = get_spec(name)
    model = build_model(name, seed=0)
    g = torch.Generator().manual_seed(1234)
    n = N_SAMPLES[name]
    X = torch.randn((n, *spec.input_shape), generator=g)
    teacher = torch.randn((X[0].numel(), spec.num_classes), generator=g)
    y = (X.flatten(1) @ teacher).argmax(1)
    fisher = estimate_fisher(model, X, y, batch_size=64, min_batches=4, max_batches=4)
    return model, X, y, fisher


def _mask_checksum(mask: torch.Tensor) -> int:
    """Σ (i + 1) over the kept flat positions: two masks with the same count but other
    positions differ."""
    idx = torch.nonzero(mask.flatten()).flatten().to(torch.int64)
    return int((idx + 1).sum())


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    model, X, y, fisher = _model_and_data(case["model"])
    dense = search_plan(model, fisher, Budget("size", 1.0)).plan.layers
    budget, cost = _costs(case, _LutLike()(dense))
    space = SearchSpace(
        **{
            k: case[k]
            for k in ("weight_bits", "act_bits", "prune_levels", "per_layer_prune")
            if k in case
        }
    )
    res = search_plan(
        model,
        fisher,
        budget,
        space,
        cost=cost,
        algorithm=case.get("algorithm", "greedy"),
        refresh_every=10,
        refresh_data=(X, y),
        model_name=case["model"],
        seed=0,
    )
    plan = res.plan
    return {
        "id": case["id"],
        "layers": [
            {
                "name": lp.name,
                "weight_bits": lp.weight_bits,
                "act_bits": lp.act_bits,
                "n_nonzero": lp.n_nonzero,
                "mask_checksum": _mask_checksum(res.masks[lp.name]),
            }
            for lp in plan.layers
        ],
        "moves": [s.move for s in plan.path],
        "path_length": len(plan.path),
        "expansions": res.expansions,
        "refreshes": res.refreshes,
        "refinements": res.refinements,
        "achieved_cost": plan.achieved_cost,
        "predicted_fit": plan.predicted_fit,
        "final_g": plan.path[-1].g,
    }


@functools.cache
def _golden() -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in json.loads(FIXTURE.read_text())["cases"]}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_plan_equals_the_golden_plan(case):
    want = _golden()[case["id"]]
    got = run_case(case)
    for key in ("layers", "moves", "path_length", "expansions", "refreshes", "refinements"):
        assert got[key] == want[key], key
    for key in ("achieved_cost", "predicted_fit", "final_g"):
        assert got[key] == pytest.approx(want[key], rel=REL, abs=0.0), key
        assert math.isfinite(got[key])


def test_fixture_covers_every_case_and_nontrivial_searches():
    golden = _golden()
    assert sorted(golden) == sorted(c["id"] for c in CASES)
    # the golden plans exercise the path search, the Fisher refresh and the budget fill
    assert all(g["expansions"] > 0 for g in golden.values())
    assert any(g["refreshes"] > 0 for g in golden.values())
    assert any(g["refinements"] > 0 for g in golden.values())
    moves = {m for g in golden.values() for m in g["moves"]}
    for kind in ("w", "a", "prune", "layer-prune"):  # each kind of move, forward and reverse
        for reverse in (False, True):
            assert any(
                m.startswith("refine:") == reverse and _move_kind(m) == kind for m in moves
            ), (kind, reverse)


def _move_kind(move: str) -> str:
    parts = move.removeprefix("refine:").split(":")
    if len(parts) == 1:  # "start"
        return parts[0]
    if parts[0] == "prune":
        return "prune"
    if parts[1] == "prune":
        return "layer-prune"
    return parts[1][0]


def _write() -> None:
    torch.set_num_threads(1)
    cases = [run_case(c) for c in CASES]
    FIXTURE.write_text(json.dumps({"cases": cases}, indent=1) + "\n")
    for c in cases:
        print(c["id"], c["expansions"], c["refreshes"], c["refinements"], c["achieved_cost"])


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {sys.argv[0]} --write  (regenerates {FIXTURE})")
    _write()
