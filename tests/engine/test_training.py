"""Training end to end in one process: learning happens, resume is exact, a seed repeats a run."""
import numpy as np
import pytest

from plsc.config import load_config
from plsc.engine.trainer import Trainer
from tests.engine.tiny_run import record_losses, write_tiny_config, write_tiny_data


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_data")
    write_tiny_data(root)
    return root


def make_trainer(tmp_path, data_root, overrides=(), changes=None):
    config = load_config(str(write_tiny_config(tmp_path, data_root, changes)), list(overrides))
    return Trainer(config)


def test_loss_falls_and_held_out_accuracy_rises(tmp_path, data_root):
    trainer = make_trainer(tmp_path, data_root, ["Global.epochs=6"])
    before = trainer.evaluator.evaluate(trainer.backbone)["verification"]["accuracy"]
    losses = record_losses(trainer)
    trainer.train()
    after = trainer.evaluator.evaluate(trainer.backbone)["verification"]["accuracy"]
    assert len(losses) == trainer.total_steps == 6 * (12 * 10 // 16)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    assert after > before + 0.05, (before, after)
    # Checkpoints of the run: the latest, and the best by held-out accuracy.
    output = tmp_path / "output" / "IResNet"
    for prefix in ("latest", "best_model"):
        assert (output / f"{prefix}.pdparams").is_file() and (output / f"{prefix}.pdstates").is_file()


def test_resume_continues_exactly(tmp_path, data_root):
    # Stop mid-epoch (step 5 of 7 per epoch) so the sampler's position and the LR are restored too.
    full = make_trainer(tmp_path / "full", data_root, ["Global.eval_during_train=False"])
    full_losses = record_losses(full)
    full.train()

    first = make_trainer(tmp_path / "split", data_root, ["Global.eval_during_train=False",
                                                         "Global.max_train_step=5"])
    first_losses = record_losses(first)
    first.train()
    checkpoint = tmp_path / "split" / "output" / "IResNet" / "latest"
    resumed = make_trainer(tmp_path / "split", data_root, ["Global.eval_during_train=False",
                                                           f"Global.checkpoint={checkpoint}"])
    assert resumed.state["global_step"] == 5
    resumed_losses = record_losses(resumed)
    resumed.train()

    assert len(full_losses) == 14 and len(first_losses) == 5 and len(resumed_losses) == 9
    np.testing.assert_allclose(first_losses, full_losses[:5], rtol=0, atol=0)
    np.testing.assert_allclose(resumed_losses, full_losses[5:], rtol=1e-6, atol=1e-6)
    full_weights = {k: v.numpy() for k, v in full.backbone.state_dict().items()}
    for key, value in resumed.backbone.state_dict().items():
        np.testing.assert_allclose(value.numpy(), full_weights[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(resumed.head.weight.numpy(), full.head.weight.numpy(), rtol=1e-5, atol=1e-6)


def test_pretrained_model_warm_starts_the_backbone_only(tmp_path, data_root):
    source = make_trainer(tmp_path / "source", data_root, ["Global.eval_during_train=False",
                                                           "Global.max_train_step=3"])
    source.train()
    weights = tmp_path / "source" / "output" / "IResNet" / "latest"
    warm = make_trainer(tmp_path / "warm", data_root, ["Global.eval_during_train=False",
                                                       f"Global.pretrained_model={weights}"])
    assert warm.state["global_step"] == 0
    for key, value in warm.backbone.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), source.backbone.state_dict()[key].numpy(), err_msg=key)


def test_visualdl_scalars_and_log_lines(tmp_path, data_root):
    trainer = make_trainer(tmp_path, data_root, ["Global.use_visualdl=True", "Global.max_train_step=3",
                                                 "Global.print_batch_step=1"])
    trainer.train()
    vdl_files = list((tmp_path / "output" / "vdl").rglob("vdlrecords.*"))
    assert vdl_files and vdl_files[0].stat().st_size > 0
    log = (tmp_path / "output" / "IResNet" / "train.log").read_text()
    for step in (1, 2, 3):
        assert f"global_step: {step}," in log
    assert "ips:" in log and "eta:" in log and "lr:" in log
