"""Every config in configs/ loads and validates; every CPU-sized one trains a few steps on its own data.

The CPU configs generate their synthetic data on first use (SyntheticData); here they do so into a
temporary directory, at a tiny size, so each run takes seconds to a minute.
"""
from pathlib import Path

import pytest

from plsc.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
CPU_CONFIGS = [path for path in CONFIGS if path.name.startswith(("quickstart", "synthetic_"))]
FEDERATED = [path for path in CONFIGS if "fedfr" in path.name.lower()]


@pytest.mark.parametrize("path", [p for p in CONFIGS if p not in FEDERATED], ids=lambda p: p.name)
def test_every_config_loads_and_validates(path):
    config = load_config(str(path), [])
    assert config.Global.output_dir


@pytest.mark.parametrize("path", FEDERATED, ids=lambda p: p.name)
def test_federated_configs_load_and_validate(path):
    from plsc.federated.config import load_fedfr_config

    assert load_fedfr_config(str(path), []).Federated


def test_every_synthetic_config_generates_its_own_data():
    for path in CPU_CONFIGS:
        config = load_config(str(path), [])
        assert config.get("SyntheticData"), f"{path.name} has no SyntheticData section"
    fairness = load_config(str(REPO_ROOT / "configs" / "synthetic_fairness.yaml"), [])
    assert "fairness" in fairness.SyntheticData.formats


def tiny_copy(path, work_dir):
    """The config with every ./output/ path moved under work_dir (data and results alike)."""
    text = path.read_text().replace("./output/", f"{work_dir}/output/")
    copy = Path(work_dir) / path.name
    copy.write_text(text)
    return copy


def tiny_overrides(config):
    values = ["Global.max_train_step=2", "Global.epochs=1", "Global.eval_during_train=False",
              "Global.print_batch_step=1", "SyntheticData.num_classes=8", "SyntheticData.images_per_class=4",
              "SyntheticData.num_pairs=20", "SyntheticData.num_workers=0", "DataLoader.Train.sampler.batch_size=8",
              "DataLoader.Train.loader.num_workers=0"]
    if config.Model.get("class_num") is not None:
        values.append("Model.class_num=8")
    if str(config.Model.name).startswith("IResNet") and "layers" in config.Model:
        values += ["Model.layers=[1,1]", "Model.widths=[8,16]", "Model.num_features=16"]
    return values


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in CPU_CONFIGS if p not in FEDERATED], ids=lambda p: p.name)
def test_cpu_config_trains_a_few_steps(path, tmp_path, monkeypatch):
    from plsc.cli import train_main

    monkeypatch.chdir(tmp_path)
    copy = tiny_copy(path, tmp_path)
    overrides = tiny_overrides(load_config(str(copy), []))
    if path.name == "quickstart_facet.yaml":  # its MAE stage would run first; the stage has its own test
        overrides.append("Global.pretrain_config=None")
        overrides.append("Global.pretrained_model=None")
    argv = ["-c", str(copy)]
    for value in overrides:
        argv += ["-o", value]
    train_main(argv)
    outputs = list((tmp_path / "output").rglob("latest*.pdparams"))
    assert outputs, f"{path.name}: no checkpoint written"
