"""plsc-import: an arcface_torch-named IResNet ONNX graph built here -> plsc weights that reproduce it."""
import numpy as np
import onnx
import onnxruntime
import paddle
import pytest
from onnx import TensorProto, helper, numpy_helper

from plsc.checkpoint import load_backbone_state, load_weights
from plsc.cli import import_main
from plsc.errors import PlscError
from plsc.importer import import_backbone
from plsc.importer.architectures import ARCHITECTURES, Architecture, iresnet_name_map
from plsc.models.iresnet import IResNet
from plsc.registry import MODELS

DEPTHS = (1, 1, 1, 1)
TINY = Architecture("IResNet", {"layers": DEPTHS}, iresnet_name_map(DEPTHS))


class GraphBuilder:
    """arcface_torch's IResNet forward written with ONNX ops, parameters named as in its state dict."""

    def __init__(self, seed, bn_epsilon_overrides=None):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.initializers = [], []
        self.epsilons = bn_epsilon_overrides or {}

    def tensor(self, name, value):
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def conv(self, x, name, c_in, c_out, kernel, stride):
        weight = self.tensor(f"{name}.weight", self.rng.normal(0, 0.1, (c_out, c_in, kernel, kernel)))
        pad = kernel // 2
        self.nodes.append(helper.make_node("Conv", [x, weight], [f"{name}_out"], kernel_shape=[kernel, kernel],
                                           strides=[stride, stride], pads=[pad] * 4))
        return f"{name}_out"

    def bn(self, x, name, channels):
        inputs = [x, self.tensor(f"{name}.weight", self.rng.uniform(0.5, 1.5, channels)),
                  self.tensor(f"{name}.bias", self.rng.normal(0, 0.1, channels)),
                  self.tensor(f"{name}.running_mean", self.rng.normal(0, 0.1, channels)),
                  self.tensor(f"{name}.running_var", self.rng.uniform(0.5, 1.5, channels))]
        self.nodes.append(helper.make_node("BatchNormalization", inputs, [f"{name}_out"],
                                           epsilon=self.epsilons.get(name, 1e-5)))
        return f"{name}_out"

    def prelu(self, x, name, channels):
        slope = self.tensor(f"{name}.weight", self.rng.uniform(0.1, 0.3, channels))
        axes = self.tensor(f"{name}_axes", np.array([1, 2]))
        self.initializers[-1] = numpy_helper.from_array(np.array([1, 2], dtype=np.int64), axes)
        # As an export without constant folding: the [C] slope is unsqueezed to [C, 1, 1] in the graph.
        self.nodes.append(helper.make_node("Unsqueeze", [slope, axes], [f"{name}_slope"]))
        self.nodes.append(helper.make_node("PRelu", [x, f"{name}_slope"], [f"{name}_out"]))
        return f"{name}_out"

    def build(self, num_features=32):
        x = self.prelu(self.bn(self.conv("data", "conv1", 3, 64, 3, 1), "bn1", 64), "prelu", 64)
        in_width = 64
        for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), DEPTHS), start=1):
            for block in range(depth):
                name, stride = f"layer{stage}.{block}", 2 if block == 0 else 1
                out = self.bn(x, f"{name}.bn1", in_width)
                out = self.prelu(self.bn(self.conv(out, f"{name}.conv1", in_width, width, 3, 1),
                                         f"{name}.bn2", width), f"{name}.prelu", width)
                out = self.bn(self.conv(out, f"{name}.conv2", width, width, 3, stride), f"{name}.bn3", width)
                shortcut = x
                if block == 0:
                    shortcut = self.bn(self.conv(x, f"{name}.downsample.0", in_width, width, 1, stride),
                                       f"{name}.downsample.1", width)
                self.nodes.append(helper.make_node("Add", [out, shortcut], [f"{name}_sum"]))
                x, in_width = f"{name}_sum", width
        x = self.bn(x, "bn2", 512)
        self.nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
        fc_weight = self.tensor("fc.weight", self.rng.normal(0, 0.01, (num_features, 512 * 7 * 7)))
        fc_bias = self.tensor("fc.bias", self.rng.normal(0, 0.1, num_features))
        self.nodes.append(helper.make_node("Gemm", ["flat", fc_weight, fc_bias], ["fc_out"], transB=1))
        self.bn("fc_out", "features", num_features)
        # arcface_torch freezes the embedding BN's scale at 1.
        self.initializers[[t.name for t in self.initializers].index("features.weight")] = numpy_helper.from_array(
            np.ones(num_features, dtype=np.float32), "features.weight")
        graph = helper.make_graph(
            self.nodes, "arcface_torch_iresnet",
            [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
            [helper.make_tensor_value_info("features_out", TensorProto.FLOAT, ["N", num_features])],
            self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        onnx.checker.check_model(model)
        return model


@pytest.fixture(scope="module")
def source_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("import") / "tiny_r.onnx"
    onnx.save(GraphBuilder(0).build(), str(path))
    return path


@pytest.mark.slow
def test_imported_weights_reproduce_the_onnx_model(source_onnx, tmp_path):
    out = tmp_path / "imported.pdparams"
    summary = import_backbone(source_onnx, TINY, out, log=lambda message: None)
    assert summary["num_features"] == 32 and summary["difference"] <= 1e-4
    # Loaded the way plsc-train / plsc-eval / plsc-export load Global.pretrained_model.
    state, path = load_weights(str(out))
    backbone = IResNet(num_features=32, layers=DEPTHS)
    load_backbone_state(backbone, state, path)
    backbone.eval()
    images = np.random.default_rng(7).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(source_onnx), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"data": images})[0]
    with paddle.no_grad():
        actual = backbone(paddle.to_tensor(images)).numpy()
    assert np.max(np.abs(actual - expected)) <= 1e-4 * max(1.0, np.max(np.abs(expected)))


@pytest.mark.slow
def test_a_layer_computing_something_else_is_named(tmp_path):
    path = tmp_path / "odd.onnx"
    onnx.save(GraphBuilder(0, bn_epsilon_overrides={"layer2.0.bn2": 0.5}).build(), str(path))
    with pytest.raises(PlscError, match=r"first layer that differs is layer2\.0\.bn2 \(plsc stages\.1\.0\.residual\.2\)"):
        import_backbone(path, TINY, tmp_path / "x.pdparams", log=lambda message: None)
    assert not (tmp_path / "x.pdparams").exists()


def test_wrong_architecture_and_unknown_names_are_one_line(source_onnx, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        import_main(["--arch", "r42", "--source", str(source_onnx), "--out", str(tmp_path / "w.pdparams")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "plsc-import: error: unknown architecture 'r42'; plsc-import knows r18, r34, r50, r100, r200, mbf, mbf_large")
    with pytest.raises(SystemExit):
        import_main(["--arch", "r18", "--source", str(source_onnx), "--out", str(tmp_path / "w.pdparams")])
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"plsc-import: error: {source_onnx}: no tensor layer1.1.bn1.weight") \
        and "\n" not in error


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_name_maps_cover_every_plsc_parameter_once(arch):
    architecture = ARCHITECTURES[arch]
    backbone = MODELS.build(architecture.model_name, where="test")
    suffixes = {"conv": ["weight"], "prelu": ["_weight"], "bn": ["weight", "bias", "_mean", "_variance"],
                "linear": ["weight", "bias"], "fixed_bn": ["norm._mean", "norm._variance", "bias"]}
    covered = [f"{layer}.{suffix}" for layer, _, kind in architecture.name_map for suffix in suffixes[kind]]
    names = set(backbone.state_dict())
    assert set(covered) - {"embedding.fc.bias"} <= names and names <= set(covered)
    sources = [prefix for _, prefix, _ in architecture.name_map]
    assert len(sources) == len(set(sources))
