"""plsc-eval on a saved checkpoint reproduces the evaluation of the backbone that was trained."""
import re

import pytest

from plsc.cli import eval_main
from plsc.config import load_config
from plsc.engine.build import build_evaluator
from plsc.engine.trainer import Trainer
from tests.task.tiny_quickstart import QUICKSTART, cli_args, tiny_overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few quickstart steps on tiny synthetic data -> (overrides, checkpoint prefix, in-memory figures)."""
    work_dir = tmp_path_factory.mktemp("eval_cli")
    overrides = tiny_overrides(work_dir, work_dir / "data", max_train_step=4)
    trainer = Trainer(load_config(str(QUICKSTART), overrides))
    trainer.train()
    # Training ran without evaluation; score the trained backbone in memory, the way training would.
    figures = build_evaluator(load_config(str(QUICKSTART), overrides)).evaluate(trainer.backbone)
    return overrides, work_dir / "output" / "IResNet" / "latest", figures["verification"]


def printed_figures(text):
    """'verification: accuracy: 0.69167, std: ...' -> {'accuracy': 0.69167, ...}."""
    line = next(line for line in text.splitlines() if line.startswith("verification: "))
    return {key: float(value) for key, value in re.findall(r"(\w+): ([-0-9.e]+)", line)}


@pytest.mark.parametrize("suffix", ["", ".pdparams"])
def test_eval_reproduces_the_trained_backbone(trained, capsys, suffix):
    overrides, prefix, expected = trained
    capsys.readouterr()
    eval_main(cli_args([*overrides, f"Global.pretrained_model={prefix}{suffix}"]))
    figures = printed_figures(capsys.readouterr().out)
    assert set(figures) >= {"accuracy", "threshold", "metric"}
    for key, value in figures.items():
        assert value == pytest.approx(expected[key], abs=1e-5), key


def test_eval_missing_model_is_one_line(trained, capsys, tmp_path):
    overrides, _, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        eval_main(cli_args([*overrides, f"Global.pretrained_model={tmp_path}/none/latest"]))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("plsc-eval: error: ") and "none/latest: no weights found" in error and "\n" not in error
