"""Training end to end in one process: learning happens, resume is exact, a seed repeats a run."""
import os

import numpy as np
import pytest

from plsc.checkpoint import checkpoint_prefix
from plsc.config import load_config
from plsc.engine.trainer import Trainer
from plsc.errors import PlscError
from plsc.serialization import load_state
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
    for slot in ("latest", "best_model"):
        assert (output / slot).is_symlink()
        prefix = checkpoint_prefix(output / slot)
        assert os.path.isfile(f"{prefix}.pdparams") and os.path.isfile(f"{prefix}.pdstates")


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
    np.testing.assert_allclose(resumed.task.head.weight.numpy(), full.task.head.weight.numpy(), rtol=1e-5, atol=1e-6)


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


def test_non_finite_loss_stops_before_the_step_and_names_the_last_good_checkpoint(tmp_path, data_root,
                                                                                  monkeypatch):
    # FP16 O0 (no loss scaling): a NaN loss at step 9 must not reach the weights, and nothing is saved.
    reference = make_trainer(tmp_path / "reference", data_root, ["Global.eval_during_train=False",
                                                                 "Global.max_train_step=8"])
    reference.train()
    trainer = make_trainer(tmp_path / "nan", data_root, ["Global.eval_during_train=False"])
    loss = type(trainer.task.loss).__call__

    def poisoned(self, inputs):
        total, parts = loss(self, inputs)
        if trainer.state["global_step"] == 8:
            total = total * float("nan")
        return total, parts

    monkeypatch.setattr(type(trainer.task.loss), "__call__", poisoned)
    with pytest.raises(PlscError) as error:
        trainer.train()
    latest = tmp_path / "nan" / "output" / "IResNet" / "latest"
    assert str(error.value).startswith("loss is nan at step 9; the weights were not updated")
    assert f"-o Global.checkpoint={latest} (step 7)" in str(error.value)  # the epoch-1 save, 7 steps/epoch
    # The parameters are those after step 8. (BN running statistics did see step 9's forward; nothing
    # is saved after a non-finite step, so they never reach a checkpoint.)
    trained = dict(trainer.backbone.named_parameters())
    for key, value in reference.backbone.named_parameters():
        if not value.stop_gradient:  # Paddle keeps BN running statistics as untrained parameters
            np.testing.assert_array_equal(trained[key].numpy(), value.numpy(), err_msg=key)
    np.testing.assert_array_equal(trainer.task.head.weight.numpy(), reference.task.head.weight.numpy())
    assert load_state(f"{checkpoint_prefix(latest)}.pdstates")["global_step"] == 7


def test_checkpoints_carry_the_evaluation_and_a_resume_never_worsens_best_model(tmp_path, data_root):
    trainer = make_trainer(tmp_path, data_root, ["Global.epochs=2", "Global.max_num_latest_checkpoint=2"])
    trainer.train()
    output = tmp_path / "output" / "IResNet"
    best = load_state(f"{checkpoint_prefix(output / 'best_model')}.pdstates")
    # latest is written after the epoch-end evaluation, so it knows the best metric so far.
    latest = load_state(f"{checkpoint_prefix(output / 'latest')}.pdstates")
    assert latest["best_metric"] == best["best_metric"] == trainer.state["best_metric"]
    assert load_state(f"{checkpoint_prefix(output / 'latest')}.pdopt")["evaluator"] == trainer.evaluator.state_dict()
    best_target = os.readlink(output / "best_model")

    # Resume from epoch 1, whose own best metric is lower, with the weights frozen (learning rate 0):
    # the run adopts the better best_model on disk and never replaces it with its own, worse, model.
    epoch_1 = load_state(f"{checkpoint_prefix(output / 'epoch_1')}.pdstates")["best_metric"]
    assert epoch_1 < best["best_metric"]
    resumed = make_trainer(tmp_path, data_root, ["Global.epochs=2", f"Global.checkpoint={output / 'epoch_1'}",
                                                 "LRScheduler.learning_rate=0.0"])
    assert resumed.state["best_metric"] == best["best_metric"]
    resumed.train()
    assert os.readlink(output / "best_model") == best_target
    assert load_state(f"{checkpoint_prefix(output / 'best_model')}.pdstates")["best_metric"] == best["best_metric"]


def test_a_plateau_schedule_ends_the_run_and_resumes_with_its_state(tmp_path, data_root):
    # Learning rate 0: the held-out accuracy cannot improve after the first evaluation, so with
    # stop_patience 2 the run stops after epoch 3 of 6, and the schedule's counters are checkpointed.
    schedule = {"name": "ReduceOnPlateau", "learning_rate": 0.0, "patience": 1, "stop_patience": 2}
    trainer = make_trainer(tmp_path, data_root, ["Global.epochs=6"], changes={"LRScheduler": schedule})
    trainer.train()
    assert trainer.state["epoch"] == 3 and trainer.state["stop_early"]
    latest = tmp_path / "output" / "IResNet" / "latest"
    saved = load_state(f"{checkpoint_prefix(latest)}.pdopt")["lr_schedule"]
    assert saved["without_gain"] == 2
    resumed = make_trainer(tmp_path, data_root, ["Global.epochs=6", f"Global.checkpoint={latest}"],
                           changes={"LRScheduler": schedule})
    assert resumed.schedule.state_dict() == saved
