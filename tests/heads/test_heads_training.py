"""Each literature head trains with Partial FC at sample_ratio 0.3, and resumes exactly with its state."""
import numpy as np
import pytest
from heads_tiny import NUM_CLASSES, write_head_config

from plsc.checkpoint import checkpoint_prefix
from plsc.config import load_config
from plsc.data.synthetic import ensure_quickstart_data
from plsc.engine.trainer import Trainer
from plsc.serialization import load_state
from tests.engine.tiny_run import record_losses

pytestmark = pytest.mark.slow
HEADS = ["curricularface", "adaface", "magface", "subcenter", "centerloss", "l2softmax", "groupface"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads_data")
    ensure_quickstart_data(str(root), num_classes=NUM_CLASSES, images_per_class=4, num_pairs=20, seed=7)
    return root


def make_trainer(directory, data_root, head, overrides=(), changes=None):
    return Trainer(load_config(str(write_head_config(directory, data_root, head, changes)), list(overrides)))


@pytest.mark.parametrize("head", HEADS)
def test_trains_with_sampled_class_centres(tmp_path, data_root, head):
    trainer = make_trainer(tmp_path, data_root, head)
    assert trainer.task.head.sample_ratio == 0.3 and trainer.task.head.num_sample == 18
    losses = record_losses(trainer)
    trainer.train()
    assert len(losses) == 4 * (NUM_CLASSES * 4 // 16)
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


RESUME_CASES = {
    # Sub-centre class layer + CurricularFace's t + CenterLoss's sharded table and its momentum.
    "subcenter_curricular_center": ("subcenter", {"Loss.Train": [
        {"CurricularFace": {"m": 0.5, "s": 32.0}}, {"CenterLoss": {"weight": 0.5}}]}),
    # GroupFace model + AdaFace's running norm statistics + GroupLoss.
    "groupface_adaface": ("groupface", {"Loss.Train": [
        {"AdaFace": {"s": 32.0}}, {"GroupLoss": {"weight": 0.1}}]}),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_restores_running_statistics_and_tables_exactly(tmp_path, data_root, case):
    head, changes = RESUME_CASES[case]
    changes = {**changes, "Global.epochs": 1}  # 15 steps; stop the first part after 6
    full = make_trainer(tmp_path / "full", data_root, head, changes=changes)
    full_losses = record_losses(full)
    full.train()

    first = make_trainer(tmp_path / "split", data_root, head, ["Global.max_train_step=6"], changes)
    first.train()
    checkpoint = tmp_path / "split" / "output" / first.config.Model.name / "latest"
    resumed = make_trainer(tmp_path / "split", data_root, head, [f"Global.checkpoint={checkpoint}"], changes)
    assert resumed.state["global_step"] == 6
    # The running statistics and tables are those of the interrupted run at step 6.
    for key, buffers in first.task.loss.state_dict().items():
        for name, value in buffers.items():
            np.testing.assert_array_equal(resumed.task.loss.state_dict()[key][name], value)
    for key, table in first.task.loss.tables().items():
        np.testing.assert_array_equal(resumed.task.loss.tables()[key].weight.numpy(), table.weight.numpy())
    resumed_losses = record_losses(resumed)
    resumed.train()

    np.testing.assert_allclose(resumed_losses, full_losses[6:], rtol=1e-6, atol=1e-6)
    for key, buffers in full.task.loss.state_dict().items():
        for name, value in buffers.items():
            np.testing.assert_allclose(resumed.task.loss.state_dict()[key][name], value, rtol=1e-6)
    for key, table in full.task.loss.tables().items():
        np.testing.assert_allclose(resumed.task.loss.tables()[key].weight.numpy(), table.weight.numpy(),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(resumed.task.head.weight.numpy(), full.task.head.weight.numpy(), rtol=1e-5, atol=1e-6)
    assert load_state(f"{checkpoint_prefix(checkpoint)}.pdopt")["loss"]  # the statistics went into the dense optimizer file
