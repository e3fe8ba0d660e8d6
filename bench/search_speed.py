"""Search speed: per-sample Fisher (torch.func vmap) against a plain per-sample autograd loop, and
Fisher + search wall time for digits-mlp, digits-cnn and resnet8.

Run from the repository root:  python bench/search_speed.py [--budget size=1/16] [--threads N]

Part 1 times both per-sample estimators on the same samples (best of two runs, after one
warm-up call whose time is printed separately: torch.func's first grad in a process imports
torch._dynamo) and prints the maximum relative difference ``max|F_vmap − F_loop| / max|F_loop|``
over the layers.
Part 2 trains each float model (resnet8 for a few epochs only: its timings do not depend on
accuracy), then times ``estimate_fisher`` with its defaults plus ``search_plan`` as the pipeline
runs it (``fitc.config.RunConfig``'s defaults: per-layer pruning, the Fisher re-estimated along
the path every ``refresh_every`` expansions), and prints the expansions, the plan and the accuracy of its
simulated weights without fine-tuning (activations float).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from fitc.artifacts import Budget
from fitc.config import RunConfig
from fitc.fisher import compressible_layers, estimate_fisher
from fitc.models import build_model, evaluate, get_spec, load_data, train_float
from fitc.search import search_plan
from fitc.space import SearchSpace

MODELS = ("digits-mlp", "digits-cnn", "resnet8")
DEFAULTS = RunConfig()
REPEATS = 2


def plain_loop_fisher(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor):
    """The reference: one backward per sample, squared weight gradients averaged."""
    layers = compressible_layers(model, X[:1])
    out = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in layers}
    model.eval()
    for i in range(len(X)):
        model.zero_grad()
        F.cross_entropy(model(X[i : i + 1]), y[i : i + 1]).backward()
        for n, m in layers:
            out[n] += m.weight.grad.double() ** 2
    model.zero_grad()
    return {n: v / len(X) for n, v in out.items()}


def part1(names, n_samples: dict[str, int]) -> None:
    print("\n== per-sample Fisher: torch.func vmap vs plain autograd loop ==")
    print(
        f"{'model':<11} {'samples':>7} {'vmap/s':>9} {'loop/s':>9} {'speed-up':>8} {'max rel diff':>12}"
    )
    for name in names:
        spec = get_spec(name)
        data = load_data(spec)
        model = build_model(name, seed=0)
        n = n_samples[name]
        X, y = torch.as_tensor(data.X_train[:n]), torch.as_tensor(data.y_train[:n])
        kw = dict(batch_size=min(128, n), max_batches=10**6, min_batches=10**6, tol=0.0)
        t = time.perf_counter()
        estimate_fisher(model, X[:8], y[:8], batch_size=8)  # warm-up
        warm = time.perf_counter() - t
        tv = tl = float("inf")
        for _ in range(REPEATS):  # best of: the machine is shared
            t = time.perf_counter()
            fv = estimate_fisher(model, X, y, **kw)
            tv = min(tv, time.perf_counter() - t)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # the same setting estimate_fisher uses by default
            t = time.perf_counter()
            fl = plain_loop_fisher(model, X, y)
            tl = min(tl, time.perf_counter() - t)
            torch.set_num_threads(threads)
        rel = max(
            float((fv.weight[k].double() - fl[k]).abs().max() / fl[k].abs().max()) for k in fl
        )
        print(
            f"{name:<11} {n:>7} {n / tv:>9.0f} {n / tl:>9.0f} {tl / tv:>7.1f}× {rel:>12.2e}"
            f"   (warm-up call {warm:.2f} s)"
        )


def part2(names, budget: Budget, epochs: dict[str, int | None], algorithm: str) -> None:
    print(f"\n== Fisher + search, budget {budget}, {algorithm} ==")
    for name in names:
        spec = get_spec(name)
        data = load_data(spec)
        model = build_model(name, seed=0)
        kw = {} if epochs[name] is None else {"epochs": epochs[name]}
        t = time.perf_counter()
        metrics = train_float(model, data, seed=0, progress=False, num_threads=1, **kw)
        t_train = time.perf_counter() - t
        X, y = torch.as_tensor(data.X_train), torch.as_tensor(data.y_train)
        estimate_fisher(model, X[:8], y[:8], batch_size=8)  # warm-up (torch.func imports)
        t = time.perf_counter()
        fisher = estimate_fisher(model, X, y)
        t_fisher = time.perf_counter() - t
        t = time.perf_counter()
        res = search_plan(
            model,
            fisher,
            budget,
            SearchSpace(per_layer_prune=DEFAULTS.per_layer_prune),
            algorithm=algorithm,
            refresh_every=DEFAULTS.refresh_every,
            refresh_data=(X, y),
            model_name=name,
        )
        t_search = time.perf_counter() - t
        plan = res.plan
        qmodel = build_model(name, seed=0)
        qmodel.load_state_dict(model.state_dict())
        mods = dict(qmodel.named_modules())
        with torch.no_grad():
            for n, w in res.weights.items():
                mods[n].weight.copy_(w)
        acc = evaluate(qmodel, data.X_test, data.y_test)
        print(
            f"{name:<11} Fisher {t_fisher:6.2f} s ({fisher.n_samples} samples, "
            f"{fisher.n_batches} batches, converged={fisher.converged})  search {t_search:6.2f} s "
            f"({res.expansions} expansions, {res.refreshes} Fisher refreshes)  "
            f"total {t_fisher + t_search:6.2f} s"
        )
        print(
            f"{'':<11} float training {t_train:.1f} s ({metrics['epochs']} epochs), float test "
            f"acc {metrics['float_test_accuracy']:.3f}; plan cost {plan.achieved_cost:.4f}, "
            f"test acc without fine-tuning {acc:.3f}, predicted FIT {plan.predicted_fit:.3g}"
        )
        layers = ", ".join(f"{lp.name} w{lp.weight_bits} {lp.sparsity:.0%}" for lp in plan.layers)
        print(f"{'':<11} {layers}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--budget", default="size=1/16")
    ap.add_argument("--algorithm", default="greedy", choices=("greedy", "astar"))
    ap.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    ap.add_argument("--resnet-epochs", type=int, default=3)
    ap.add_argument("--skip-loop", action="store_true", help="skip part 1")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads "
        f"(estimate_fisher and search_plan use 1 by default), {os.cpu_count()} CPUs, "
        f"load average {load:.2f}"
    )
    if not args.skip_loop:
        part1(args.models, {"digits-mlp": 512, "digits-cnn": 512, "resnet8": 256})
    epochs = {"digits-mlp": None, "digits-cnn": None, "resnet8": args.resnet_epochs}
    part2(args.models, Budget.parse(args.budget), epochs, args.algorithm)


if __name__ == "__main__":
    main()
