"""FedFR configs load like every plsc config; a user mistake is one line from plsc-fedtrain."""
from pathlib import Path

import pytest

from plsc.cli import fedeval_main, fedtrain_main
from plsc.config import load_config
from plsc.errors import PlscError
from plsc.federated.config import load_fedfr_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FEDFR_CONFIGS = sorted(CONFIGS.glob("FedFR_*.yaml")) + [CONFIGS / "quickstart_fedfr.yaml"]


@pytest.mark.parametrize("path", FEDFR_CONFIGS, ids=lambda path: path.stem)
def test_shipped_fedfr_configs_load_for_fedtrain_and_for_plsc_train(path):
    config = load_fedfr_config(str(path), ["Federated.rounds=2"])
    assert config.Federated.rounds == 2 and config.Federated.local_epochs >= config.Federated.min_local_epochs
    assert config.Model.class_num == config.Federated.Split.num_public
    assert load_config(str(path)).Federated.data_dir == config.Federated.data_dir


def test_published_numbers_are_the_defaults():
    config = load_fedfr_config(str(CONFIGS / "FedFR_IResNet50_MS1M_CosFace.yaml"))
    fed = config.Federated
    assert (fed.hard_negative_threshold, fed.cosface_scale, fed.cosface_margin) == (0.4, 30.0, 0.4)
    assert (fed.bce_loss_weight, fed.contrastive_loss_weight, fed.contrastive_temperature) == (10.0, 5.0, 0.5)
    assert (fed.learning_rate, fed.momentum, fed.weight_decay, fed.batch_size) == (0.001, 0.9, 5e-4, 256)
    assert (fed.bce_positive_weight, fed.bce_negative_weight) == ("0.7/30", "0.3/30")


def test_a_config_without_federated_section_is_refused():
    with pytest.raises(PlscError, match="missing required key Federated"):
        load_fedfr_config(str(CONFIGS / "quickstart.yaml"))


@pytest.mark.parametrize("main", [fedtrain_main, fedeval_main])
def test_cli_prints_one_line_naming_the_key(main, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["-c", str(CONFIGS / "quickstart_fedfr.yaml"), "-o", "Federated.roundz=3"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "unknown key Federated.roundz (did you mean Federated.rounds?)" in error[0]


def test_fedeval_without_a_round_names_the_key(capsys, tmp_path):
    with pytest.raises(SystemExit):
        fedeval_main(["-c", str(CONFIGS / "quickstart_fedfr.yaml"), "-o", f"Global.output_dir={tmp_path}"])
    assert "Global.checkpoint" in capsys.readouterr().err
