"""The empirical Fisher of a classifier's compressible layers (weights and input activations).

Contract:
- :func:`compressible_layers` lists the ``nn.Linear``/``nn.Conv2d`` modules by torch qualified
  name, in forward order when an example input is given (registration order otherwise);
  :func:`trace_layers` adds their geometry (fan-in, output positions, which layers read the same
  input tensor) from one forward pass.
- :func:`estimate_fisher` returns a :class:`Fisher`: the diagonal empirical Fisher of every such
  layer's weight, the Fisher trace of every such layer's input activation, and weight/activation
  ranges. The model is evaluated in eval mode with the cross-entropy loss; its parameters are
  never modified (``weights=`` evaluates the Fisher at other weights, functionally).

  * ``method="per_sample"`` (default, the exact EF): ``F = mean_i (∂ℓ_i/∂θ)²`` over the samples
    used, per-sample gradients from ``torch.func`` (``functional_call`` + ``vmap(grad)``); if
    vmap fails the batch is retried in smaller chunks (out of memory) or by a plain per-sample
    autograd loop (anything else).
  * ``method="batch"`` (the reference implementation's approximation): ``F = mean_b B_b·ḡ_b²``
    over the batches used, ḡ_b the gradient of the batch's mean loss.
  * ``method="loop"``: the per-sample EF by a plain autograd loop (slow; for checking).

  The activation trace of a layer is ``mean_i ‖∂ℓ_i/∂a_i‖²`` with ``a`` the layer's input (the
  gradient reaching that layer's input only, through that layer). In batch mode it is
  ``Σ B·(∂L/∂A)²`` averaged over batches, which is the same quantity because a sample's
  activation only affects its own loss. Activation ranges are the mean over batches of
  ``max - min`` of the layer input; weight ranges are ``max - min`` of the weight.
- Estimation walks seeded, shuffled batches and stops once every layer trace's relative variance
  of the mean, ``var_b(T_b / T̄) / n_batches``, is below ``tol`` (after ``min_batches``), at
  ``max_batches``, or when the data runs out (one pass: re-using samples adds nothing to the EF).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fitc.errors import ConfigError, DataError, UnsupportedLayerError

log = logging.getLogger(__name__)

__all__ = [
    "FISHER_METHODS",
    "Fisher",
    "LayerInfo",
    "compressible_layers",
    "estimate_fisher",
    "trace_layers",
]

FISHER_METHODS = ("per_sample", "batch", "loop")
_COMPRESSIBLE = (nn.Linear, nn.Conv2d)


# ------------------------------------------------------------------------------------------
# Progress (tqdm only when asked: the search core needs nothing beyond torch and numpy)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, **kw: Any) -> Any:
    """A tqdm bar (``leave=False``) when ``enabled`` and tqdm is installed, else a no-op."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            return _NoBar()
        return tqdm(leave=False, **kw)
    return _NoBar()


# ------------------------------------------------------------------------------------------
# Layers


@dataclass(frozen=True)
class LayerInfo:
    """A compressible layer and its geometry as seen in one forward pass."""

    name: str
    kind: str  # "linear" | "conv2d"
    n_weights: int
    fan_in: int  # inputs summed per output: in_features, or in_channels/groups·kh·kw
    out_positions: int  # H_out·W_out for a convolution, 1 for a dense layer
    in_shape: tuple[int, ...]  # the layer input, without the batch dimension
    input_group: int  # index (in forward order) of the first layer reading the same tensor


def _kind(module: nn.Module) -> str:
    return "conv2d" if isinstance(module, nn.Conv2d) else "linear"


def _fan_in(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return module.in_channels // module.groups * kh * kw
    return int(module.in_features)


def trace_layers(model: nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    """Run ``model(example)`` once (no grad, eval mode) and describe its compressible layers.

    Layers come in the order they are first called. A layer never called is left out (with a
    warning); a layer called more than once raises :class:`UnsupportedLayerError`.
    """
    modules = {n: m for n, m in model.named_modules() if isinstance(m, _COMPRESSIBLE)}
    if not modules:
        raise UnsupportedLayerError(
            f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to compress"
        )
    calls: list[str] = []
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, tuple[int, ...]] = {}
    handles = []

    def pre(name: str) -> Callable:
        def hook(m: nn.Module, args: tuple) -> None:
            calls.append(name)
            inputs.setdefault(name, args[0])  # holding the tensor keeps its id() unique

        return hook

    def post(name: str) -> Callable:
        def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            outputs.setdefault(name, tuple(out.shape))

        return hook

    for name, m in modules.items():
        handles.append(m.register_forward_pre_hook(pre(name)))
        handles.append(m.register_forward_hook(post(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    counts: dict[str, int] = {}
    for c in calls:
        counts[c] = counts.get(c, 0) + 1
    reused = [n for n, c in counts.items() if c > 1]
    if reused:
        raise UnsupportedLayerError(
            f"layers {reused} are called more than once per forward pass (shared weights); "
            f"give each use its own module"
        )
    unused = [n for n in modules if n not in counts]
    if unused:
        log.warning("layers %s are never called in the forward pass; they are left out", unused)

    order = list(dict.fromkeys(calls))
    first_reader: dict[int, int] = {}
    infos = []
    for i, name in enumerate(order):
        m = modules[name]
        x = inputs[name]
        group = first_reader.setdefault(id(x), i)
        out = outputs[name]
        positions = int(out[-1] * out[-2]) if isinstance(m, nn.Conv2d) else 1
        infos.append(
            LayerInfo(
                name=name,
                kind=_kind(m),
                n_weights=int(m.weight.numel()),
                fan_in=_fan_in(m),
                out_positions=positions,
                in_shape=tuple(x.shape[1:]),
                input_group=group,
            )
        )
    return infos


def compressible_layers(
    model: nn.Module, example: torch.Tensor | None = None
) -> list[tuple[str, nn.Module]]:
    """The model's ``nn.Linear``/``nn.Conv2d`` modules as (qualified name, module).

    With an ``example`` input (batch dimension included) they come in forward order and layers
    the forward never calls are left out; without one, in registration order.
    """
    if example is None:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, _COMPRESSIBLE)]
    modules = dict(model.named_modules())
    return [(info.name, modules[info.name]) for info in trace_layers(model, example)]


# ------------------------------------------------------------------------------------------
# Fisher


@dataclass
class Fisher:
    """Diagonal empirical Fisher of the compressible layers (keys: torch names, forward order).

    ``weight[name]``: EF diagonal, the weight's shape. ``weight_trace``/``act_trace``: traces of
    the weight and input-activation Fisher. ``weight_range``: max - min of the weight;
    ``act_range``: mean over batches of max - min of the layer input.
    """

    weight: dict[str, torch.Tensor]
    weight_trace: dict[str, float]
    act_trace: dict[str, float]
    weight_range: dict[str, float]
    act_range: dict[str, float]
    n_samples: int
    n_batches: int
    converged: bool
    wall_time_s: float
    method: str = "per_sample"
    input_shape: tuple[int, ...] = ()
    trace_history: list[list[float]] = field(default_factory=list, repr=False)

    @property
    def layers(self) -> list[str]:
        return list(self.weight)

    def to_state(self) -> dict[str, Any]:
        """Plain tensors and numbers, loadable with ``torch.load(..., weights_only=True)``."""
        return {
            "weight": {k: v.clone() for k, v in self.weight.items()},
            "weight_trace": dict(self.weight_trace),
            "act_trace": dict(self.act_trace),
            "weight_range": dict(self.weight_range),
            "act_range": dict(self.act_range),
            "n_samples": self.n_samples,
            "n_batches": self.n_batches,
            "converged": self.converged,
            "wall_time_s": self.wall_time_s,
            "method": self.method,
            "input_shape": list(self.input_shape),
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> Fisher:
        d = dict(d)
        d["input_shape"] = tuple(d.get("input_shape", ()))
        return cls(**d)


class _Probes:
    """Forward pre-hooks that add a probe tensor to each layer's input (zero in value: the
    gradient w.r.t. the probe is the gradient w.r.t. that layer's input). Also records input
    ranges when asked."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = modules
        self.probes: Mapping[str, torch.Tensor] | None = None
        self.ranges: dict[str, float] | None = None

    @contextmanager
    def installed(self) -> Iterator[_Probes]:
        handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.modules.items()]
        try:
            yield self
        finally:
            self.probes = None
            self.ranges = None
            for h in handles:
                h.remove()

    def _hook(self, name: str) -> Callable:
        def hook(m: nn.Module, args: tuple) -> tuple | None:
            x = args[0]
            if self.ranges is not None:
                self.ranges[name] = float(x.max() - x.min())
            if self.probes is None:
                return None
            return (x + self.probes[name], *args[1:])

        return hook


def _as_tensors(X: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if X.ndim < 2 or y.ndim != 1 or len(X) != len(y) or len(X) == 0:
        raise DataError(
            f"Fisher data: need X of shape (N, ...) and integer labels y of shape (N,) with N > 0, "
            f"got X {tuple(X.shape)} and y {tuple(y.shape)}"
        )
    if X.is_floating_point() and not torch.isfinite(X).all():
        raise DataError("Fisher data: X contains NaN or inf")
    return X.float(), y.long()


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower()


class _GradEngine:
    """Squared gradients of one batch, summed over its samples (per-sample modes) or B·ḡ²."""

    def __init__(
        self,
        model: nn.Module,
        infos: Sequence[LayerInfo],
        weights: Mapping[str, torch.Tensor] | None,
        chunk_size: int | None,
    ) -> None:
        named = dict(model.named_modules())
        self.model = model
        self.names = [i.name for i in infos]
        self.in_shapes = {i.name: i.in_shape for i in infos}
        self.probes = _Probes({n: named[n] for n in self.names})
        self.wkeys = {n: f"{n}.weight" for n in self.names}
        base = {k: v.detach() for k, v in model.named_parameters()}
        base.update({k: v.detach() for k, v in model.named_buffers()})
        for n in self.names:
            if weights is not None and n in weights:
                old = base[self.wkeys[n]]
                if tuple(weights[n].shape) != tuple(old.shape):
                    raise ConfigError(
                        f"Fisher weights[{n!r}] has shape {tuple(weights[n].shape)}, the layer's "
                        f"weight has {tuple(old.shape)}"
                    )
                base[self.wkeys[n]] = weights[n].detach().to(old.dtype)
        self.weights = {n: base.pop(self.wkeys[n]) for n in self.names}
        self.dtype = next(iter(self.weights.values())).dtype
        self.others = base
        self.chunk_size = chunk_size
        self.vmap_ok = True

    def _call(self, wts: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        state = dict(self.others)
        state.update({self.wkeys[n]: w for n, w in wts.items()})
        out = functional_call(self.model, state, (x,))
        if out.ndim != 2:
            raise UnsupportedLayerError(
                f"the Fisher needs classification logits of shape (N, classes); the model "
                f"returned {tuple(out.shape)}"
            )
        return out

    def _zeros(self, batch: int) -> dict[str, torch.Tensor]:
        return {n: torch.zeros((batch, *self.in_shapes[n]), dtype=self.dtype) for n in self.names}

    def ranges(self, x: torch.Tensor) -> dict[str, float]:
        self.probes.ranges = {}
        with torch.no_grad():
            self._call(self.weights, x)
        r, self.probes.ranges = self.probes.ranges, None
        return r

    # per-sample, vectorised
    def _loss_one(self, wts, probes, x, t):
        self.probes.probes = probes
        out = self._call(wts, x.unsqueeze(0))
        return F.cross_entropy(out, t.unsqueeze(0))

    def _vmap_chunk(self, x: torch.Tensor, t: torch.Tensor):
        g_w, g_a = vmap(grad(self._loss_one, argnums=(0, 1)), in_dims=(None, 0, 0, 0))(
            self.weights, self._zeros(len(x)), x, t
        )
        self.probes.probes = None
        sw = {n: (g * g).sum(0, dtype=torch.float64) for n, g in g_w.items()}
        sa = {n: float((g * g).sum(dtype=torch.float64)) for n, g in g_a.items()}
        return sw, sa

    def _loop_chunk(self, x: torch.Tensor, t: torch.Tensor):
        sw = {n: torch.zeros(w.shape, dtype=torch.float64) for n, w in self.weights.items()}
        sa = dict.fromkeys(self.names, 0.0)
        wts = {n: w.clone().requires_grad_(True) for n, w in self.weights.items()}
        for i in range(len(x)):
            probes = {
                n: torch.zeros((1, *self.in_shapes[n]), dtype=self.dtype, requires_grad=True)
                for n in self.names
            }
            self.probes.probes = probes
            loss = F.cross_entropy(self._call(wts, x[i : i + 1]), t[i : i + 1])
            self.probes.probes = None
            grads = torch.autograd.grad(loss, [*wts.values(), *probes.values()])
            for n, g in zip(self.names, grads[: len(self.names)], strict=True):
                sw[n] += g.double() ** 2
            for n, g in zip(self.names, grads[len(self.names) :], strict=True):
                sa[n] += float((g.double() ** 2).sum())
        return sw, sa

    def per_sample(self, x: torch.Tensor, t: torch.Tensor, loop: bool = False):
        """Σ_i g_i² per weight and Σ_i ‖∂ℓ_i/∂a_i‖² per layer over the batch."""
        if loop or not self.vmap_ok:
            return self._loop_chunk(x, t)
        chunk = self.chunk_size or len(x)
        while True:
            try:
                parts = [
                    self._vmap_chunk(x[s : s + chunk], t[s : s + chunk])
                    for s in range(0, len(x), chunk)
                ]
                break
            except (RuntimeError, MemoryError) as e:
                self.probes.probes = None
                if _is_oom(e) and chunk > 1:
                    chunk = max(1, chunk // 2)
                    self.chunk_size = chunk
                    log.warning("per-sample Fisher: out of memory, retrying in chunks of %d", chunk)
                    continue
                log.warning(
                    "per-sample Fisher: vmap failed (%s: %s); falling back to a per-sample loop",
                    type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "",
                )
                self.vmap_ok = False
                return self._loop_chunk(x, t)
        sw = {n: sum(p[0][n] for p in parts) for n in self.names}
        sa = {n: sum(p[1][n] for p in parts) for n in self.names}
        return sw, sa

    def batch(self, x: torch.Tensor, t: torch.Tensor):
        """B·ḡ² per weight and Σ B·(∂L/∂A)² per layer, L the batch's mean loss."""
        b = len(x)
        wts = {n: w.clone().requires_grad_(True) for n, w in self.weights.items()}
        probes = {n: z.requires_grad_(True) for n, z in self._zeros(b).items()}
        self.probes.probes = probes
        try:
            loss = F.cross_entropy(self._call(wts, x), t)
        finally:
            self.probes.probes = None
        grads = torch.autograd.grad(loss, [*wts.values(), *probes.values()])
        k = len(self.names)
        sw = {n: b * g.double() ** 2 for n, g in zip(self.names, grads[:k], strict=True)}
        sa = {
            n: float(b * (g.double() ** 2).sum())
            for n, g in zip(self.names, grads[k:], strict=True)
        }
        return sw, sa


def estimate_fisher(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 128,
    method: str = "per_sample",
    max_batches: int = 32,
    min_batches: int = 4,
    tol: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
    weights: Mapping[str, torch.Tensor] | None = None,
    chunk_size: int | None = None,
    num_threads: int | None = 1,
) -> Fisher:
    """Estimate the empirical Fisher of ``model`` on ``(X, y)`` (see the module docstring).

    ``weights`` (layer name → tensor) evaluates the Fisher with those layer weights in place of
    the model's, without modifying the model. ``chunk_size`` bounds the samples per vmap call.
    ``num_threads`` sets torch's intra-op threads during estimation (restored afterwards; None
    leaves torch's setting). The default is 1: per-sample gradients are many small products, and
    on a shared 2-core machine two threads were 2.5–5× slower than one (resnet8: 40–80 vs
    140–220 samples/s; digits models up to 10×).
    """
    if method not in FISHER_METHODS:
        raise ConfigError(f"Fisher method must be one of {FISHER_METHODS}, got {method!r}")
    if batch_size < 1 or max_batches < 1 or min_batches < 1:
        raise ConfigError(
            f"Fisher: batch_size, max_batches and min_batches must be ≥ 1, got {batch_size}, "
            f"{max_batches}, {min_batches}"
        )
    t0 = time.perf_counter()
    X, y = _as_tensors(X, y)
    param = next(model.parameters(), None)
    if param is not None and param.is_floating_point():
        X = X.to(param.dtype)
    with intra_op_threads(num_threads):
        fisher = _estimate(
            model,
            X,
            y,
            batch_size,
            method,
            max_batches,
            min_batches,
            tol,
            seed,
            progress,
            weights,
            chunk_size,
        )
    fisher.wall_time_s = time.perf_counter() - t0
    log.info(
        "Fisher (%s): %d samples in %d batches, converged=%s, %.3f s",
        method,
        fisher.n_samples,
        fisher.n_batches,
        fisher.converged,
        fisher.wall_time_s,
    )
    return fisher


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Torch intra-op threads set to ``n`` inside the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _estimate(
    model,
    X,
    y,
    batch_size,
    method,
    max_batches,
    min_batches,
    tol,
    seed,
    progress,
    weights,
    chunk_size,
) -> Fisher:
    t0 = time.perf_counter()
    infos = trace_layers(model, X[:1])
    names = [i.name for i in infos]
    if weights is not None:
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ConfigError(f"Fisher weights: unknown layers {unknown}; layers are {names}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            n_classes = model(X[:1]).shape[-1]
        if int(y.min()) < 0 or int(y.max()) >= n_classes:
            raise DataError(
                f"Fisher data: labels must be in 0..{n_classes - 1}, got {int(y.min())}..{int(y.max())}"
            )
        engine = _GradEngine(model, infos, weights, chunk_size)
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(X), generator=gen)
        n_avail = math.ceil(len(X) / batch_size)
        n_max = min(max_batches, n_avail)

        sum_w = {n: torch.zeros(engine.weights[n].shape, dtype=torch.float64) for n in names}
        sum_a = dict.fromkeys(names, 0.0)
        range_a = dict.fromkeys(names, 0.0)
        history: list[list[float]] = []
        n_samples = 0
        n_batches = 0
        converged = False
        bar = progress_bar(progress, total=n_max, desc=f"Fisher ({method})")
        with engine.probes.installed(), closing(bar):
            for b in range(n_max):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                xb, yb = X[idx], y[idx]
                for n, r in engine.ranges(xb).items():
                    range_a[n] += r
                if method == "batch":
                    sw, sa = engine.batch(xb, yb)
                    scale = 1.0
                else:
                    sw, sa = engine.per_sample(xb, yb, loop=method == "loop")
                    scale = 1.0 / len(xb)
                for n in names:
                    sum_w[n] += sw[n]
                    sum_a[n] += sa[n]
                history.append(
                    [float(sw[n].sum()) * scale for n in names] + [sa[n] * scale for n in names]
                )
                n_samples += len(xb)
                n_batches += 1
                bar.update(1)
                if n_batches >= max(2, min_batches):
                    rel = _relative_variance(history)
                    bar.set_postfix(rel_var=f"{rel:.2e}")
                    if rel < tol:
                        converged = True
                        break
        denom = n_batches if method == "batch" else n_samples
        fw = {n: (sum_w[n] / denom).to(torch.float32) for n in names}
        fisher = Fisher(
            weight=fw,
            weight_trace={n: float(sum_w[n].sum() / denom) for n in names},
            act_trace={n: sum_a[n] / denom for n in names},
            weight_range={
                n: float(engine.weights[n].max() - engine.weights[n].min()) for n in names
            },
            act_range={n: range_a[n] / n_batches for n in names},
            n_samples=n_samples,
            n_batches=n_batches,
            converged=converged,
            wall_time_s=time.perf_counter() - t0,
            method=method,
            input_shape=tuple(X.shape[1:]),
            trace_history=history,
        )
    finally:
        model.train(was_training)
    return fisher


def _relative_variance(history: Sequence[Sequence[float]]) -> float:
    """max over traces of var_b(T_b / mean) / n_batches (traces with zero mean are skipped)."""
    h = np.asarray(history, dtype=np.float64)
    mean = h.mean(axis=0)
    ok = mean > 0
    if not ok.any():
        return 0.0
    rel = np.var(h[:, ok] / mean[ok], axis=0) / len(h)
    return float(rel.max())
