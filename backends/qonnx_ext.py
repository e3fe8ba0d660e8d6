"""A channels-last ``AveragePool`` for qonnx 1.0.0, so average pools lower through hls4ml.

Why this module exists:

- hls4ml's ONNX frontend only takes pooling nodes in the ``qonnx.custom_op.channels_last``
  domain ("Please convert the model to channels-last format with qonnx-to-channels-last"), but
  qonnx 1.0.0's ``ConvertToChannelsLastAndClean`` only wraps Conv, MaxPool and
  BatchNormalization (``qonnx/custom_op/channels_last/`` has no AveragePool).
- ``GlobalAveragePool`` is not wrapped either: it keeps a Transpose to NCHW in front of it, and
  hls4ml 1.3.0 then builds a ``GlobalPooling2D`` that reads that NCHW array as if it were NHWC
  (it mixes channels), besides sizing its accumulator too narrow.

What it does:

- :class:`AveragePool_v1` (and the later opset versions) is a channels-last AveragePool custom op
  modelled on qonnx's own ``qonnx.custom_op.channels_last.max_pool`` wrapper: NHWC in and out,
  executed by qonnx (through onnxruntime on transposed tensors, like every channels-last op) and
  shape-inferred like MaxPool. :func:`register_ops` adds it to the channels-last domain through
  qonnx's public ``add_op_to_domain`` (idempotent).
- :class:`AveragePoolsToChannelsLast` is a qonnx transformation run *before*
  ``ConvertToChannelsLastAndClean``: every standard 4-D ``AveragePool`` / ``GlobalAveragePool``
  becomes ``Transpose(NCHW→NHWC) → channels-last AveragePool → Transpose(NHWC→NCHW)``, exactly as
  qonnx's ``InsertChannelsLastDomainsAndTrafos`` wraps a MaxPool; a ``GlobalAveragePool`` becomes
  an AveragePool whose kernel and stride are the whole H×W plane (the same average). qonnx's own
  clean-up then removes and absorbs the transposes as it does around convolutions. It does not
  depend on import order (qonnx builds its list of wrappable ops once, at import time).
- Only what fitc builds is accepted: no padding, ``ceil_mode=0``, no dilation, 4-D (NCHW)
  tensors; anything else raises :class:`~fitc.errors.UnsupportedLayerError` (hls4ml's average
  pool does not count padding the way ONNX ``count_include_pad=1`` does).

Delete this module when qonnx ships a channels-last AveragePool (``tests/backends`` has a canary).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from qonnx.custom_op.channels_last.base_wrapped_op import (
    ChannelsLastWrappedOp,
    to_channels_first_args,
    to_channels_last_args,
)
from qonnx.custom_op.general.maxpoolnhwc import compute_pool_output_dim
from qonnx.custom_op.registry import add_op_to_domain
from qonnx.transformation.base import Transformation

from fitc.errors import UnsupportedLayerError

DOMAIN = "qonnx.custom_op.channels_last"
AVERAGE_POOL_OPS = ("AveragePool", "GlobalAveragePool")


class AveragePool_v1(ChannelsLastWrappedOp):  # qonnx reads op type and version from the name
    """ONNX AveragePool on an NHWC tensor (2-D pooling only)."""

    _channelsLast_node_types = [*ChannelsLastWrappedOp._channelsLast_node_types, "AveragePool"]

    def get_nodeattr_types(self):
        return {
            "kernel_shape": ("ints", True, []),
            "strides": ("ints", False, [1, 1]),
            # [H_begin, W_begin, H_end, W_end]
            "pads": ("ints", False, [0, 0, 0, 0]),
            "count_include_pad": ("i", False, 0),
            "ceil_mode": ("i", False, 0),
            "auto_pad": ("s", False, "NOTSET"),
            "dilations": ("ints", False, [1, 1]),
        }

    def make_shape_compatible_op(self, model):
        """A Constant of the NHWC output shape (as qonnx's channels-last MaxPool does)."""
        ishape = model.get_tensor_shape(self.onnx_node.input[0])
        if len(ishape) != 4:
            raise ValueError(
                f"channels-last AveragePool {self.onnx_node.name}: 4-D NHWC input needed, got "
                f"shape {ishape}"
            )
        kernel = self.get_nodeattr("kernel_shape")
        strides = self.get_nodeattr("strides")
        pads = self.get_nodeattr("pads")
        ceil_mode = self.get_nodeattr("ceil_mode")
        out_hw = [
            compute_pool_output_dim(ishape[1 + i], kernel[i], strides[i], pads[i], ceil_mode)
            for i in range(2)
        ]
        values = np.zeros([ishape[0], *out_hw, ishape[-1]], dtype=np.float32)
        return helper.make_node(
            "Constant",
            inputs=[],
            outputs=[self.onnx_node.output[0]],
            value=helper.make_tensor(
                name="const_tensor",
                data_type=TensorProto.FLOAT,
                dims=values.shape,
                vals=values.flatten(),
            ),
            name=self.onnx_node.name,
        )

    def verify_node(self):
        info = ChannelsLastWrappedOp.verify_node(self)
        kernel = self.get_nodeattr("kernel_shape")
        if len(kernel) != 2 or len(self.get_nodeattr("strides")) != 2:
            raise RuntimeError(
                f"channels-last AveragePool {self.onnx_node.name}: 2-D kernel_shape and strides "
                "needed"
            )
        if len(self.onnx_node.input) != 1:
            raise RuntimeError(f"AveragePool {self.onnx_node.name} needs exactly 1 data input")
        return [*info, "channels-last AveragePool attributes are valid"]


# qonnx resolves a node's class by "highest version ≤ the model's opset" and runs the wrapped op
# with that version in onnxruntime, so every ONNX version of AveragePool gets its own class.
class AveragePool_v7(AveragePool_v1):
    pass


class AveragePool_v10(AveragePool_v1):
    pass


class AveragePool_v11(AveragePool_v1):
    pass


class AveragePool_v19(AveragePool_v1):
    pass


_OP_CLASSES = (AveragePool_v1, AveragePool_v7, AveragePool_v10, AveragePool_v11, AveragePool_v19)


def register_ops() -> None:
    """Add the channels-last AveragePool to qonnx's op registry (idempotent)."""
    for cls in _OP_CLASSES:
        add_op_to_domain(DOMAIN, cls)


def _ints(node, name: str, default: list[int]) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    return list(default)


def _int(node, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _str(node, name: str, default: str) -> str:
    for a in node.attribute:
        if a.name == name:
            return a.s.decode()
    return default


def _pool_geometry(node, shape: list[int]) -> tuple[list[int], list[int]]:
    """(kernel, strides) of a standard AveragePool/GlobalAveragePool on an NCHW tensor, or
    UnsupportedLayerError for what hls4ml cannot compute the same way."""
    what = f"{node.op_type} node {node.name or node.output[0]}"
    if len(shape) != 4:
        raise UnsupportedLayerError(
            f"{what}: only 2-D average pooling on NCHW tensors lowers to hls4ml, got an input "
            f"of shape {shape}"
        )
    if node.op_type == "GlobalAveragePool":
        return [shape[2], shape[3]], [shape[2], shape[3]]
    kernel = _ints(node, "kernel_shape", [])
    strides = _ints(node, "strides", [1, 1])
    pads = _ints(node, "pads", [0, 0, 0, 0])
    dil = _ints(node, "dilations", [1, 1])
    auto_pad = _str(node, "auto_pad", "NOTSET")
    if (
        len(kernel) != 2
        or any(pads)
        or _int(node, "ceil_mode", 0)
        or any(d != 1 for d in dil)
        or auto_pad not in ("NOTSET", "VALID")
    ):
        raise UnsupportedLayerError(
            f"{what}: kernel {kernel}, strides {strides}, pads {pads}, ceil_mode "
            f"{_int(node, 'ceil_mode', 0)}, dilations {dil}, auto_pad {auto_pad}: only average "
            "pooling without padding, ceil_mode or dilation lowers to hls4ml bit-exactly "
            "(nn.AvgPool2d(k, stride) with padding=0, ceil_mode=False)"
        )
    return kernel, strides


class AveragePoolsToChannelsLast(Transformation):
    """Wrap every standard 4-D AveragePool / GlobalAveragePool into the channels-last domain
    between two transposes (see the module docstring). Needs shapes (run InferShapes first)."""

    def apply(self, model):
        register_ops()
        graph = model.graph
        changed = False
        for node in list(graph.node):
            if node.domain != "" or node.op_type not in AVERAGE_POOL_OPS:
                continue
            ishape = model.get_tensor_shape(node.input[0])
            oshape = model.get_tensor_shape(node.output[0])
            if ishape is None or oshape is None:
                raise UnsupportedLayerError(
                    f"{node.op_type} node {node.name}: tensor shapes unknown; run InferShapes first"
                )
            kernel, strides = _pool_geometry(node, list(ishape))
            nhwc_in = [ishape[i] for i in to_channels_last_args(4)]
            nhwc_out = [oshape[i] for i in to_channels_last_args(4)]
            t_in = model.make_new_valueinfo_name()
            model.set_tensor_shape(t_in, nhwc_in)
            t_out = model.make_new_valueinfo_name()
            model.set_tensor_shape(t_out, nhwc_out)
            pos = list(graph.node).index(node)
            new = helper.make_node(
                "AveragePool",
                [t_in],
                [t_out],
                name=node.name,
                domain=DOMAIN,
                kernel_shape=kernel,
                strides=strides,
                pads=[0, 0, 0, 0],
                count_include_pad=0,
                ceil_mode=0,
            )
            before = helper.make_node(
                "Transpose", [node.input[0]], [t_in], perm=list(to_channels_last_args(4))
            )
            after = helper.make_node(
                "Transpose", [t_out], [node.output[0]], perm=list(to_channels_first_args(4))
            )
            graph.node.remove(node)
            for i, n in enumerate((before, new, after)):
                graph.node.insert(pos + i, n)
            changed = True
        if changed:
            imports = model.get_opset_imports()
            if DOMAIN not in imports:
                version = imports.get("", imports.get("ai.onnx", 11))
                model.model.opset_import.append(helper.make_opsetid(DOMAIN, version))
        return model, False


__all__ = [
    "AVERAGE_POOL_OPS",
    "DOMAIN",
    "AveragePool_v1",
    "AveragePoolsToChannelsLast",
    "register_ops",
]
