"""hls4ml layers against the QONNX graph: which torch layer each one is, and whether its types
hold every value exactly.

Contract:
- :func:`graph_layers` lists the graph's weight layers (MatMul/Gemm/Conv) with their quantized
  weights, named by torch module (``layer_map``); :func:`map_layers` finds each in the hls4ml
  model by its weights.
- :func:`check_precisions` raises :class:`~fitc.errors.PrecisionMismatchError` (layer, field,
  expected, got) unless every weight/bias value is representable, accumulators and results hold
  every possible sum, a plan's bit widths are the layer's, and every average pool's types hold the
  exact average (:func:`average_pool_types`, set in the config by
  :func:`average_pool_precisions`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fitc.artifacts import CompressionPlan
from fitc.errors import (
    ArtifactError,
    FitcError,
    PrecisionMismatchError,
)

log = logging.getLogger(__name__)

WEIGHT_LAYERS = ("Dense", "Conv1D", "Conv2D", "PointwiseConv1D", "PointwiseConv2D")
POOL_LAYERS = ("Pooling1D", "Pooling2D", "GlobalPooling1D", "GlobalPooling2D")


class LoweringError(FitcError):
    """hls4ml could not convert the graph; the message names the graph and hls4ml's reason."""


# --------------------------------------------------------------------------------------------
# Mapping hls4ml layers to torch modules


@dataclass(frozen=True)
class GraphLayer:
    """A weight layer of the QONNX graph, in a layout-free form: ``values`` are its quantized
    weights sorted, ``matrix`` is ``(n_out, fan_in)`` and ``bias`` ``(n_out,)`` (zeros if none)."""

    name: str  # torch module name (or node name when no map is known)
    node: str
    values: np.ndarray
    matrix: np.ndarray
    bias: np.ndarray


def graph_layers(
    proto: onnx.ModelProto,
    layer_map: Mapping[str, str] | None = None,
    plan: CompressionPlan | None = None,
    source: str | Path = "graph",
) -> list[GraphLayer]:
    """The weight layers of a QONNX graph named by torch module. Names come from ``layer_map``
    (torch name → node name); without it from a plan with as many layers (graph order), else the
    node names are used."""
    from fitc.export.qonnx_export import COMPUTE_OPS

    nodes = {n.name: n for n in proto.graph.node}
    if layer_map:
        missing = [f"{k} → {v}" for k, v in layer_map.items() if v not in nodes]
        if missing:
            raise ArtifactError(
                f"layer map entries {missing} name no node of {source}; re-export the graph"
            )
        named = list(layer_map.items())
    else:
        compute = [n.name for n in proto.graph.node if n.op_type in COMPUTE_OPS]
        if plan is not None and len(plan.layers) == len(compute):
            log.warning("no layer map given: naming the graph's layers in plan order")
            named = list(zip([lp.name for lp in plan.layers], compute, strict=True))
        else:
            named = [(c, c) for c in compute]
    out = []
    for torch_name, node_name in named:
        node = nodes[node_name]
        w = _quantized_const(proto, node.input[1])
        if w is None:
            raise ArtifactError(
                f"layer {torch_name} (node {node_name} of {source}) has no constant weight"
            )
        if node.op_type == "Gemm":
            from fitc.export.qonnx_export import attr

            matrix = w if attr(node, "transB", 0) else w.T
        elif node.op_type == "MatMul":
            matrix = w.T
        else:  # Conv: (out, in/groups, *kernel)
            matrix = w.reshape(w.shape[0], -1)
        bias = _bias(proto, node)
        if bias is None:
            bias = np.zeros(matrix.shape[0])
        out.append(GraphLayer(torch_name, node_name, np.sort(w.ravel()), matrix, bias.ravel()))
    return out


def _quantized_const(proto: onnx.ModelProto, tensor: str) -> np.ndarray | None:
    """The value of a constant tensor after its Quant node (float64, in the consumer's layout)."""
    from fitc.export.qonnx_export import const_source, const_value, quant_params

    src = const_source(proto, tensor)
    if src is None:
        return None
    if src.quant_node is None:
        return np.asarray(src.array, dtype=np.float64)
    q = quant_params(proto, src.quant_node)
    raw = const_value(proto, src.quant_node.input[0])
    scale = np.asarray(q.scale, dtype=np.float64)
    if raw is not None and raw.shape == src.array.shape:
        return q.quantize_int(raw) * scale
    if scale.size != 1:
        raise ArtifactError(
            f"Quant node {q.node}: a per-channel scale behind a transpose is not supported"
        )
    return q.quantize_int(src.array) * scale


def _bias(proto: onnx.ModelProto, node: Any) -> np.ndarray | None:
    if len(node.input) > 2 and node.input[2]:
        return _quantized_const(proto, node.input[2])
    if node.op_type == "MatMul":  # MatMul → Add(constant) is a biased dense layer too
        users = [n for n in proto.graph.node if node.output[0] in n.input]
        if len(users) == 1 and users[0].op_type == "Add":
            other = [i for i in users[0].input if i != node.output[0]]
            return _quantized_const(proto, other[0]) if other else None
    return None


def _weight_layers(hls_model: Any) -> list[Any]:
    return [lyr for lyr in hls_model.get_layers() if lyr.class_name in WEIGHT_LAYERS]


def _hls_weights(lyr: Any) -> np.ndarray | None:
    """The layer's weight array, or None where hls4ml compiled it into code (distributed
    arithmetic deletes the arrays after generating the kernel)."""
    w = lyr.weights.get("weight") if hasattr(lyr, "weights") else None
    return None if w is None else np.asarray(w.data, dtype=np.float64)


def map_layers(
    hls_model: Any, prepared: Any, layers: list[GraphLayer], source: str | Path = "graph"
) -> dict[str, GraphLayer]:
    """hls4ml layer name → graph layer.

    Each hls4ml weight layer is named after the node of the prepared graph it was converted from
    (``Dense_MatMul_0`` from ``MatMul_0``); that node's weights identify the graph layer (equal
    sorted values; graph order breaks ties). Where hls4ml keeps weight arrays they must equal the
    graph's — otherwise hls4ml changed them and the firmware would not compute the graph.
    """
    proto = getattr(prepared, "model", prepared)
    free = list(layers)
    by_node: dict[str, GraphLayer] = {}
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        w = _quantized_const(proto, node.input[1])
        if w is None:
            continue
        vals = np.sort(w.ravel())
        hit = next(
            (
                i
                for i, g in enumerate(free)
                if g.values.shape == vals.shape and np.array_equal(g.values, vals)
            ),
            None,
        )
        if hit is None:
            raise PrecisionMismatchError(
                f"node {node.name} of the prepared graph has weights that match no layer of "
                f"{source} (unmatched: {[g.name for g in free]})"
            )
        by_node[node.name] = free.pop(hit)
    if free:
        raise PrecisionMismatchError(
            f"layers {[g.name for g in free]} of {source} have no weight node after qonnx "
            "preparation"
        )
    mapping: dict[str, GraphLayer] = {}
    for lyr in _weight_layers(hls_model):
        cands = [n for n in by_node if lyr.name == n or lyr.name.endswith("_" + n)]
        if not cands:
            raise PrecisionMismatchError(
                f"hls4ml layer {lyr.name} cannot be traced to a node of the prepared graph "
                f"({sorted(by_node)})"
            )
        g = by_node.pop(max(cands, key=len))
        w = _hls_weights(lyr)
        if w is not None and not np.array_equal(np.sort(w.ravel()), g.values):
            raise PrecisionMismatchError(
                f"layer {g.name} (hls4ml {lyr.name}): weights: expected the {g.values.size} "
                f"quantized values of node {g.node} in {source}, got {w.size} different values; "
                "hls4ml changed them, so the firmware would not compute the graph"
            )
        mapping[lyr.name] = g
    if by_node:
        raise PrecisionMismatchError(
            f"layers {[g.name for g in by_node.values()]} of {source} have no weight layer in the "
            "hls4ml model"
        )
    return mapping


# --------------------------------------------------------------------------------------------
# Precision check


@dataclass(frozen=True)
class _Fixed:
    """A fixed-point type as numbers: signed, width, integer bits (incl. sign)."""

    signed: bool
    width: int
    integer: int

    @property
    def frac(self) -> int:
        return self.width - self.integer

    @property
    def lo(self) -> float:
        return -math.ldexp(1.0, self.integer - 1) if self.signed else 0.0

    @property
    def hi(self) -> float:
        top = self.integer - 1 if self.signed else self.integer
        return math.ldexp(1.0, top) - math.ldexp(1.0, -self.frac)

    def holds(self, values: np.ndarray) -> bool:
        v = np.asarray(values, dtype=np.float64)
        return _min_frac(v) <= self.frac and bool(np.all((v >= self.lo) & (v <= self.hi)))


def _fixed(precision: Any, where: str, what: str) -> _Fixed:
    width = getattr(precision, "width", None)
    integer = getattr(precision, "integer", None)
    signed = getattr(precision, "signed", None)
    if width is None or integer is None or signed is None:
        raise PrecisionMismatchError(
            f"{where}: {what} precision: expected a fixed-point or integer type, got {precision}"
        )
    return _Fixed(bool(signed), int(width), int(integer))


def _min_frac(values: np.ndarray) -> int:
    """Fewest fractional bits that represent every value exactly (values are dyadic)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[v != 0]
    if v.size == 0:
        return -1024
    for f in range(-64, 128):
        if np.all(np.mod(np.ldexp(v, f), 1.0) == 0):
            return f
    return 128


def check_precisions(
    hls_model: Any, mapping: Mapping[str, GraphLayer], plan: CompressionPlan | None
) -> None:
    """Raise :class:`PrecisionMismatchError` for the first layer whose types differ from the
    plan's bits or cannot hold its arithmetic exactly (see the module docstring). Under
    distributed arithmetic hls4ml compiles weights, bias and accumulator into an exact adder
    graph and deletes their types; input and result are still checked. Average-pooling layers
    are checked too (:func:`average_pool_types`)."""
    _check_average_pools(hls_model)
    for hls_name, g in mapping.items():
        lyr = hls_model.graph[hls_name]
        where = f"layer {g.name} (hls4ml {lyr.name})"
        lp = plan.layer(g.name) if plan is not None else None
        types = {k[:-2]: v.precision for k, v in lyr.types.items()}
        x_prec = lyr.get_input_variable().type.precision
        res_prec = lyr.get_output_variable().type.precision
        x_t = _fixed(x_prec, where, "input")

        def fail(what: str, expected: str, got: str, where: str = where) -> None:
            raise PrecisionMismatchError(f"{where}: {what}: expected {expected}, got {got}")

        if lp is not None and x_t.width != lp.act_bits:
            fail("input precision", f"{lp.act_bits} bits (plan act_bits)", format_precision(x_prec))
        if "weight" in types:
            w_t = _fixed(types["weight"], where, "weight")
            if lp is not None and (not w_t.signed or w_t.width != lp.weight_bits):
                fail(
                    "weight precision",
                    f"signed, {lp.weight_bits} bits (plan)",
                    format_precision(types["weight"]),
                )
            if not w_t.holds(g.values):
                fail(
                    "weight precision",
                    "every weight value representable",
                    format_precision(types["weight"]),
                )
        if "bias" in types and not _fixed(types["bias"], where, "bias").holds(g.bias):
            fail(
                "bias precision", "every bias value representable", format_precision(types["bias"])
            )

        # Σ w·x + b over the input type's range, per output, as hls4ml accumulates it.
        m = g.matrix
        hi = np.maximum(m * x_t.lo, m * x_t.hi).sum(axis=1) + g.bias
        lo = np.minimum(m * x_t.lo, m * x_t.hi).sum(axis=1) + g.bias
        need_frac = max(x_t.frac + _min_frac(m), _min_frac(g.bias))
        checks = [("result", res_prec)]
        if "accum" in types and "weight" in types:
            checks.insert(0, ("accum", types["accum"]))
        for what, prec in checks:
            t = _fixed(prec, where, what)
            if t.frac < need_frac or lo.min() < t.lo or hi.max() > t.hi:
                fail(
                    f"{what} precision",
                    f"≥ {need_frac} fractional bits and range [{lo.min():g}, {hi.max():g}]",
                    f"{format_precision(prec)} ({t.frac} fractional bits, range [{t.lo:g}, {t.hi:g}])",
                )


# --------------------------------------------------------------------------------------------
# Average pooling: exact types

# How hls4ml 1.3.0 averages (nnet_pooling.h ``avg`` for io_parallel, nnet_pooling_stream.h
# ``reduce_pool`` for io_stream): the window's inputs are summed in ``accum_t``, the sum is divided
# by the window size n in ``accum_t`` (ap_fixed division: the quotient keeps the dividend's
# fractional bits and drops the rest), and the quotient is cast to ``result_t``. The graph's
# AveragePool is followed by a Quant node (fitc.build inserts ``<pool>_quant``), which hls4ml
# turns into a linear activation that rounds ``result_t`` to the quantizer's type. So the emulation
# is exact when (1) ``accum_t`` holds every sum exactly and (2) the truncated quotient is rounded
# by that quantizer exactly as the true average is (derivation in :func:`average_pool_types`).


def average_pool_types(
    x: _Fixed, n: int, out_frac: int | None, where: str
) -> tuple[_Fixed, _Fixed]:
    """``(accum, result)``: the narrowest fixed-point types that make hls4ml's average of ``n``
    inputs of type ``x`` bit-exact, when the average is then quantized to ``out_frac`` fractional
    bits (None: the average itself is the output).

    Integer bits: a sum of n values of x's range lies in ``[n·lo, n·hi]``, inside x's range
    widened by ``c = ceil(log2 n)`` integer bits (same signedness); the average lies in x's range.

    Fractional bits ``F'`` of the quotient, with ``F`` those of x:

    - n a power of two: ``F' = F + log2 n``, the average itself (no truncation at all).
    - otherwise ``F' = max(F, out_frac + 1) + c``. Proof that the truncated quotient ``q`` and the
      true average ``a`` quantize alike: with ``L = max(F, out_frac + 1)``, ``a = s / (n·2^L)``
      for an integer s (the sum is a multiple of ``2^-F``). Every point where the quantizer's
      result can change (ties of round-half-even, and its clip bounds) is a multiple ``t`` of
      ``2^-(out_frac+1)``, so ``a - t`` is an integer multiple of ``1 / (n·2^L)``: either
      ``a = t`` or ``|a - t| ≥ 1 / (n·2^L) ≥ 2^-F'``. Truncation moves a by less than one step
      of ``2^-F'`` (toward zero or down, either way) and leaves it unchanged when ``a`` is on
      that grid (every t is). So no step point lies between ``a`` and ``q`` unless ``q = a``, and
      the (monotone, piecewise constant) quantizer maps both to the same value. Without a
      quantizer after it such an average is not a dyadic number: no fixed type is exact.
    """
    if n < 1:
        raise PrecisionMismatchError(f"{where}: pooling window of {n} values")
    c = (n - 1).bit_length()
    if n & (n - 1) == 0:
        frac = x.frac + c
    elif out_frac is None:
        raise PrecisionMismatchError(
            f"{where}: the average of {n} values (not a power of two) is not followed by a "
            "quantizer, so no fixed-point type holds it exactly; re-quantize the pool's output "
            "or use a window of a power-of-two size"
        )
    else:
        frac = max(x.frac, out_frac + 1) + c
    accum = _Fixed(x.signed, x.integer + c + frac, x.integer + c)
    result = _Fixed(x.signed, x.integer + frac, x.integer)
    return accum, result


def _type_str(t: _Fixed) -> str:
    return f"{'' if t.signed else 'u'}fixed<{t.width},{t.integer}>"


def _quant_type(q: Any, where: str) -> _Fixed:
    """The fixed-point type of a Quant node's output (po2 per-tensor scale, zero zero point)."""
    from fitc.export.qonnx_export import is_power_of_two

    scale = np.asarray(q.scale, dtype=np.float64).ravel()
    if scale.size != 1 or not is_power_of_two(scale) or np.any(np.asarray(q.zeropt) != 0):
        raise LoweringError(
            f"{where}: its quantizer {q.node} needs one power-of-two scale and a zero zero point "
            f"to size the pool exactly, got scale {scale[:4].tolist()}"
        )
    frac = -int(np.frexp(scale[0])[1] - 1)
    bits = int(q.bits)
    if bits != q.bits:
        raise LoweringError(f"{where}: quantizer {q.node} has a fractional bit width {q.bits}")
    return _Fixed(bool(q.signed), bits, bits - frac)


def _next_quant(proto: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    """The Quant node that re-quantizes ``tensor`` (through layout-only ops), or None."""
    users: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    for _ in range(16):
        nxt = users.get(tensor, [])
        if len(nxt) != 1:
            return None
        node = nxt[0]
        if node.op_type in ("Quant", "IntQuant"):
            return node
        if node.op_type not in ("Transpose", "Reshape", "Flatten", "Identity"):
            return None
        tensor = node.output[0]
    return None


def input_precision(onnx_model: Any) -> str | None:
    """The hls4ml type of the firmware's input port: the network's input quantizer, rounding half
    to even and saturating exactly as the Quant node does (``fixed<W,I,RND_CONV,SAT>``), so a
    float fed to the emulation is quantized once, as qonnx does, and the port is W bits wide.
    None when the graph input does not go straight into a Quant node."""
    from fitc.export.qonnx_export import quant_params

    proto = getattr(onnx_model, "model", onnx_model)
    q = _next_quant(proto, proto.graph.input[0].name)
    if q is None:
        return None
    params = quant_params(proto, q)
    if params.rounding_mode.upper() not in ("ROUND", "ROUND_TO_EVEN"):
        raise LoweringError(
            f"input quantizer {q.name}: rounding mode {params.rounding_mode} has no hls4ml "
            "equivalent (fitc builds ROUND, half to even)"
        )
    t = _quant_type(params, f"input quantizer {q.name}")
    sat = "SAT_SYM" if params.narrow and params.signed else "SAT"
    return f"{'' if t.signed else 'u'}fixed<{t.width},{t.integer},RND_CONV,{sat}>"


def average_pool_precisions(onnx_model: Any) -> dict[str, dict[str, str]]:
    """hls4ml ``Precision`` entries (``accum``, ``result``) for every AveragePool node of a
    prepared graph (see :func:`prepare_qonnx`), by node name; see :func:`average_pool_types`.
    The input type is that of the Quant node feeding the pool, the output grid that of the Quant
    node after it."""
    from fitc.export.qonnx_export import act_quant_node, attr, quant_params

    proto = getattr(onnx_model, "model", onnx_model)
    out: dict[str, dict[str, str]] = {}
    for node in proto.graph.node:
        if node.op_type not in ("AveragePool", "GlobalAveragePool"):
            continue
        where = f"average pool {node.name}"
        if node.op_type == "GlobalAveragePool" or node.domain != "qonnx.custom_op.channels_last":
            raise LoweringError(
                f"{where}: not converted to a channels-last AveragePool; prepare the graph with "
                "prepare_qonnx"
            )
        q_in = act_quant_node(proto, node)
        if q_in is None:
            raise LoweringError(
                f"{where}: its input does not come from a Quant node, so its type (and the "
                "accumulator that holds its sums exactly) is unknown"
            )
        x = _quant_type(quant_params(proto, q_in), where)
        n = math.prod(int(k) for k in attr(node, "kernel_shape"))
        q_out = _next_quant(proto, node.output[0])
        out_frac = None if q_out is None else _quant_type(quant_params(proto, q_out), where).frac
        accum, result = average_pool_types(x, n, out_frac, where)
        out[node.name] = {"accum": _type_str(accum), "result": _type_str(result)}
    return out


def _check_average_pools(hls_model: Any) -> None:
    """Raise :class:`PrecisionMismatchError` for an average-pooling layer whose accumulator or
    result type cannot give the exact (or exactly re-quantized) average."""
    layers = list(hls_model.get_layers())
    for lyr in layers:
        if lyr.class_name not in POOL_LAYERS or str(lyr.get_attr("pool_op")) != "Average":
            continue
        if lyr.class_name == "Pooling2D":
            n = int(lyr.get_attr("pool_height")) * int(lyr.get_attr("pool_width"))
        elif lyr.class_name == "Pooling1D":
            n = int(lyr.get_attr("pool_width"))
        elif lyr.class_name == "GlobalPooling2D":
            n = int(lyr.get_attr("in_height")) * int(lyr.get_attr("in_width"))
        else:
            n = int(lyr.get_attr("n_in"))
        x_prec = lyr.get_input_variable().type.precision
        where = f"average pool {lyr.name} ({n} values of {format_precision(x_prec)})"
        x = _fixed(x_prec, where, "input")
        # The quantizer after it: a linear activation, possibly behind reshapes / transposes.
        out_frac, cur = None, lyr
        for _ in range(16):
            users = [u for u in layers if cur.outputs[0] in u.inputs]
            if len(users) != 1:
                break
            cur = users[0]
            if cur.class_name in ("Reshape", "Transpose"):
                continue
            if cur.class_name == "Activation" and str(cur.get_attr("activation")) == "linear":
                out_frac = _fixed(cur.get_output_variable().type.precision, where, "quantizer").frac
            break
        accum, result = average_pool_types(x, n, out_frac, where)
        types = {k[:-2]: v.precision for k, v in lyr.types.items()}
        if "accum" not in types:
            raise PrecisionMismatchError(f"{where}: no accum type; cannot check its sums")
        checks = [
            ("accum", types["accum"], accum, n),
            ("result", lyr.get_output_variable().type.precision, result, 1),
        ]
        for what, prec, need, m in checks:
            t = _fixed(prec, where, what)
            lo, hi = m * x.lo, m * x.hi
            if t.frac < need.frac or lo < t.lo or hi > t.hi:
                raise PrecisionMismatchError(
                    f"{where}: {what} precision: expected ≥ {need.frac} fractional bits and "
                    f"range [{lo:g}, {hi:g}] (e.g. {_type_str(need)}), got {format_precision(prec)} "
                    f"({t.frac} fractional bits, range [{t.lo:g}, {t.hi:g}])"
                )


def describe_layer(lyr: Any, g: GraphLayer) -> dict[str, Any]:
    types = {k[:-2]: v.precision for k, v in lyr.types.items()}
    w = _hls_weights(lyr)
    da = w is None
    w = g.values if w is None else w
    in_code = "in DA kernel"
    return {
        "hls_layer": lyr.name,
        "class": lyr.class_name,
        "onnx_node": g.node,
        "input": format_precision(lyr.get_input_variable().type.precision),
        "weight": in_code if da else format_precision(types.get("weight")),
        "bias": in_code if da else format_precision(types.get("bias")),
        "accum": in_code if da else format_precision(types.get("accum")),
        "result": format_precision(lyr.get_output_variable().type.precision),
        "reuse_factor": int(lyr.get_attr("reuse_factor", 1)),
        "strategy": str(lyr.get_attr("strategy", "")),
        "n_weights": int(w.size),
        "n_nonzero": int(np.count_nonzero(w)),
    }


def format_precision(precision: Any) -> str:
    """``fixed<8,3>`` / ``ufixed<6,2,RND_CONV,SAT>``: hls4ml's type without default modes."""
    if precision is None:
        return "-"
    text = str(precision)
    if "<" not in text:
        return text
    head, args = text.split("<", 1)
    parts = [p.strip() for p in args.rstrip(">").split(",")]
    drop = {"TRN", "WRAP", "0"}
    while len(parts) > 2 and parts[-1] in drop:
        parts.pop()
    return f"{head}<{','.join(parts)}>"
