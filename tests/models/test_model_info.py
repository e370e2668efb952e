import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import paddle
import pytest
import yaml

from plsc.errors import PlscError
from plsc.models import MODELS, backbone_kwargs, build_backbone
from plsc.models.complexity import count_flops, count_parameters

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTERED = ["IResNet", "IResNet18", "IResNet34", "IResNet50", "IResNet100", "IResNet200",
              "MobileFaceNet", "MobileFaceNet_base", "MobileFaceNet_large", "FaceViT_tiny_patch9_112",
              "FaceViT_small_patch9_112", "FaceViT_base_patch9_112", "FaceViT_large_patch9_112"]

# The `Model` sections of PLSC's shipped face configs , key order kept.
PLSC_MODEL_SECTIONS = [
    dict(name="IResNet50", num_features=512, data_format="NHWC", class_num=93431,
         pfc_config=dict(sample_ratio=1.0, model_parallel=True)),
    dict(name="IResNet100", num_features=512, data_format="NHWC", class_num=2059906,
         pfc_config=dict(sample_ratio=0.2, model_parallel=True)),
    dict(name="MobileFaceNet_base", num_features=512, data_format="NHWC", class_num=2059906,
         pfc_config=dict(sample_ratio=0.2, model_parallel=True)),
    dict(name="FaceViT_tiny_patch9_112", mask_ratio=0.0, drop_path_rate=0.05, num_features=512,
         class_num=2059906, pfc_config=dict(sample_ratio=1.0, model_parallel=True, sparse_update=False)),
    dict(name="FaceViT_base_patch9_112", mask_ratio=0.05, drop_path_rate=0.05, num_features=512,
         class_num=2059906, pfc_config=dict(sample_ratio=0.3, model_parallel=True)),
]


def test_every_config_name_is_registered():
    assert set(REGISTERED) <= set(MODELS.names())


def test_backbone_kwargs_drops_head_keys():
    section = PLSC_MODEL_SECTIONS[3]
    assert backbone_kwargs(section) == dict(mask_ratio=0.0, drop_path_rate=0.05, num_features=512)
    assert section["pfc_config"]["sparse_update"] is False  # the section itself is untouched


@pytest.mark.parametrize("section", PLSC_MODEL_SECTIONS, ids=lambda s: s["name"])
def test_plsc_model_sections_fit_the_constructors(section):
    # Binding checks every key without building the (large) model.
    signature = inspect.signature(MODELS.get(section["name"]))
    signature.bind(**backbone_kwargs(section))
    # PLSC's export command adds -o Model.data_format=NCHW to every config, FaceViT's included.
    signature.bind(**{**backbone_kwargs(section), "data_format": "NCHW"})


def test_build_backbone():
    model = build_backbone(dict(name="IResNet", layers=[1, 1], widths=[8, 16], input_size=16,
                                num_features=32, class_num=10, pfc_config=dict(sample_ratio=1.0)))
    assert model(paddle.randn([2, 3, 16, 16])).shape == [2, 32]
    with pytest.raises(PlscError, match="Model.name.*IResNet50"):
        build_backbone(dict(name="IResNet5O"))


def run_tool(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "model_info.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def table_rows(stdout):
    """The rows after the header: (backbone, params (M), GFLOPs, input, config)."""
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:1] == ["backbone"]
    return [line.split() for line in lines[1:]]


def test_model_info_tool(tmp_path):
    model_section = dict(name="IResNet", layers=[1, 1], widths=[8, 16], input_size=32, num_features=64,
                         data_format="NCHW", class_num=100, pfc_config=dict(sample_ratio=0.5, model_parallel=True))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"Global": {"epochs": 1}, "Model": model_section}))

    # Overrides are typed as plsc-train types them; the input size comes from Model.input_size.
    result = run_tool("-c", str(config), "-o", "Model.num_features=48", "-o", "Model.data_format=NHWC")
    assert result.returncode == 0, result.stderr
    (row,) = table_rows(result.stdout)
    expected = MODELS.build("IResNet", layers=(1, 1), widths=(8, 16), input_size=32, num_features=48)
    assert row[0] == "IResNet" and row[3:] == ["32x32", "tiny.yaml"]
    assert float(row[1]) == pytest.approx(count_parameters(expected) / 1e6, abs=0.005)
    assert float(row[2]) == pytest.approx(count_flops(expected, (1, 3, 32, 32)) * 1e-9, abs=0.005)


def load_tool():
    """tools/model_info.py as a module, to call its main() in this process (a subprocess costs seconds)."""
    spec = importlib.util.spec_from_file_location("model_info_tool", REPO_ROOT / "tools" / "model_info.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_info_errors_name_the_config(tmp_path, capsys):
    tool = load_tool()
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"Global": {"epochs": 1}, "Model": dict(
        name="IResNet", layers=[1], widths=[8], input_size=8, num_features=8, class_num=10)}))
    missing = str(tmp_path / "missing.yaml")
    # A bad config is reported in one line and skipped, the good one is still listed; exit code 2.
    assert tool.main(["-c", missing, str(config), "-o", "Model.data_format=CHW"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "missing.yaml" in errors[0]
    assert "tiny.yaml" in errors[1] and "Model.data_format" in errors[1]
    assert tool.main(["-c", missing, str(config)]) == 2
    assert [row[-1] for row in table_rows(capsys.readouterr().out)] == ["tiny.yaml"]
    # The config is validated as plsc-train validates it: an unknown key is named.
    assert tool.main(["-c", str(config), "-o", "Model.num_feature=8"]) == 2
    assert "num_feature" in capsys.readouterr().err


def test_model_info_shipped_config(capsys):
    # The smallest shipped zoo config: its row must be the MobileFaceNet_base measured here.
    name = "MobileFaceNet_WebFace42M_CosFace_pfc02_1n8c_dp_mp_fp16o1.yaml"
    assert load_tool().main(["-c", str(REPO_ROOT / "configs" / name)]) == 0
    (row,) = table_rows(capsys.readouterr().out)
    model = MODELS.build("MobileFaceNet_base", data_format="NHWC")
    assert row == ["MobileFaceNet_base", f"{count_parameters(model) / 1e6:.2f}",
                   f"{count_flops(model) * 1e-9:.2f}", "112x112", name]
