"""MAE pre-training as a task of the engine, and fine-tuning a FaceT from its encoder.

Both stages run through the trainer with the shipped demo configs shrunk to 32x32 faces: the MAE
loss falls, a reconstruction picture is written, resume is exact, and the fine-tuning run starts
from exactly the pre-trained encoder while its prompts, pool and head start fresh.
"""
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from plsc.checkpoint import checkpoint_prefix
from plsc.config import load_config
from plsc.engine.trainer import Trainer
from plsc.errors import PlscError
from plsc.serialization import load_state, save_state
from tests.engine.tiny_run import REPO_ROOT, record_losses, set_key, write_tiny_data

SIZE = 32


def write_stage_config(directory, data_root, stem, changes):
    """configs/{stem}.yaml at 32x32 on the tiny synthetic set; returns the path."""
    tree = yaml.safe_load((REPO_ROOT / "configs" / f"{stem}.yaml").read_text())
    del tree["SyntheticData"]
    tree["Global"].pop("pretrain_config", None)
    sections = [tree["DataLoader"]["Train"]]
    eval_sets = tree.get("DataLoader", {}).get("Eval", {}).get("dataset", [])
    for section in [*sections, *[{"dataset": part} for part in eval_sets]]:
        folder = "train" if section is sections[0] else "verification"
        section["dataset"]["image_root"] = str(Path(data_root) / folder)
        section["dataset"]["cls_label_path"] = str(Path(data_root) / folder / "label.txt")
        section["dataset"]["transform_ops"] = [
            {"ResizeImage": {"size": SIZE}} if "ResizeImage" in op else op for op in section["dataset"]["transform_ops"]]
    defaults = {"Global.output_dir": str(Path(directory) / "output"), "Global.print_batch_step": 1,
                "Global.seed": 3, "Model.input_size": SIZE, "Model.num_features": 16,
                "DataLoader.Train.sampler.batch_size": 16, "DataLoader.Train.loader.num_workers": 0,
                "LRScheduler.warmup_steps": 2}
    for key, value in {**defaults, **changes}.items():
        set_key(tree, key, value)
    path = Path(directory) / f"{stem}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    write_tiny_data(root, num_classes=12, images_per_class=8, num_pairs=40)
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_root):
    """A finished 24-step MAE run (4 epochs of 6 steps): (trainer, losses, checkpoint path, config)."""
    work = tmp_path_factory.mktemp("mae")
    config = write_stage_config(work, data_root, "quickstart_facet_mae",
                                {"Global.epochs": 4, "MAE.image_interval": 8, "LRScheduler.learning_rate": 3e-3})
    trainer = Trainer(load_config(str(config), []))
    losses = record_losses(trainer)
    trainer.train()
    return trainer, losses, work / "output" / "FaceT_tiny" / "latest", config


def test_mae_loss_falls_and_pictures_are_written(pretrained):
    trainer, losses, checkpoint, _ = pretrained
    assert len(losses) == 24 and trainer.task.tables == {} and trainer.evaluator is None
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses
    pictures = sorted(Path(trainer.output_dir, "mae").glob("step_*.png"))
    assert [path.name for path in pictures] == ["step_16.png", "step_24.png", "step_8.png"]
    picture = cv2.imread(str(pictures[0]))
    assert picture.shape[0] == 3 * SIZE + 2 * 2 and picture.std() > 5  # three rows of tiles, not blank
    # The checkpoint holds the encoder as `backbone.*` and the decoder as `decoder.*`, no class table.
    weights = load_state(f"{checkpoint_prefix(checkpoint)}.pdparams")
    assert any(key.startswith("backbone.blocks.") for key in weights)
    assert any(key.startswith("decoder.decoder_blocks.") for key in weights)
    assert load_state(f"{checkpoint_prefix(checkpoint)}.pdstates")["tables"] == {}


def test_mae_resume_is_exact(tmp_path, data_root, pretrained):
    _, full_losses, _, _ = pretrained
    config = write_stage_config(tmp_path, data_root, "quickstart_facet_mae",
                                {"Global.epochs": 4, "MAE.image_interval": 8, "LRScheduler.learning_rate": 3e-3})
    first = Trainer(load_config(str(config), ["Global.max_train_step=10"]))
    first.train()
    resumed = Trainer(load_config(str(config), [f"Global.checkpoint={tmp_path / 'output' / 'FaceT_tiny' / 'latest'}"]))
    assert resumed.state["global_step"] == 10
    losses = record_losses(resumed)
    resumed.train()
    np.testing.assert_allclose(losses, full_losses[10:], rtol=1e-5, atol=1e-6)


def test_finetuning_starts_from_the_encoder_and_logs_what_it_loaded(tmp_path, data_root, pretrained):
    mae_trainer, _, checkpoint, _ = pretrained
    config = write_stage_config(tmp_path, data_root, "quickstart_facet", {
        "Global.epochs": 1, "Global.pretrained_model": str(checkpoint), "Model.class_num": 12,
        "Global.seed": 4,  # another seed than pre-training: fresh tensors then differ from the file's
        "DataLoader.Train.dataset.masked_ratio": 0.25})
    trainer = Trainer(load_config(str(config), []))
    encoder = mae_trainer.backbone.state_dict()
    fresh = ("prompts", "prompt_pool.", "head.")
    for key, value in trainer.backbone.state_dict().items():
        if key.startswith(fresh):
            if encoder[key].numpy().std() > 0:  # randomly initialised (not a zero bias or a unit BN variance)
                assert not np.array_equal(value.numpy(), encoder[key].numpy()), key
        else:
            np.testing.assert_array_equal(value.numpy(), encoder[key].numpy(), err_msg=key)
    log = Path(trainer.output_dir, "train.log").read_text()
    line = next(line for line in log.splitlines() if "MAE pre-training checkpoint" in line)
    loaded, skipped, initialised = map(int, re.search(r"loaded (\d+) .*skipped (\d+) .*fresh (\d+)", line).groups())
    assert loaded == sum(1 for key in encoder if not key.startswith(fresh))
    assert initialised == sum(1 for key in encoder if key.startswith(fresh))
    assert skipped >= loaded // 10 and "decoder.decoder_embed.weight" in line
    # The masked prompts get their share of the batch, and the groups of layer-wise LR decay are logged.
    losses = record_losses(trainer)
    trainer.train()
    assert all(np.isfinite(losses))
    assert "layer 0: lr scale 0.237" in log  # 0.75 ** (6 - 1) for FaceT_tiny's 4 blocks + 2
    assert re.search(r"epoch 1 masked faces: \{'samples': 96, 'masked': \d+", Path(trainer.output_dir, "train.log").read_text())


def test_a_mismatched_encoder_is_one_error_naming_the_tensor(tmp_path, data_root, pretrained):
    _, _, checkpoint, _ = pretrained
    weights = load_state(f"{checkpoint_prefix(checkpoint)}.pdparams")
    weights["backbone.pos_embed"] = np.zeros((1, 5, 96), dtype=np.float32)
    save_state(weights, tmp_path / "bad.pdparams")
    config = write_stage_config(tmp_path, data_root, "quickstart_facet", {
        "Global.epochs": 1, "Global.pretrained_model": str(tmp_path / "bad.pdparams"), "Model.class_num": 12})
    with pytest.raises(PlscError, match=r"bad.pdparams: backbone.pos_embed has shape \[1, 5, 96\]"):
        Trainer(load_config(str(config), []))
