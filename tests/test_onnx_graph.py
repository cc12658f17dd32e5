"""The exported-graph rewrite: 1-D convolutions run as 2-D ones and compute the same."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from voiceauth.embedding.graph import conv1d_as_conv2d


def conv_graph(shared: bool = False) -> onnx.ModelProto:
    """x (1, 8, T) -> dilated grouped Conv1d with bias and pads -> Relu -> Conv1d (k=1); with
    ``shared``, a third node also reads the first convolution's weight."""
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((12, 4, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((5, 12, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", group=2, dilations=[2], pads=[2, 3],
                         kernel_shape=[3], strides=[1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="c2", kernel_shape=[1]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, None])]
    if shared:
        nodes.append(helper.make_node("Identity", ["w1"], ["w1_copy"]))
        outputs.append(helper.make_tensor_value_info("w1_copy", TensorProto.FLOAT, [12, 4, 3]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, None])],
                              outputs, initializer=[w1, b1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def one_d_convs(model: onnx.ModelProto) -> int:
    weights = {init.name: init for init in model.graph.initializer}
    return sum(n.op_type == "Conv" and len(weights[n.input[1]].dims) == 3 for n in model.graph.node)


def test_1d_convolutions_become_2d_with_the_same_output() -> None:
    x = np.random.default_rng(4).standard_normal((1, 8, 57)).astype(np.float32)
    model = conv_graph()
    expected = run(model, x)
    assert conv1d_as_conv2d(model) == 2
    onnx.checker.check_model(model)
    assert one_d_convs(model) == 0
    got = run(model, x)
    assert got.shape == expected.shape == (1, 5, 58)  # 57 + pads 5 - dilated kernel span 4
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_weight_another_node_reads_is_left_alone() -> None:
    x = np.random.default_rng(5).standard_normal((1, 8, 20)).astype(np.float32)
    model = conv_graph(shared=True)
    expected = run(model, x)
    assert conv1d_as_conv2d(model) == 1  # only the second convolution
    assert one_d_convs(model) == 1
    np.testing.assert_allclose(run(model, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_a_graph_without_1d_convolutions_is_unchanged(shared: bool) -> None:
    model = conv_graph(shared)
    conv1d_as_conv2d(model)
    before = model.SerializeToString()
    assert conv1d_as_conv2d(model) == 0
    assert model.SerializeToString() == before
