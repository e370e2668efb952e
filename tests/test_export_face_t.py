"""FaceT export: one ONNX graph with inputs 'data' and 'is_masked' (int64 [N]) that reproduces Paddle
for mixed holistic/masked batches; backbones without side inputs keep the single input 'data'."""
import numpy as np
import onnx
import onnxruntime
import paddle
import pytest

from plsc import export
from plsc.models import MODELS
from plsc.models.mae import MAEPretrainModel
from tests.models.backbone_checks import randomize_norms

SIZE = 32


@pytest.fixture(scope="module")
def exported_tiny(tmp_path_factory):
    paddle.seed(0)
    model = MODELS.build("FaceT_tiny", input_size=SIZE, num_features=64)
    randomize_norms(model)  # real BN running statistics, so the head is not the identity
    path = export.export_onnx(model, tmp_path_factory.mktemp("facet") / "FaceT_tiny.onnx", (None, 3, SIZE, SIZE),
                              check=False)
    return model, path


def test_graph_inputs(exported_tiny):
    _, path = exported_tiny
    graph = onnx.load(str(path)).graph
    inputs = {value.name: value.type.tensor_type for value in graph.input}
    assert list(inputs) == ["data", "is_masked"]
    assert inputs["is_masked"].elem_type == onnx.TensorProto.INT64
    assert len(inputs["is_masked"].shape.dim) == 1 and not inputs["is_masked"].shape.dim[0].HasField("dim_value")


def test_parity_at_batch_3_with_mixed_flags(exported_tiny):
    model, path = exported_tiny
    images = np.random.default_rng(3).uniform(-1, 1, (3, 3, SIZE, SIZE)).astype("float32")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model.eval()
    outputs = {}
    for flags in ([0, 1, 1], [0, 0, 0], [1, 1, 1]):
        flags = np.array(flags, dtype="int64")
        actual = session.run(None, {"data": images, "is_masked": flags})[0]
        with paddle.no_grad():
            expected = model(paddle.to_tensor(images), paddle.to_tensor(flags)).numpy()
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)
        outputs[tuple(flags)] = actual
    # The graph follows the flag per image.
    mixed, holistic, masked = outputs.values()
    assert np.abs(holistic - masked).max(axis=1).min() > 1e-2
    np.testing.assert_allclose(mixed[0], holistic[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(mixed[1:], masked[1:], atol=1e-4, rtol=0)
    # plsc-export's own check feeds alternating flags at the export batch.
    assert export.side_input_values(model, 3) == {"is_masked": pytest.approx(np.array([0, 1, 0]))}
    assert export.assert_parity(model, path, (3, 3, SIZE, SIZE)) < export.PARITY_TOLERANCE


def test_parity_check_catches_a_wrong_prompt_set(exported_tiny, tmp_path):
    model, path = exported_tiny
    # Swap the two prompt kinds in the Paddle model only: alternating flags must expose it.
    swapped = MODELS.build("FaceT_tiny", input_size=SIZE, num_features=64)
    state = {key: value.numpy() for key, value in model.state_dict().items()}
    state["prompts"] = state["prompts"][:, ::-1].copy()
    state["prompt_pool.queries"] = state["prompt_pool.queries"][::-1].copy()
    swapped.set_state_dict(state)
    with pytest.raises(export.ParityError):
        export.assert_parity(swapped, path, (3, 3, SIZE, SIZE))


def test_side_inputs_only_for_backbones_that_declare_them():
    assert export.side_inputs(MODELS.build("FaceT_tiny", input_size=SIZE)) == ("is_masked",)
    assert export.side_inputs(MODELS.build("IResNet", layers=[1], widths=[8], input_size=16)) == ()
    assert export.side_input_values(MODELS.build("IResNet", layers=[1], widths=[8], input_size=16), 3) == {}


def test_mae_encoder_tensors_are_the_backbone_state():
    # The `encoder.` tensors of an MAE model are exactly a FaceT state dict: nothing to rename.
    paddle.seed(1)
    mae = MAEPretrainModel(MODELS.build("FaceT_tiny", input_size=SIZE), decoder_dim=32, decoder_depth=1,
                           decoder_heads=4)
    weights = {key[len("encoder."):]: value for key, value in mae.state_dict().items() if key.startswith("encoder.")}
    backbone = MODELS.build("FaceT_tiny", input_size=SIZE)
    assert set(weights) == set(backbone.state_dict())
    backbone.set_state_dict(weights)
    np.testing.assert_array_equal(backbone.prompts.numpy(), mae.encoder.prompts.numpy())
    assert {key.split(".")[0] for key in mae.state_dict()} == {
        "encoder", "mask_token", "decoder_embed", "decoder_blocks", "decoder_prediction"}


def test_onnx_verification_feeds_the_masked_flag(exported_tiny, tmp_path, monkeypatch):
    """onnx_verification.py scores the exported FaceT on holistic pairs and on one-side-masked pairs,
    giving the graph each image's flag: 0 for every holistic image, 1 for exactly one image per pair."""
    import importlib.util
    import json

    from plsc.data.synthetic import ensure_quickstart_data
    from tests.engine.tiny_run import REPO_ROOT

    _, path = exported_tiny
    ensure_quickstart_data(str(tmp_path / "data"), num_classes=4, images_per_class=2, num_pairs=40, seed=3)
    spec = importlib.util.spec_from_file_location(
        "onnx_verification", REPO_ROOT / "task" / "recognition" / "face" / "onnx_verification.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    fed = []
    embed = script.OnnxFaceModel.embed

    def recording_embed(self, images, is_masked=None):
        fed.append(np.asarray(is_masked))
        return embed(self, images, is_masked)

    monkeypatch.setattr(script.OnnxFaceModel, "embed", recording_embed)
    assert script.main(["--model-root", str(path), "--group", f"pairs={tmp_path / 'data' / 'verification'}",
                        "--masked", "--no-flip-test", "--batch-size", "1000",
                        "--result-dir", str(tmp_path / "report")]) == 0
    holistic, masked = fed  # one batch per pass
    assert holistic.shape == masked.shape == (80,) and not holistic.any()
    np.testing.assert_array_equal(masked.reshape(40, 2).sum(axis=1), 1)
    report = json.loads((tmp_path / "report" / "eval_report.json").read_text())
    assert "masked" in json.dumps(report["GroupVerification"])
