"""plsc-import: IResNet ONNX graphs built here, arcface_torch-named or folded into the model-zoo layout
-> plsc weights that reproduce them."""
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
    images = np.random.default_rng(7).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(source_onnx), providers=["CPUExecutionProvider"])
    assert_imported_embeddings(out, images, session.run(None, {"data": images})[0])


def assert_imported_embeddings(weights, images, expected):
    """The imported checkpoint, loaded as plsc-train / plsc-eval / plsc-export load Global.pretrained_model,
    embeds `images` as the source model did (`expected`) to 1e-4."""
    state, path = load_weights(str(weights))
    backbone = IResNet(num_features=32, layers=DEPTHS)
    load_backbone_state(backbone, state, path)
    backbone.eval()
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


def fold_batchnorms(model, fold_embedding=True, matmul_fc=False):
    """`model` in the model-zoo layout, folded here as torch's eval-mode export does: every BN that reads a
    conv's output (with `fold_embedding` also the BN after the Gemm) becomes part of that layer's weight
    and bias, and tensors and nodes get numbered names. `matmul_fc` writes the Gemm as MatMul + Add."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # renaming below edits the nodes in place
    stored = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    producer = {node.output[0]: node for node in model.graph.node}
    foldable = ("Conv", "Gemm") if fold_embedding else ("Conv",)
    folds = {node.input[0]: node for node in model.graph.node if node.op_type == "BatchNormalization"
             and node.input[0] in producer and producer[node.input[0]].op_type in foldable}
    folded_outputs = {bn.output[0] for bn in folds.values()}
    nodes = []
    for node in model.graph.node:
        if node.output[0] in folded_outputs:
            continue
        if node.output[0] in folds:
            node = fold_into(node, folds[node.output[0]], stored)
        if matmul_fc and node.op_type == "Gemm":
            nodes += gemm_as_matmul_add(node, stored)
        else:
            nodes.append(node)
    initializers = []
    for index, node in enumerate(nodes):
        node.name = f"{node.op_type}_{index}"
        for position, name in enumerate(node.input):
            if name in stored:  # renamed by number, as torch names what it folded
                node.input[position] = f"{1000 + len(initializers)}"
                initializers.append(numpy_helper.from_array(stored[name], node.input[position]))
    graph = helper.make_graph(nodes, "model_zoo_iresnet", model.graph.input, model.graph.output, initializers)
    folded = helper.make_model(graph, opset_imports=model.opset_import)
    onnx.checker.check_model(folded)
    return folded


def fold_into(node, bn, stored):
    """A copy of the Conv / Gemm `node` with the BatchNormalization `bn` that reads it folded in."""
    gamma, beta, mean, variance = (stored[name].astype(np.float64) for name in bn.input[1:])
    epsilon = next((attribute.f for attribute in bn.attribute if attribute.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(variance + epsilon)
    weight = stored[node.input[1]].astype(np.float64)
    bias = stored[node.input[2]].astype(np.float64) if len(node.input) > 2 else np.zeros_like(mean)
    # Rows are output channels in both a conv's OIHW weight and a transB Gemm's [out, in].
    row_scale = scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    stored[f"{node.output[0]}.weight"] = (weight * row_scale).astype(np.float32)
    stored[f"{node.output[0]}.bias"] = ((bias - mean) * scale + beta).astype(np.float32)
    folded = onnx.NodeProto()
    folded.CopyFrom(node)
    del folded.input[:]
    folded.input.extend([node.input[0], f"{node.output[0]}.weight", f"{node.output[0]}.bias"])
    folded.output[0] = bn.output[0]
    return folded


def gemm_as_matmul_add(gemm, stored):
    """Gemm(x, W, b, transB=1) as MatMul(x, W^T) + Add(b), as torch exports a Linear on a 3-D input."""
    stored[f"{gemm.output[0]}.matrix"] = np.ascontiguousarray(stored[gemm.input[1]].T)
    return [helper.make_node("MatMul", [gemm.input[0], f"{gemm.output[0]}.matrix"], [f"{gemm.output[0]}_mm"]),
            helper.make_node("Add", [f"{gemm.output[0]}_mm", gemm.input[2]], [gemm.output[0]])]


def onnx_embeddings(model, images):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"data": images})[0]


# The tiny IResNet's 19 BNs: the stem's, 3 per block, one per downsample, bn2 and the embedding BN. The
# stem's, each block's bn2 and bn3 and the downsample BNs read a conv: 13 fold, 14 with the embedding BN.
@pytest.mark.slow
@pytest.mark.parametrize("fold_embedding, matmul_fc, num_folded",
                         [(True, False, 14), (False, False, 13), (True, True, 14)])
def test_model_zoo_graph_with_folded_batchnorm(tmp_path, fold_embedding, matmul_fc, num_folded):
    unfolded = GraphBuilder(3).build()
    folded = fold_batchnorms(unfolded, fold_embedding, matmul_fc)
    images = np.random.default_rng(7).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    expected = onnx_embeddings(folded, images)
    # The test's folding is right: the folded graph computes what the unfolded one does.
    assert np.max(np.abs(expected - onnx_embeddings(unfolded, images))) <= 1e-4 * np.max(np.abs(expected))
    assert sum(node.op_type == "BatchNormalization" for node in folded.graph.node) == 19 - num_folded
    path = tmp_path / "w600k_tiny.onnx"
    onnx.save(folded, str(path))

    messages = []
    summary = import_backbone(path, TINY, tmp_path / "imported.pdparams", log=messages.append)
    layout = f"model-zoo layout: {num_folded} of 19 BatchNorms folded into the conv / FC before them"
    assert summary["layout"] == layout and summary["num_features"] == 32 and summary["difference"] <= 1e-4
    assert messages[0].startswith(f"checked ({layout}): plsc vs onnxruntime embeddings differ by ")
    assert_imported_embeddings(tmp_path / "imported.pdparams", images, expected)


@pytest.mark.slow
def test_a_kept_batchnorm_computing_something_else_is_named_by_its_node(tmp_path):
    path = tmp_path / "odd_zoo.onnx"
    onnx.save(fold_batchnorms(GraphBuilder(0, bn_epsilon_overrides={"layer2.0.bn1": 0.5}).build()), str(path))
    with pytest.raises(PlscError, match=r"first layer that differs is node BatchNormalization_\d+ \[layer2\.0\.bn1\] "
                                        r"\(plsc stages\.1\.0\.residual\.0\)"):
        import_backbone(path, TINY, tmp_path / "x.pdparams", log=lambda message: None)
    assert not (tmp_path / "x.pdparams").exists()


def test_model_zoo_graphs_plsc_cannot_read_are_one_line(tmp_path, capsys):
    folded = fold_batchnorms(GraphBuilder(0).build())
    # insightface's MXNet-era files scale the input inside the graph: (x - 127.5) * 0.0078125.
    scaling = [helper.make_node("Sub", ["data", "mean"], ["centred"], name="minusscalar0"),
               helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="mulscalar0")]
    folded.graph.initializer.extend([numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                                     numpy_helper.from_array(np.array(0.0078125, np.float32), "scale")])
    for node in folded.graph.node:
        node.input[:] = ["scaled" if name == "data" else name for name in node.input]
    nodes = scaling + list(folded.graph.node)
    del folded.graph.node[:]
    folded.graph.node.extend(nodes)
    scaled_path = tmp_path / "scaled.onnx"
    onnx.save(folded, str(scaled_path))
    onnx.save(fold_batchnorms(GraphBuilder(0).build()), str(tmp_path / "tiny.onnx"))
    expected = {scaled_path: f"{scaled_path}: node minusscalar0 is a Sub, which no arcface_torch r18 has: "
                             f"plsc-import reads IResNet and MobileFaceNet graphs only",
                # r18's second block reads like the graph's layer2.0 up to that block's downsample conv.
                tmp_path / "tiny.onnx": f"{tmp_path / 'tiny.onnx'}: node Conv_15 is a Conv where r18 has "
                                        f"layer2.0.bn1 (a BatchNormalization): is the architecture right?"}
    for path, message in expected.items():
        with pytest.raises(SystemExit) as exit_info:
            import_main(["--arch", "r18", "--source", str(path), "--out", str(tmp_path / "w.pdparams")])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == f"plsc-import: error: {message}"
    assert not (tmp_path / "w.pdparams").exists()
