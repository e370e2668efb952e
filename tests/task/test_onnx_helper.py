"""OnnxFaceModel: preprocessing and batching against numpy, graph checks with clear errors."""
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from plsc.errors import PlscError
from tests.task.tiny_quickstart import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "task" / "recognition" / "face"))
from onnx_helper import OnnxFaceModel  # noqa: E402

SIZE = 4  # images 4x4: the "embedding" is a linear map of the 48 normalised pixels
DIM = 5


def linear_model(path, weight, batch="N", weight_type=TensorProto.FLOAT, num_outputs=1, input_dims=4):
    """data [batch, 3, SIZE, SIZE] -> Flatten -> MatMul(weight [48, DIM]) -> embedding [batch, DIM]."""
    shape = [batch, 3, SIZE, SIZE][:input_dims]
    nodes = [helper.make_node("Flatten", ["data"], ["flat"], axis=1)]
    if weight_type == TensorProto.FLOAT:
        initializer = numpy_helper.from_array(weight.astype(np.float32), "weight")
        nodes.append(helper.make_node("MatMul", ["flat", "weight"], ["embedding"]))
    else:  # 16-bit weights cast up at run time: a valid graph that the checker must still refuse
        initializer = numpy_helper.from_array(weight.astype(np.float16), "weight16")
        nodes += [helper.make_node("Cast", ["weight16"], ["weight"], to=TensorProto.FLOAT),
                  helper.make_node("MatMul", ["flat", "weight"], ["embedding"])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, DIM])]
    if num_outputs == 2:
        nodes.append(helper.make_node("Identity", ["flat"], ["flat_out"]))
        outputs.append(helper.make_tensor_value_info("flat_out", TensorProto.FLOAT, [batch, 3 * SIZE * SIZE]))
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("data", TensorProto.FLOAT, shape)],
                              outputs, [initializer])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def expected_embeddings(images, weight, mean=127.5, std=127.5):
    chw = ((images.astype(np.float64) - mean) / std).transpose(0, 3, 1, 2)
    return chw.reshape(len(images), -1) @ weight


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(7, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture
def weight():
    return np.random.default_rng(1).normal(size=(3 * SIZE * SIZE, DIM))


@pytest.mark.parametrize("batch", ["N", 2])  # dynamic batch, and a fixed batch padded at the end
def test_embeddings_match_numpy(tmp_path, images, weight, batch):
    model = OnnxFaceModel(linear_model(tmp_path / "m.onnx", weight, batch=batch), batch_size=3)
    assert model.image_size == (SIZE, SIZE) and model.input_name == "data"
    np.testing.assert_allclose(model.embed(images), expected_embeddings(images, weight), rtol=1e-5, atol=1e-4)
    custom = OnnxFaceModel(tmp_path / "m.onnx", input_mean=0.0, input_std=255.0)
    np.testing.assert_allclose(custom.embed(images), expected_embeddings(images, weight, 0.0, 255.0),
                               rtol=1e-5, atol=1e-5)


def test_graph_checks_are_user_errors(tmp_path, weight):
    cases = [(dict(weight_type=TensorProto.FLOAT16), "16-bit floats"),
             (dict(num_outputs=2), "expected one output"),
             (dict(input_dims=3), "has 3 dimensions, expected 4")]
    for options, message in cases:
        path = linear_model(tmp_path / "bad.onnx", weight, **options)  # saved unchecked, as exporters may
        with pytest.raises(PlscError, match=message):
            OnnxFaceModel(path)
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(PlscError, match="junk.onnx: not a readable ONNX model"):
        OnnxFaceModel(tmp_path / "junk.onnx")
    with pytest.raises(PlscError, match="none.onnx: ONNX model not found"):
        OnnxFaceModel(tmp_path / "none.onnx")
