"""ONNX export: onnxruntime reproduces Paddle (dynamic batch, NHWC backbones), nothing installed at
run time, and checkpoint weights load with the trainer's `backbone.` prefix."""
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from plsc import export
from plsc.cli import export_main
from plsc.errors import PlscError
from tests.task.tiny_quickstart import IMAGE_SIZE, QUICKSTART, cli_args, tiny_overrides


class SmallNet(nn.Layer):
    """Conv-BN-PReLU-pool-FC-BN: the layer types of the face backbones, a few thousand weights."""

    def __init__(self, num_features=16):
        super().__init__()
        self.conv = nn.Conv2D(3, 8, 3, stride=4, padding=1, bias_attr=False)
        self.norm = nn.BatchNorm2D(8)
        self.act = nn.PReLU(8)
        self.pool = nn.AdaptiveAvgPool2D(4)
        self.fc = nn.Linear(8 * 16, num_features)
        self.out_norm = nn.BatchNorm1D(num_features)

    def forward(self, images):
        return self.out_norm(self.fc(self.pool(self.act(self.norm(self.conv(images)))).flatten(1)))


def randomize_statistics(model, seed=0):
    """Fresh BN layers are the identity in eval mode; give them real statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.sublayers():
        if isinstance(layer, nn.layer.norm._BatchNormBase):
            layer._mean.set_value(rng.uniform(-0.5, 0.5, layer._mean.shape).astype("float32"))
            layer._variance.set_value(rng.uniform(0.5, 2.0, layer._variance.shape).astype("float32"))
    return model


def onnx_embeddings(path, images):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"data": images})[0]


def paddle_embeddings(model, images):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(images)).numpy()


def assert_reproduces(model, path, batches=(1, 5)):
    rng = np.random.default_rng(1)
    for batch in batches:
        images = rng.uniform(-1, 1, (batch, 3, 112, 112)).astype(np.float32)
        expected = paddle_embeddings(model, images)
        actual = onnx_embeddings(path, images)
        assert actual.shape == expected.shape
        scale = np.abs(expected).max()
        np.testing.assert_allclose(actual, expected, atol=1e-4 * scale, rtol=0)


def pip_freeze():
    return subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze"],
                          capture_output=True, text=True, check=True).stdout


def test_export_small_net_dynamic_batch_and_nothing_installed(tmp_path):
    paddle.seed(0)
    model = randomize_statistics(SmallNet())
    before = pip_freeze()
    path = export.export_onnx(model, tmp_path / "small.onnx")
    assert pip_freeze() == before
    assert "polygraphy" not in sys.modules  # paddle2onnx's auto-installing post-processor never ran
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["data"] and len(graph.output) == 1
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert not batch_dim.HasField("dim_value")  # symbolic, not fixed
    assert_reproduces(model, path)
    assert export.check_parity(model, path, batch=3) < 1e-5


def test_nhwc_iresnet_exports_with_nchw_input(tmp_path):
    pytest.importorskip("plsc.models")
    from plsc.registry import MODELS
    if "IResNet" not in MODELS:
        pytest.skip("IResNet is not registered yet")
    for data_format in ("NCHW", "NHWC"):
        paddle.seed(0)
        model = randomize_statistics(MODELS.build("IResNet", num_features=32, data_format=data_format,
                                                  layers=(1, 1, 1, 1), widths=(8, 16, 16, 32)))
        path = export.export_onnx(model, tmp_path / f"iresnet_{data_format}.onnx")
        dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims[1:]] == [3, 112, 112]
        assert_reproduces(model, path)
        assert model.data_format == data_format  # the export worked on a copy


def tiny_family_members():
    """(name, builder) of each backbone family at toy size; missing families are skipped."""
    members = []
    try:
        from plsc.models.mobilefacenet import MobileFaceNet
        members.append(("MobileFaceNet", lambda: MobileFaceNet(
            num_features=16, data_format="NHWC", blocks=(1, 1, 1, 1), scale=1)))
    except ImportError:
        members.append(("MobileFaceNet", None))
    try:
        from plsc.models.face_vit import FaceViT
        members.append(("FaceViT", lambda: FaceViT(
            num_features=16, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0,
            drop_path_rate=0.0, mask_ratio=0.0)))
    except ImportError:
        members.append(("FaceViT", None))
    return members


@pytest.mark.parametrize("name,build", tiny_family_members())
def test_other_families_export(tmp_path, name, build):
    if build is None:
        pytest.skip(f"{name} is not available yet")
    paddle.seed(0)
    model = randomize_statistics(build())
    path = export.export_onnx(model, tmp_path / f"{name}.onnx")
    assert_reproduces(model, path)


class HiddenLayoutNet(nn.Layer):
    """Keeps its layout where nchw_copy cannot see it: the export must refuse, not crash."""

    def __init__(self):
        super().__init__()
        self.weight = self.create_parameter([4, 3, 3, 3])
        self.layout = "NHWC"

    def forward(self, images):
        hidden = F.conv2d(images.transpose([0, 2, 3, 1]), self.weight, data_format=self.layout)
        return hidden.mean(axis=[1, 2])


def test_leftover_nhwc_is_a_user_error(tmp_path):
    with pytest.raises(PlscError, match="NHWC"):
        export.export_onnx(HiddenLayoutNet(), tmp_path / "hidden.onnx")


def test_parity_failure_raises(tmp_path, monkeypatch):
    paddle.seed(0)
    model = randomize_statistics(SmallNet())
    path = export.export_onnx(model, tmp_path / "a.onnx")
    other = randomize_statistics(SmallNet(), seed=5)
    assert export.check_parity(other, path) > 1e-2
    monkeypatch.setattr(export, "check_parity", lambda *args, **kwargs: 0.5)
    with pytest.raises(export.ParityError, match="5.00e-01"):
        export.export_onnx(model, tmp_path / "b.onnx")


def test_load_training_checkpoint_with_prefix_and_fp16(tmp_path):
    paddle.seed(0)
    source = randomize_statistics(SmallNet())
    state = {f"backbone.{key}": value.astype("float16") for key, value in source.state_dict().items()}
    state["head.weight"] = paddle.ones([10, 16])
    path = tmp_path / "latest.pdparams"
    paddle.save(state, str(path))
    target = SmallNet()
    export.load_backbone_weights(target, path)
    for key, value in target.state_dict().items():
        assert value.dtype == paddle.float32
        expected = source.state_dict()[key].numpy().astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(value.numpy(), expected)


def test_load_plain_state_dict_and_checkpoint_prefix(tmp_path):
    paddle.seed(0)
    source = SmallNet()
    path = tmp_path / "backbone.pdparams"
    paddle.save(source.state_dict(), str(path))
    target = SmallNet()
    assert export.load_backbone_weights(target, path) == path
    np.testing.assert_array_equal(target.fc.weight.numpy(), source.fc.weight.numpy())
    # The trainer's layout, named by its prefix: extra bookkeeping entries are ignored.
    state = {f"backbone.{key}": value for key, value in source.state_dict().items()}
    paddle.save({**state, "global_step": 7}, str(tmp_path / "latest.pdparams"))
    target = SmallNet()
    assert export.load_backbone_weights(target, tmp_path / "latest") == tmp_path / "latest.pdparams"
    np.testing.assert_array_equal(target.out_norm._mean.numpy(), source.out_norm._mean.numpy())


def test_load_errors_name_the_keys(tmp_path):
    state = SmallNet().state_dict()
    state.pop("fc.weight")
    state["extra.bias"] = paddle.zeros([3])
    path = tmp_path / "bad.pdparams"
    paddle.save(state, str(path))
    with pytest.raises(PlscError, match=r"bad.pdparams .*missing \['fc.weight'\], unexpected \['extra.bias'\]"):
        export.load_backbone_weights(SmallNet(), path)
    state = SmallNet(num_features=8).state_dict()
    paddle.save(state, str(path))
    with pytest.raises(PlscError, match=r"fc.weight has shape \[128, 8\], the model needs \[128, 16\]"):
        export.load_backbone_weights(SmallNet(), path)
    with pytest.raises(PlscError, match="none: no weights found"):
        export.load_backbone_weights(SmallNet(), tmp_path / "none")
    (tmp_path / "junk.pdparams").write_bytes(b"not a paddle file")
    with pytest.raises(PlscError, match=r"junk.pdparams: truncated, corrupt or not a state file \(not a pickle\)"):
        export.load_backbone_weights(SmallNet(), tmp_path / "junk.pdparams")


def test_wrong_input_size_is_a_user_error(tmp_path):
    from plsc.registry import MODELS

    model = MODELS.build("IResNet", num_features=8, layers=(1, 1), widths=(8, 8), input_size=32)
    with pytest.raises(PlscError, match=r"input_shape \[None, 3, 64, 64\]"):
        export.export_onnx(model, tmp_path / "a.onnx", input_shape=(None, 3, 64, 64))


def test_paddle_inference_export_reproduces_the_backbone(tmp_path):
    paddle.seed(0)
    model = randomize_statistics(SmallNet())
    program, params = export.export_inference_model(model, tmp_path / "inference" / "small")
    assert program.is_file() and params.is_file()
    loaded = paddle.jit.load(str(tmp_path / "inference" / "small"))
    images = np.random.default_rng(2).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    np.testing.assert_allclose(paddle_embeddings(loaded, images), paddle_embeddings(model, images),
                               rtol=1e-5, atol=1e-5)


# ---- plsc-export: configs/quickstart.yaml shrunk with -o, a checkpoint saved the trainer's way ----

def save_training_checkpoint(overrides, directory):
    """A quickstart backbone with random weights saved as `directory/latest.pdparams` -> (model, prefix)."""
    from plsc.config import load_config
    from plsc.engine.build import build_backbone

    paddle.seed(3)
    model = randomize_statistics(build_backbone(load_config(str(QUICKSTART), overrides).Model), seed=3)
    directory.mkdir(parents=True, exist_ok=True)
    state = {f"backbone.{key}": value for key, value in model.state_dict().items()}
    paddle.save({**state, "global_step": 4}, str(directory / "latest.pdparams"))
    return model, directory / "latest"


def reproduces_at(model, path, size, batch):
    images = np.random.default_rng(4).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    expected, actual = paddle_embeddings(model, images), onnx_embeddings(path, images)
    return np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_export_cli_writes_the_checked_model(tmp_path, capsys, data_format):
    overrides = tiny_overrides(tmp_path, tmp_path / "data", data_format=data_format)
    model, prefix = save_training_checkpoint(overrides, tmp_path / "ckpt")
    export_main(cli_args([*overrides, f"Global.pretrained_model={prefix}"]))
    printed = capsys.readouterr().out
    path = tmp_path / "output" / "IResNet.onnx"
    assert f"wrote {path}" in printed
    difference = float(re.search(r"max abs difference ([0-9.e+-]+)", printed).group(1))
    assert difference <= 1e-4
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, IMAGE_SIZE, IMAGE_SIZE]
    assert reproduces_at(model, path, IMAGE_SIZE, batch=1) and reproduces_at(model, path, IMAGE_SIZE, batch=5)


def test_export_cli_user_errors_are_one_line(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, tmp_path / "data")
    _, prefix = save_training_checkpoint(overrides, tmp_path / "ckpt")
    cases = [([], "needs -o Global.pretrained_model"),
             ([f"Global.pretrained_model={tmp_path}/nothing/latest"], "nothing/latest: no weights found"),
             ([f"Global.pretrained_model={prefix}", "Export.input_shape=[None,3,112,112]"],
              "does not accept input_shape [None, 3, 112, 112]"),
             ([f"Global.pretrained_model={prefix}", "Model.num_features=8"],
              "fc.weight has shape [1024, 16], the model needs [1024, 8]")]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            export_main(cli_args([*overrides, *extra]))
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("plsc-export: error: ") and message in error and "\n" not in error, error


def test_export_console_script_paddle_format(tmp_path):
    """The installed `plsc-export` (setup.py entry point) with PLSC's export_type: paddle."""
    overrides = tiny_overrides(tmp_path, tmp_path / "data")
    model, prefix = save_training_checkpoint(overrides, tmp_path / "ckpt")
    script = shutil.which("plsc-export")
    assert script, "plsc-export is not installed: pip install -e ."
    result = subprocess.run([script, *cli_args([*overrides, f"Global.pretrained_model={prefix}",
                                                "Export.export_type=paddle"])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = paddle.jit.load(str(tmp_path / "output" / "IResNet"))
    images = np.random.default_rng(6).uniform(-1, 1, (2, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    np.testing.assert_allclose(paddle_embeddings(loaded, images), paddle_embeddings(model, images),
                               rtol=1e-5, atol=1e-5)
