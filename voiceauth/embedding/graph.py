"""Rewrites of an exported ONNX graph that change how it computes, not what.

:func:`conv1d_as_conv2d` turns every 1-D convolution with constant weights into the same
convolution over a height of 1. ONNX Runtime's CPU provider lays 2-D convolutions out in blocked
channels (NCHWc) and runs them on its tuned kernels; it leaves 1-D ones alone. The speaker
networks are mostly 1-D convolutions (TDNN layers), so the rewrite saves a tenth (CAM++) to a
fifth (ECAPA) of their time on an AVX2 machine (``benchmarks/engine.py`` measures the speed) with
the same output up to float rounding (``tests/test_engine_onnx.py`` checks parity).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_AXIS = "voiceauth_height_axis"
"""Name of the constant ``[2]``: where the height of 1 is inserted and removed again."""


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _as_2d(attrs: dict[str, Any]) -> dict[str, Any]:
    """A 1-D Conv's attributes for the same convolution over ``(1, width)``."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in ("kernel_shape", "strides", "dilations"):
            out[key] = [1, *value]
        elif key == "pads":  # [begin, end] -> [top, begin, bottom, end]
            out[key] = [0, value[0], 0, value[1]]
        else:  # group, auto_pad (SAME_* and VALID mean the same over a height of 1)
            out[key] = value
    return out


def conv1d_as_conv2d(model: Any) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``) in place; returns how many convolutions changed.

    Each ``Conv`` whose weight is a 3-D initializer read by no other node becomes
    Unsqueeze(axis 2) -> Conv with a 4-D weight -> Squeeze(axis 2). Needs opset 13 or later
    (axes as an input).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    targets = {i for i, n in enumerate(graph.node) if n.op_type == "Conv" and n.input[1] in weights
               and len(weights[n.input[1]].dims) == 3 and readers[n.input[1]] == 1}
    if not targets:
        return 0
    nodes = []
    for index, node in enumerate(graph.node):
        if index not in targets:
            nodes.append(node)
            continue
        weight = weights[node.input[1]]
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight)[:, :, None, :], weight.name))
        wide_in, wide_out = f"{node.output[0]}/h1_in", f"{node.output[0]}/h1_out"
        nodes.append(helper.make_node("Unsqueeze", [node.input[0], _AXIS], [wide_in], name=f"{node.name}/h1_in"))
        nodes.append(helper.make_node("Conv", [wide_in, *node.input[1:]], [wide_out], name=node.name,
                                      **_as_2d(_attributes(node))))
        nodes.append(helper.make_node("Squeeze", [wide_out, _AXIS], [node.output[0]], name=f"{node.name}/h1_out"))
    graph.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), _AXIS))
    del graph.node[:]
    graph.node.extend(nodes)
    return len(targets)

