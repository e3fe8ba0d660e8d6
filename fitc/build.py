"""Build a :class:`~fitc.artifacts.CompressionPlan` as a Brevitas model, and save / reload it.

Contract:

- :func:`apply_plan` deep-copies the float model (the caller's model is never touched), traces it
  with ``torch.fx`` and returns a ``torch.fx.GraphModule`` whose modules keep their qualified names:
  every ``nn.Linear`` / ``nn.Conv2d`` of the plan becomes a ``QuantLinear`` / ``QuantConv2d`` with a
  power-of-two per-tensor weight quantizer (``Int8WeightPerTensorFixedPoint`` at the planned
  ``weight_bits``; exactly :func:`fixed_point_quantize`) and an integer bias (see :func:`bias_bit_width`); the float weights are copied and the
  mask is multiplied in, so pruned weights are exactly zero. A signed power-of-two input quantizer
  (``input_quant``) is inserted at the very front, and each ``nn.ReLU`` becomes an unsigned
  power-of-two ``QuantReLU``.
- Activation bits: a layer's ``act_bits`` is the width of the quantizer its input comes from,
  found on the traced graph by walking back from the layer through shape-only / max-pooling ops
  (``MaxPool2d``, ``Flatten``, ``Identity``, ``Dropout``, ``view``/``reshape``/``flatten``) to the
  network input (-> ``input_quant``) or an ``nn.ReLU``. A residual ``+`` is not walked through: its
  result is always re-quantized by the ReLU that follows, so a ReLU feeding both a conv and a
  residual add takes the bits of the conv. Layers sharing one quantizer must have equal
  ``act_bits`` in the plan. A quantizer that feeds no planned layer (e.g. a ReLU feeding only an add)
  gets the widest ``act_bits`` of the plan. ``nn.AdaptiveAvgPool2d`` / ``nn.AvgPool2d`` leave the
  quantization grid, so a signed or unsigned quantizer ``<pool>_quant`` at the consumer's
  ``act_bits`` is inserted right after them and is that consumer's input quantizer.
- Anything else raises :class:`~fitc.errors.UnsupportedLayerError` naming the module (or graph node)
  and its type: modules with parameters other than Linear/Conv2d, activations other than nn.ReLU,
  functional ReLUs, layer inputs that are not quantized.
- The built model is the plan: right after the build, :func:`measure_layers` equals the plan's
  bits and non-zero counts layer by layer (checked; :class:`~fitc.errors.ArtifactError` otherwise).
- Masks live outside the module (never ``torch.nn.utils.prune``). :mod:`fitc.finetune` keeps them.
- :func:`save_quant_model` writes ``{"format", "state_dict", "masks"}`` (tensors, strings only:
  ``weights_only=True`` loads it); :func:`load_quant_model` rebuilds with :func:`apply_plan` and
  loads the state, reproducing the saved model's outputs bit for bit.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
import os
from typing import Any

import torch
from torch import fx, nn

from fitc.artifacts import Budget, CompressionPlan, LayerPlan
from fitc.errors import ArtifactError, UnsupportedLayerError
from fitc.quant import (
    calibrate,
    evaluate_quant,
    fixed_point_quantize,
    int_weight,
    is_calibrated,
    out_positions,
    predict,
    quant_layers,
    weight_scale,
)
from fitc.rundir import load_torch, save_torch

log = logging.getLogger(__name__)

FORMAT = "fitc.quant_model/1"
INPUT_QUANT = "input_quant"
# Accumulators of the exported graph are int32 in onnxruntime's QCDQ bias (DequantizeLinear of an
# int32 initializer); hls4ml takes any width. A bias is never wider than this.
MAX_BIAS_BITS = 32

# Ops a quantized value passes through unchanged (same grid, same scale).
_GRID_MODULES = (nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_GRID_METHODS = {"view", "reshape", "flatten", "contiguous"}
_GRID_FUNCTIONS = {torch.flatten, torch.reshape}
# Ops that leave the grid: a quantizer is inserted after them.
_AVG_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
# Other ops allowed in the graph (their result is never a layer input without a quantizer).
_OK_FUNCTIONS = {operator.add, torch.add, operator.getitem, getattr}
_OK_METHODS = _GRID_METHODS | {"size", "add"}


# ---------------------------------------------------------------------------------------------
# Quantizers


def bias_bit_width(weight_bits: int, act_bits: int, fan_in: int) -> int:
    """Bit width of a layer's integer bias (its scale is input scale × weight scale).

    The dot product of ``fan_in`` weights (narrow signed ``weight_bits``: |q| ≤ 2^(wb-1) - 1) and
    inputs (``act_bits``, signed |a| ≤ 2^(ab-1) or unsigned a ≤ 2^ab - 1) has magnitude below
    ``fan_in · 2^(wb-1) · 2^ab ≤ 2^(wb + ab - 1 + ceil(log2 fan_in))``, so it fits a signed integer
    of ``P = wb + ab + ceil(log2 fan_in)`` bits. The bias gets those ``P`` bits: it can shift the
    dot product by as much as its whole range (a larger bias only makes the neuron constant), and
    dot product + bias then fits ``P + 1`` bits, which is the accumulator hls4ml sizes from these
    types, so it can never overflow. ``P`` is capped at 32 (int32 bias of the QCDQ graph).
    Examples: 8-bit weights and activations, fan_in 64 → 22 bits; resnet-style 3×3×64 conv → 26.
    """
    p = weight_bits + act_bits + max(0, math.ceil(math.log2(fan_in)))
    return min(p, MAX_BIAS_BITS)


def _weight_quant_kwargs(weight_bits: int, bias_bits: int) -> dict[str, Any]:
    from brevitas.quant import Int8WeightPerTensorFixedPoint
    from brevitas.quant.scaled_int import IntBias

    return {
        "weight_quant": Int8WeightPerTensorFixedPoint,
        "weight_bit_width": weight_bits,
        "bias_quant": IntBias,
        "bias_bit_width": bias_bits,
        "return_quant_tensor": False,
    }


def _act_quant(bits: int, signed: bool, return_quant_tensor: bool = True) -> nn.Module:
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFixedPoint, Uint8ActPerTensorFixedPoint

    quant = Int8ActPerTensorFixedPoint if signed else Uint8ActPerTensorFixedPoint
    return qnn.QuantIdentity(
        act_quant=quant, bit_width=bits, return_quant_tensor=return_quant_tensor
    )


def _quant_relu(bits: int, return_quant_tensor: bool) -> nn.Module:
    import brevitas.nn as qnn
    from brevitas.quant import Uint8ActPerTensorFixedPoint

    return qnn.QuantReLU(
        act_quant=Uint8ActPerTensorFixedPoint,
        bit_width=bits,
        return_quant_tensor=return_quant_tensor,
    )


def _quant_layer(mod: nn.Module, weight_bits: int, bias_bits: int) -> nn.Module:
    import brevitas.nn as qnn

    kw = _weight_quant_kwargs(weight_bits, bias_bits)
    if isinstance(mod, nn.Linear):
        return qnn.QuantLinear(mod.in_features, mod.out_features, bias=mod.bias is not None, **kw)
    return qnn.QuantConv2d(
        mod.in_channels,
        mod.out_channels,
        mod.kernel_size,
        stride=mod.stride,
        padding=mod.padding,
        dilation=mod.dilation,
        groups=mod.groups,
        bias=mod.bias is not None,
        **kw,
    )


def _fan_in(mod: nn.Module) -> int:
    if isinstance(mod, nn.Linear):
        return mod.in_features
    return (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]


def _kind(mod: nn.Module) -> str | None:
    if isinstance(mod, nn.Conv2d):
        return "conv2d"
    if isinstance(mod, nn.Linear):
        return "linear"
    return None


# ---------------------------------------------------------------------------------------------
# Graph analysis


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {node.target} ({type(modules[node.target]).__name__})"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)} (node {node.name})"
    if node.op == "call_method":
        return f"method .{node.target}() (node {node.name})"
    if node.op == "placeholder":
        return f"input {node.name}"
    return f"{node.op} {node.target} (node {node.name})"


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # data-dependent control flow, unsupported Python constructs
        raise UnsupportedLayerError(
            f"{type(model).__name__} cannot be traced by torch.fx ({e.__class__.__name__}: {e}); "
            "fitc builds models whose forward is a fixed graph of modules"
        ) from e


def _check_graph(gm: fx.GraphModule, plan: CompressionPlan) -> None:
    """Every op must be one fitc can build; every module with parameters must be a planned layer."""
    modules = dict(gm.named_modules())
    planned = {lp.name for lp in plan.layers}
    for name, mod in gm.named_modules():
        if _kind(mod) is None and any(True for _ in mod.parameters(recurse=False)):
            raise UnsupportedLayerError(
                f"module {name} ({type(mod).__name__}) has parameters; fitc builds only nn.Linear "
                "and nn.Conv2d layers (fold normalisation layers into them first)"
            )
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(
            f"the model takes {len(placeholders)} inputs; fitc needs exactly one"
        )
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = modules[node.target]
            if _kind(mod) is not None:
                if node.target not in planned:
                    raise ArtifactError(
                        f"layer {node.target} ({type(mod).__name__}) is not in the plan; "
                        f"plan layers: {sorted(planned)}"
                    )
                if isinstance(mod, nn.Conv2d) and mod.padding_mode != "zeros":
                    raise UnsupportedLayerError(
                        f"module {node.target} (Conv2d) uses padding_mode={mod.padding_mode!r}; "
                        "only 'zeros' is supported"
                    )
            elif not isinstance(mod, (nn.ReLU, *_GRID_MODULES, *_AVG_MODULES)):
                raise UnsupportedLayerError(
                    f"module {node.target} ({type(mod).__name__}) is not supported: fitc builds "
                    "Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Identity "
                    "and Dropout modules"
                )
        elif node.op == "call_function" and node.target not in _OK_FUNCTIONS | _GRID_FUNCTIONS:
            fn = getattr(node.target, "__name__", str(node.target))
            hint = " (use an nn.ReLU module)" if "relu" in fn else ""
            raise UnsupportedLayerError(
                f"function {fn} (node {node.name}) is not supported{hint}; fitc builds modules, "
                "residual additions and reshapes"
            )
        elif node.op == "call_method" and node.target not in _OK_METHODS:
            hint = " (use an nn.ReLU module)" if "relu" in str(node.target) else ""
            raise UnsupportedLayerError(
                f"method .{node.target}() (node {node.name}) is not supported{hint}"
            )
        elif node.op == "get_attr":
            raise UnsupportedLayerError(
                f"attribute {node.target} (node {node.name}) is used directly in forward; fitc "
                "builds only parameters owned by nn.Linear / nn.Conv2d modules"
            )


def _input_source(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    """Walk back from a layer's input through grid-preserving ops to its quantizer node."""
    while True:
        if node.op == "placeholder":
            return node
        if node.op == "call_module":
            mod = modules[node.target]
            if isinstance(mod, (nn.ReLU, *_AVG_MODULES)):
                return node
            if isinstance(mod, _GRID_MODULES):
                node = node.args[0]
                continue
        if (node.op == "call_method" and node.target in _GRID_METHODS) or (
            node.op == "call_function" and node.target in _GRID_FUNCTIONS
        ):
            node = node.args[0]
            continue
        return node


def _signed_source(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the values reaching an average pool can be negative (not straight from a ReLU)."""
    src = _input_source(node.args[0], modules)
    return not (src.op == "call_module" and isinstance(modules[src.target], nn.ReLU))


def _reaches_output(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    for user in node.users:
        if user.op == "output":
            return True
        grid = (
            (user.op == "call_module" and isinstance(modules[user.target], _GRID_MODULES))
            or (user.op == "call_method" and user.target in _GRID_METHODS)
            or (user.op == "call_function" and user.target in _GRID_FUNCTIONS)
        )
        if grid and _reaches_output(user, modules):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Build


def apply_plan(
    model: nn.Module,
    plan: CompressionPlan,
    masks: dict[str, torch.Tensor] | None,
    *,
    check: bool = True,
) -> fx.GraphModule:
    """Return the Brevitas model of ``plan`` built from a deep copy of the float ``model``.

    ``masks`` maps each planned layer to a bool tensor shaped like its weight (True = kept); None
    keeps every weight. With ``check`` (default) the built model's weight bits, activation bits and
    non-zero counts are compared with the plan (:class:`ArtifactError` naming the layer if not).
    The result is in eval mode; calibrate its activation scales (:func:`calibrate`) before use.
    """
    gm = _trace(copy.deepcopy(model))
    _check_graph(gm, plan)
    modules = dict(gm.named_modules())
    masks = dict(masks or {})
    layer_nodes: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and _kind(modules[node.target]) is not None:
            if node.target in layer_nodes:
                raise UnsupportedLayerError(
                    f"module {node.target} ({type(modules[node.target]).__name__}) is called more "
                    "than once; fitc needs one module per layer"
                )
            layer_nodes[node.target] = node

    # Validate the plan against the model.
    for lp in plan.layers:
        if lp.name not in modules:
            raise ArtifactError(f"plan layer {lp.name} does not exist in {type(model).__name__}")
        mod = modules[lp.name]
        if _kind(mod) != lp.kind:
            raise ArtifactError(
                f"plan layer {lp.name} is {lp.kind!r} but the model's module is {type(mod).__name__}"
            )
        if lp.name not in layer_nodes:
            raise ArtifactError(f"plan layer {lp.name} is never called in the model's forward")
        if mod.weight.numel() != lp.n_weights or _fan_in(mod) != lp.fan_in:
            raise ArtifactError(
                f"plan layer {lp.name}: plan has n_weights={lp.n_weights}, fan_in={lp.fan_in}; the "
                f"model has {mod.weight.numel()}, {_fan_in(mod)} (plan made for another model?)"
            )
        m = masks.get(lp.name)
        if m is not None and (m.dtype != torch.bool or tuple(m.shape) != tuple(mod.weight.shape)):
            raise ArtifactError(
                f"mask of layer {lp.name}: expected a bool tensor of shape "
                f"{tuple(mod.weight.shape)}, got {m.dtype} {tuple(m.shape)}"
            )
    extra = set(masks) - {lp.name for lp in plan.layers}
    if extra:
        raise ArtifactError(f"masks given for layers not in the plan: {sorted(extra)}")

    # Which quantizer feeds each layer, and the bits each quantizer needs.
    feeders: dict[str, str] = {}
    wanted: dict[str, set[int]] = {}
    avg_nodes: dict[str, fx.Node] = {}
    for lp in plan.layers:
        node = layer_nodes[lp.name]
        src = _input_source(node.args[0], modules)
        if src.op == "placeholder":
            qname = INPUT_QUANT
        elif src.op == "call_module" and isinstance(modules[src.target], nn.ReLU):
            qname = src.target
        elif src.op == "call_module" and isinstance(modules[src.target], _AVG_MODULES):
            qname = f"{src.target}_quant"
            avg_nodes[qname] = src
            pool_src = _input_source(src.args[0], modules)
            if not (
                pool_src.op == "placeholder"
                or (pool_src.op == "call_module" and isinstance(modules[pool_src.target], nn.ReLU))
            ):
                raise UnsupportedLayerError(
                    f"average pool {src.target} takes its input from "
                    f"{_describe(pool_src, modules)}, which is not quantized; put an nn.ReLU "
                    "before the pool (hls4ml averages quantized values only)"
                )
        else:
            raise UnsupportedLayerError(
                f"layer {lp.name} ({type(modules[lp.name]).__name__}) takes its input from "
                f"{_describe(src, modules)}, which is not quantized; a Linear/Conv2d input must come "
                "from the network input or an nn.ReLU module (through pooling/flatten only)"
            )
        feeders[lp.name] = qname
        wanted.setdefault(qname, set()).add(lp.act_bits)
    for qname, bits in wanted.items():
        if len(bits) > 1:
            users = sorted(n for n, q in feeders.items() if q == qname)
            raise ArtifactError(
                f"layers {users} share the input quantizer {qname} but the plan gives them "
                f"act_bits {sorted(bits)}; layers fed by one quantizer must have equal act_bits"
            )
    default_bits = max(lp.act_bits for lp in plan.layers)
    qbits = {q: next(iter(b)) for q, b in wanted.items()}

    # Replace the layers and the ReLUs, keeping qualified names.
    for lp in plan.layers:
        mod = modules[lp.name]
        bias_bits = bias_bit_width(lp.weight_bits, lp.act_bits, lp.fan_in)
        qmod = _quant_layer(mod, lp.weight_bits, bias_bits)
        with torch.no_grad():
            w = mod.weight.detach().clone()
            if lp.name in masks:
                w = w * masks[lp.name].to(w.dtype)
            qmod.weight.copy_(w)
            if mod.bias is not None:
                qmod.bias.copy_(mod.bias.detach())
        _set_module(gm, lp.name, qmod)
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.ReLU):
            bits = qbits.get(node.target, default_bits)
            qbits.setdefault(node.target, bits)
            _set_module(gm, node.target, _quant_relu(bits, not _reaches_output(node, modules)))

    # The input quantizer, and a quantizer after each average pool that feeds a layer.
    if INPUT_QUANT in modules:
        raise UnsupportedLayerError(f"the model already has a module named {INPUT_QUANT!r}")
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    # Whether each pool sees negative values, decided before input_quant joins the graph.
    signed = {q: _signed_source(n, modules) for q, n in avg_nodes.items()}
    in_bits = qbits.setdefault(INPUT_QUANT, default_bits)
    _insert_after(gm, placeholder, INPUT_QUANT, _act_quant(in_bits, signed=True))
    for qname, node in avg_nodes.items():
        if qname in modules:
            raise UnsupportedLayerError(f"the model already has a module named {qname!r}")
        _insert_after(gm, node, qname, _act_quant(qbits[qname], signed=signed[qname]))
    gm.graph.lint()
    gm.recompile()
    gm.meta["fitc"] = {
        "format": FORMAT,
        "input_quantizers": feeders,
        "quantizer_bits": qbits,
        "bias_bits": {
            lp.name: bias_bit_width(lp.weight_bits, lp.act_bits, lp.fan_in) for lp in plan.layers
        },
    }
    gm.eval()
    if check:
        check_against_plan(plan, measure_layers(gm, plan))
    return gm


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _insert_after(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module) -> None:
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(new)
    new.args = (node,)


def check_against_plan(plan: CompressionPlan, measured: tuple[LayerPlan, ...]) -> None:
    for lp, m in zip(plan.layers, measured, strict=True):
        for key in ("weight_bits", "act_bits", "n_nonzero"):
            if getattr(lp, key) != getattr(m, key):
                raise ArtifactError(
                    f"layer {lp.name}: the built model has {key}={getattr(m, key)} but the plan "
                    f"says {getattr(lp, key)} (the plan's quantizer simulation or masks do not "
                    "match the float model)"
                )


def _meta(qmodel: nn.Module) -> dict[str, Any]:
    meta = getattr(qmodel, "meta", {}).get("fitc")
    if meta is None:
        raise ArtifactError("not a model built by fitc.build.apply_plan (no build metadata)")
    return meta


def measure_layers(
    qmodel: nn.Module, plan: CompressionPlan, *, input_shape: tuple[int, ...] | None = None
) -> tuple[LayerPlan, ...]:
    """Per-layer plan entries recomputed from the built model, in the plan's order.

    ``weight_bits`` from each layer's weight quantizer, ``act_bits`` from the quantizer feeding it,
    ``n_nonzero`` from its integer weights, ``n_weights``/``fan_in`` from its shape. The number of
    output positions is measured with one forward pass when ``input_shape`` (no batch dimension) is
    given, and taken from the plan otherwise.
    """
    meta = _meta(qmodel)
    positions = (
        out_positions(qmodel, quant_layers(qmodel), input_shape) if input_shape is not None else {}
    )
    out = []
    for lp in plan.layers:
        layer = qmodel.get_submodule(lp.name)
        qname = meta["input_quantizers"][lp.name]
        act = qmodel.get_submodule(qname).act_quant
        q = int_weight(layer)
        out.append(
            LayerPlan(
                name=lp.name,
                kind=_kind(layer) or lp.kind,
                weight_bits=int(layer.weight_quant.bit_width().item()),
                act_bits=int(act.bit_width().item()),
                n_weights=q.numel(),
                n_nonzero=int(torch.count_nonzero(q).item()),
                fan_in=_fan_in(layer),
                out_positions=positions.get(lp.name, lp.out_positions),
            )
        )
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Hand-made plans (tests, baselines): uniform or per-layer bits with given masks


def float_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The float model's Linear/Conv2d layers by qualified name, in definition order."""
    return {n: m for n, m in model.named_modules() if _kind(m) is not None}


def magnitude_masks(
    model: nn.Module, sparsity: float, *, scope: str = "global"
) -> dict[str, torch.Tensor]:
    """Keep-masks pruning the ``sparsity`` fraction of smallest-|w| weights, ranked over all layers
    (``scope="global"``) or within each layer (``"layer"``). Ties are broken by index."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    layers = float_layers(model)
    weights = {n: m.weight.detach().abs().flatten() for n, m in layers.items()}
    if scope == "global":
        allw = torch.cat(list(weights.values()))
        n_prune = int(round(sparsity * allw.numel()))
        keep = torch.ones(allw.numel(), dtype=torch.bool)
        keep[torch.argsort(allw, stable=True)[:n_prune]] = False
        out, i = {}, 0
        for n, m in layers.items():
            k = m.weight.numel()
            out[n] = keep[i : i + k].reshape(m.weight.shape).clone()
            i += k
        return out
    if scope == "layer":
        out = {}
        for n, m in layers.items():
            w = weights[n]
            keep = torch.ones(w.numel(), dtype=torch.bool)
            keep[torch.argsort(w, stable=True)[: int(round(sparsity * w.numel()))]] = False
            out[n] = keep.reshape(m.weight.shape)
        return out
    raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")


def make_plan(
    model: nn.Module,
    *,
    model_name: str,
    input_shape: tuple[int, ...],
    weight_bits: int | dict[str, int] = 8,
    act_bits: int | dict[str, int] = 8,
    masks: dict[str, torch.Tensor] | None = None,
    budget: Budget | None = None,
) -> CompressionPlan:
    """A plan for ``model`` with the given bits and masks; ``n_nonzero`` is counted on the masked
    weights quantized with :func:`fixed_point_quantize` (what :func:`apply_plan` will build), and
    ``achieved_cost`` is the weight size relative to 32-bit float (Σ n_nonzero·bits / Σ n·32)."""
    layers = float_layers(model)
    positions = out_positions(model, layers, input_shape)
    masks = masks or {}
    lps = []
    for name, mod in layers.items():
        wb = weight_bits[name] if isinstance(weight_bits, dict) else weight_bits
        ab = act_bits[name] if isinstance(act_bits, dict) else act_bits
        w = mod.weight.detach()
        if name in masks:
            w = w * masks[name].to(w.dtype)
        q, _ = fixed_point_quantize(w, wb)
        lps.append(
            LayerPlan(
                name=name,
                kind=_kind(mod),
                weight_bits=wb,
                act_bits=ab,
                n_weights=w.numel(),
                n_nonzero=int(torch.count_nonzero(q)),
                fan_in=_fan_in(mod),
                out_positions=positions.get(name, 1),
            )
        )
    size = sum(lp.n_nonzero * lp.weight_bits for lp in lps) / sum(32 * lp.n_weights for lp in lps)
    return CompressionPlan(
        model=model_name,
        layers=tuple(lps),
        budget=budget or Budget("size", 1.0),
        achieved_cost=size,
        predicted_fit=0.0,
    )


# ---------------------------------------------------------------------------------------------
# Persistence


def save_quant_model(
    path: str | os.PathLike, qmodel: nn.Module, masks: dict[str, torch.Tensor] | None
) -> None:
    """Write the built model's state and its masks atomically (``weights_only``-loadable)."""
    _meta(qmodel)
    if not is_calibrated(qmodel):
        raise ArtifactError(
            "the model's activation scales are not calibrated: call calibrate() first"
        )
    state = {k: v.detach().clone() for k, v in qmodel.state_dict().items()}
    save_torch(
        path,
        {
            "format": FORMAT,
            "state_dict": state,
            "masks": {k: v.detach().to(torch.bool).clone() for k, v in (masks or {}).items()},
        },
    )


def load_quant_model(
    float_model: nn.Module,
    plan: CompressionPlan,
    masks: dict[str, torch.Tensor] | None,
    path: str | os.PathLike,
) -> fx.GraphModule:
    """Rebuild the model saved by :func:`save_quant_model` (eval mode).

    ``masks`` None uses the masks stored in the file. The rebuilt model's outputs equal the saved
    model's bit for bit.
    """
    blob = load_torch(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "state_dict" not in blob:
        raise ArtifactError(f"{path}: not a fitc quantized model (expected format {FORMAT})")
    if masks is None:
        masks = blob.get("masks") or None
    # The saved (fine-tuned) weights replace the float ones; the plan check happens on those.
    qmodel = apply_plan(float_model, plan, masks, check=False)
    try:
        qmodel.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise ArtifactError(f"{path}: does not match the plan's model ({e})") from e
    qmodel.eval()
    check_against_plan(plan, measure_layers(qmodel, plan))
    return qmodel


__all__ = [
    "MAX_BIAS_BITS",
    "apply_plan",
    "bias_bit_width",
    "calibrate",
    "check_against_plan",
    "evaluate_quant",
    "fixed_point_quantize",
    "float_layers",
    "magnitude_masks",
    "make_plan",
    "int_weight",
    "is_calibrated",
    "load_quant_model",
    "measure_layers",
    "predict",
    "quant_layers",
    "save_quant_model",
    "weight_scale",
]
