"""From the user's float network to the network fitc compresses: folding and normalising layers.

Contract:
- :func:`compile_float` takes a float ``nn.Module`` (any ``nn.Sequential`` or module whose
  ``forward`` is a fixed graph that ``torch.fx`` can trace) and the shape of one input sample, and
  returns a :class:`Compiled` network that computes the same function in eval mode:

  * ``BatchNorm1d``/``BatchNorm2d`` right after a ``Linear``/``Conv1d``/``Conv2d`` (that feeds
    nothing else) are folded into it with their running statistics (a layer without a bias gets
    one); any other batch norm is refused.
  * ``Dropout`` (all variants) and ``Identity`` are removed; a ``Softmax``/``LogSoftmax`` whose
    result is the network's output is dropped (the compiled network outputs logits: the argmax,
    and so the accuracy, is unchanged); a softmax anywhere else is refused.
  * A network with 1-D layers (``Conv1d``, ``MaxPool1d``, ``AvgPool1d``, ``AdaptiveAvgPool1d(1)``)
    runs as a 2-D network of height 1: each becomes its 2-D counterpart with a ``(1, k)`` kernel,
    the input ``(C, L)`` becomes ``(C, 1, L)`` and every qualified name is kept. 1-D and 2-D
    layers cannot be mixed.
  * Anything outside :data:`SUPPORTED` raises :class:`~fitc.errors.UnsupportedLayerError` naming
    the module's qualified name, its type and the supported set, before any work is done.

  When nothing needs changing the model is returned as it is (same object type and module order);
  otherwise as a ``torch.fx.GraphModule`` whose modules keep their qualified names.
- :func:`for_training` strips only a trailing softmax (cross-entropy wants logits), keeping batch
  norm and dropout, so fitc can train a user's network as written.
- The input model is never modified.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from fitc.errors import UnsupportedLayerError

__all__ = ["SUPPORTED", "Compiled", "compile_float", "for_training"]

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_SOFTMAX = (nn.Softmax, nn.LogSoftmax)
_SOFTMAX_FUNCTIONS = {torch.softmax, torch.log_softmax, nn.functional.softmax}
_SOFTMAX_FUNCTIONS |= {nn.functional.log_softmax}
_LAYERS_1D = (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)
_LAYERS_2D = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_KEPT = (nn.Linear, nn.ReLU, nn.Flatten, *_LAYERS_2D)
_FOLD_INTO = (nn.Linear, nn.Conv1d, nn.Conv2d)

#: What a user's network may contain (besides residual ``+`` and reshapes in ``forward``).
SUPPORTED: tuple[str, ...] = (
    "Linear",
    "Conv1d",
    "Conv2d",
    "ReLU",
    "MaxPool1d",
    "MaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "AdaptiveAvgPool1d(1)",
    "AdaptiveAvgPool2d(1)",
    "BatchNorm1d",
    "BatchNorm2d",
    "Dropout",
    "Identity",
    "Flatten",
    "Softmax/LogSoftmax (last)",
)
_OK_FUNCTIONS = {operator.add, torch.add, operator.getitem, getattr, torch.flatten, torch.reshape}
_OK_METHODS = {"view", "reshape", "flatten", "contiguous", "size", "add"}


@dataclass(frozen=True)
class Compiled:
    """The network fitc compresses, the input shape it takes, and what was changed to get it."""

    model: nn.Module
    input_shape: tuple[int, ...]
    changes: tuple[str, ...] = field(default_factory=tuple)


def _supported() -> str:
    return ", ".join(SUPPORTED)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # data-dependent control flow, unsupported Python constructs
        raise UnsupportedLayerError(
            f"{type(model).__name__} cannot be traced by torch.fx ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); fitc compresses networks whose forward is "
            "a fixed graph of modules (no data-dependent if/for)"
        ) from e


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _bypass(gm: fx.GraphModule, node: fx.Node) -> None:
    node.replace_all_uses_with(node.args[0])
    gm.graph.erase_node(node)


def _feeds_output(node: fx.Node) -> bool:
    return len(node.users) == 1 and next(iter(node.users)).op == "output"


def _is_softmax(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _SOFTMAX)
    if node.op == "call_function":
        return node.target in _SOFTMAX_FUNCTIONS
    return node.op == "call_method" and node.target in ("softmax", "log_softmax")


def _strip_softmax(gm: fx.GraphModule, changes: list[str]) -> None:
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if _is_softmax(node, modules):
            what = node.target if node.op == "call_module" else node.name
            if not _feeds_output(node):
                kind = (
                    type(modules[node.target]).__name__ if node.op == "call_module" else "softmax"
                )
                raise UnsupportedLayerError(
                    f"module {what} ({kind}) is not the network's last operation; fitc drops a "
                    "trailing Softmax/LogSoftmax only (the firmware outputs logits). Supported: "
                    f"{_supported()}"
                )
            _bypass(gm, node)
            changes.append(f"dropped trailing softmax {what}")


def for_training(model: nn.Module) -> nn.Module:
    """``model`` with a trailing softmax removed (a traced copy), or ``model`` itself."""
    gm = _trace(copy.deepcopy(model))
    changes: list[str] = []
    _strip_softmax(gm, changes)
    if not changes:
        return model
    gm.graph.lint()
    gm.recompile()
    return gm


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` computing ``bn(layer(x))`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedLayerError(
            f"{type(bn).__name__} has no running statistics (track_running_stats=False); fitc "
            "folds batch norms with their running mean and variance"
        )
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    new = copy.deepcopy(layer)
    if new.bias is None:
        new.bias = nn.Parameter(torch.zeros(new.weight.shape[0], dtype=new.weight.dtype))
    shape = (-1,) + (1,) * (new.weight.dim() - 1)
    new.weight.copy_(layer.weight * scale.reshape(shape))
    new.bias.copy_(new.bias * scale + shift)
    return new


def _as_2d(mod: nn.Module, name: str) -> nn.Module:
    if isinstance(mod, nn.Conv1d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise UnsupportedLayerError(
                f"module {name} (Conv1d) uses padding={mod.padding!r}, "
                f"padding_mode={mod.padding_mode!r}; fitc supports integer zero padding"
            )
        new = nn.Conv2d(
            mod.in_channels,
            mod.out_channels,
            (1, mod.kernel_size[0]),
            stride=(1, mod.stride[0]),
            padding=(0, mod.padding[0]),
            dilation=(1, mod.dilation[0]),
            groups=mod.groups,
            bias=mod.bias is not None,
        )
        with torch.no_grad():
            new.weight.copy_(mod.weight.unsqueeze(2))
            if mod.bias is not None:
                new.bias.copy_(mod.bias)
        return new
    if isinstance(mod, nn.MaxPool1d):
        if mod.return_indices or mod.ceil_mode:
            raise UnsupportedLayerError(
                f"module {name} (MaxPool1d) uses return_indices/ceil_mode, which fitc does not build"
            )
        k, s, p, d = (_one(v) for v in (mod.kernel_size, mod.stride, mod.padding, mod.dilation))
        return nn.MaxPool2d((1, k), stride=(1, s), padding=(0, p), dilation=(1, d))
    if isinstance(mod, nn.AvgPool1d):
        k, s, p = (_one(v) for v in (mod.kernel_size, mod.stride, mod.padding))
        return nn.AvgPool2d(
            (1, k), stride=(1, s), padding=(0, p), ceil_mode=mod.ceil_mode,
            count_include_pad=mod.count_include_pad,
        )  # fmt: skip
    if isinstance(mod, nn.AdaptiveAvgPool1d):
        return nn.AdaptiveAvgPool2d(1)
    raise AssertionError(type(mod))


def _one(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _check_module(name: str, mod: nn.Module) -> None:
    ok = isinstance(mod, (*_KEPT, *_LAYERS_1D, *_BATCHNORM, *_DROPOUT, *_SOFTMAX, nn.Identity))
    if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        size = mod.output_size
        ok = all(s == 1 for s in (size if isinstance(size, (tuple, list)) else (size,)))
        if not ok:
            raise UnsupportedLayerError(
                f"module {name} ({type(mod).__name__}(output_size={size})) is not supported: fitc "
                "builds global average pooling (output_size=1) only"
            )
    if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d)):
        pads = mod.padding if isinstance(mod.padding, (tuple, list)) else (mod.padding,)
        if any(int(p) for p in pads) or mod.ceil_mode or getattr(mod, "divisor_override", None):
            raise UnsupportedLayerError(
                f"module {name} ({type(mod).__name__}) uses padding={mod.padding!r}, "
                f"ceil_mode={mod.ceil_mode} or a divisor_override; fitc builds plain average "
                "pooling without padding (hls4ml averages padded windows differently)"
            )
    if not ok:
        raise UnsupportedLayerError(
            f"module {name} ({type(mod).__name__}) is not supported; fitc compresses networks made "
            f"of: {_supported()} (and residual additions, reshapes)"
        )


def _check_node(node: fx.Node) -> None:
    if node.op == "call_function" and node.target not in _OK_FUNCTIONS:
        fn = getattr(node.target, "__name__", str(node.target))
        hint = " (use an nn.ReLU module)" if "relu" in fn else ""
        raise UnsupportedLayerError(
            f"function {fn} (node {node.name}) in forward is not supported{hint}; fitc compresses "
            f"networks made of: {_supported()} (and residual additions, reshapes)"
        )
    if node.op == "call_method" and node.target not in _OK_METHODS:
        hint = " (use an nn.ReLU module)" if "relu" in str(node.target) else ""
        raise UnsupportedLayerError(
            f"method .{node.target}() (node {node.name}) in forward is not supported{hint}; fitc "
            f"compresses networks made of: {_supported()}"
        )
    if node.op == "get_attr":
        raise UnsupportedLayerError(
            f"attribute {node.target} (node {node.name}) is used directly in forward; fitc builds "
            "parameters owned by Linear/Conv modules only"
        )


def compile_float(model: nn.Module, input_shape: tuple[int, ...]) -> Compiled:
    """The network fitc compresses for ``model`` (see the module contract)."""
    root = copy.deepcopy(model).eval()
    gm = _trace(root)
    modules = dict(gm.named_modules())
    changes: list[str] = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(
            f"{type(model).__name__}.forward takes {len(placeholders)} inputs; fitc needs exactly one"
        )
    for node in gm.graph.nodes:
        if node.op == "call_module":
            _check_module(node.target, modules[node.target])
        elif not _is_softmax(node, modules):
            _check_node(node)
    for name, mod in root.named_modules():
        own = any(True for _ in mod.parameters(recurse=False))
        if own and not isinstance(mod, (*_FOLD_INTO, *_BATCHNORM)):
            raise UnsupportedLayerError(
                f"module {name} ({type(mod).__name__}) has parameters; fitc compresses networks "
                f"made of: {_supported()}"
            )

    _strip_softmax(gm, changes)
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = modules[node.target]
        if isinstance(mod, (*_DROPOUT, nn.Identity)):
            _bypass(gm, node)
            changes.append(f"removed {type(mod).__name__} {node.target}")
        elif isinstance(mod, _BATCHNORM):
            src = node.args[0]
            layer = modules.get(src.target) if src.op == "call_module" else None
            if not isinstance(layer, _FOLD_INTO) or len(src.users) != 1:
                raise UnsupportedLayerError(
                    f"module {node.target} ({type(mod).__name__}) does not directly follow a "
                    "Linear/Conv layer that feeds only it; fitc folds batch norm into the layer "
                    "before it"
                )
            folded = _fold(layer, mod)
            _set_module(root, src.target, folded)
            modules[src.target] = folded
            _bypass(gm, node)
            changes.append(f"folded {type(mod).__name__} {node.target} into {src.target}")

    kinds_1d = sorted({n.target for n in gm.graph.nodes if n.op == "call_module"
                       and isinstance(modules[n.target], _LAYERS_1D)})  # fmt: skip
    kinds_2d = sorted({n.target for n in gm.graph.nodes if n.op == "call_module"
                       and isinstance(modules[n.target], _LAYERS_2D)})  # fmt: skip
    shape = tuple(int(d) for d in input_shape)
    if kinds_1d:
        if kinds_2d:
            raise UnsupportedLayerError(
                f"the network mixes 1-D layers ({', '.join(kinds_1d)}) and 2-D layers "
                f"({', '.join(kinds_2d)}); fitc builds one or the other"
            )
        if len(shape) != 2:
            raise UnsupportedLayerError(
                f"the network has 1-D layers ({', '.join(kinds_1d)}) but its input samples have "
                f"shape {shape}; 1-D networks take (channels, length)"
            )
        for name in kinds_1d:
            new = _as_2d(modules[name], name)
            _set_module(root, name, new)
            modules[name] = new
        shape = (shape[0], 1, shape[1])
        changes.append(f"1-D layers run as 2-D layers of height 1: {', '.join(kinds_1d)}")

    if not changes:
        return Compiled(model=copy.deepcopy(model).eval(), input_shape=shape)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    out = fx.GraphModule(root, gm.graph, class_name=type(model).__name__)
    return Compiled(model=out.eval(), input_shape=shape, changes=tuple(changes))
