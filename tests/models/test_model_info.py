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
              "MobileFaceNet_base", "MobileFaceNet_large", "FaceViT_tiny_patch9_112",
              "FaceViT_small_patch9_112", "FaceViT_base_patch9_112", "FaceViT_large_patch9_112"]

# The `Model` sections of PLSC's shipped face configs (PLSC_FACTS section 1.2), key order kept.
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
    inspect.signature(MODELS.get(section["name"])).bind(**backbone_kwargs(section))


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


def test_model_info_tool(tmp_path):
    model_section = dict(name="IResNet", layers=[1, 1], widths=[8, 16], input_size=32, num_features=64,
                         data_format="NCHW", class_num=100, pfc_config=dict(sample_ratio=0.5, model_parallel=True))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"Global": {"epochs": 1}, "Model": model_section}))

    result = run_tool("-c", str(config), "-o", "Model.num_features=48", "-o", "Model.data_format=NHWC")
    assert result.returncode == 0, result.stderr
    name, params_m, gflops = result.stdout.strip().splitlines()[-1].split()
    expected = MODELS.build("IResNet", layers=(1, 1), widths=(8, 16), input_size=32, num_features=48)
    assert name == "IResNet"
    assert float(params_m) == pytest.approx(count_parameters(expected) / 1e6, abs=0.005)
    assert float(gflops) == pytest.approx(count_flops(expected, (1, 3, 32, 32)) * 1e-9, abs=0.005)

    result = run_tool("-c", str(config), "-o", "Model.data_format=CHW")
    assert result.returncode == 1 and "Model.data_format" in result.stderr and "Traceback" not in result.stderr
    result = run_tool("-c", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1 and "missing.yaml" in result.stderr
