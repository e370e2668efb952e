"""The training loss per group: BalancedFaceDataset's races reach the trainer, which logs `loss_<race>`.

A tiny BUPT-Balancedface-style set is drawn from plsc's synthetic groups (data/index.txt with the
group as the attribute); the logged figures are checked against numpy's cross-entropy of the
cosines the head produced, grouped by each label's race and averaged over the print interval.
"""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from plsc.config import load_config
from plsc.data.sampler import GlobalBatchSampler
from plsc.data.synthetic.fairness import DEFAULT_GROUPS, write_group_folder
from plsc.engine.trainer import Trainer
from plsc.loss.combined import CombinedLoss
from tests.conftest import REPO_ROOT, launch
from tests.engine.tiny_run import IMAGE_SIZE, set_key

IDENTITIES_PER_GROUP, IMAGES_PER_IDENTITY = 3, 4
NUM_CLASSES = len(DEFAULT_GROUPS) * IDENTITIES_PER_GROUP  # 12 identities, 48 images
S, M3 = 16.0, 0.35  # CosFace: its per-row cross-entropy is easy to write in numpy


@pytest.fixture(scope="module")
def balanced_root(tmp_path_factory):
    """A BUPT-Balancedface folder (data/index.txt + data/img/) of synthetic groups; its images also
    have a plain label.txt, for the same data without groups."""
    root = tmp_path_factory.mktemp("balanced")
    write_group_folder(root, DEFAULT_GROUPS, IDENTITIES_PER_GROUP, IMAGES_PER_IDENTITY, seed=3)
    (root / "data" / "img").mkdir(parents=True)
    lines = []
    for line, entry in enumerate((root / "label.txt").read_text().splitlines()):
        path, label = entry.split("\t")
        race = int(label) // IDENTITIES_PER_GROUP  # write_group_folder numbers identities group by group
        shutil.copy(root / path, root / "data" / "img" / f"{line:07d}.jpg")
        lines.append(f"{DEFAULT_GROUPS[race]}/{label}/{line} {race} {label} 1\n")
    (root / "data" / "index.txt").write_text("".join(lines))
    return root


def race_of_label(label):
    return label // IDENTITIES_PER_GROUP


def write_config(directory, root, grouped=True, changes=None):
    """configs/quickstart.yaml shrunk to a tiny IResNet on `root`, CosFace, no evaluation; returns its path."""
    tree = yaml.safe_load((REPO_ROOT / "configs" / "quickstart.yaml").read_text())
    del tree["SyntheticData"], tree["DataLoader"]["Eval"], tree["Metric"]
    dataset = tree["DataLoader"]["Train"]["dataset"]
    transform_ops = [op for op in dataset["transform_ops"] if "RandFlipImage" not in op]
    for op in transform_ops:
        if "ResizeImage" in op:
            op["ResizeImage"]["size"] = IMAGE_SIZE
    tree["DataLoader"]["Train"]["dataset"] = (
        {"name": "BalancedFaceDataset", "root": str(root), "races": list(DEFAULT_GROUPS),
         "transform_ops": transform_ops} if grouped else
        {"name": "FaceIdentificationDataset", "image_root": str(root), "cls_label_path": str(root / "label.txt"),
         "transform_ops": transform_ops})
    tree["Loss"]["Train"] = [{"MarginLoss": {"m1": 1.0, "m2": 0.0, "m3": M3, "s": S, "model_parallel": True}}]
    values = {"Global.output_dir": str(Path(directory) / "output"), "Global.epochs": 2, "Global.seed": 5,
              "Global.eval_during_train": False, "Global.print_batch_step": 2,
              "Model.layers": [1, 1], "Model.widths": [8, 16], "Model.input_size": IMAGE_SIZE,
              "Model.num_features": 16, "Model.class_num": NUM_CLASSES, "LRScheduler.warmup_steps": 2,
              "DataLoader.Train.sampler.batch_size": 16, "DataLoader.Train.loader.num_workers": 0}
    for key, value in {**values, **(changes or {})}.items():
        set_key(tree, key, value)
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / "balanced.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


class RecordingWriter:
    """Stands in for VisualDL's LogWriter: {tag: {step: value}}."""

    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, {})[step] = float(value)

    def close(self):
        pass


def record_head_outputs(trainer):
    """Make the head append each step's (cosines [N, C], labels [N]) as numpy to the returned list."""
    head, seen = trainer.task.head, []
    forward = head.forward

    def recording(embeddings, labels):
        cos_logits, local_labels = forward(embeddings, labels)
        seen.append((cos_logits.numpy().astype(np.float64), labels.numpy().reshape(-1)))
        return cos_logits, local_labels

    head.forward = recording
    return seen


def cosface_rows(cos, labels):
    """Each row's CosFace cross-entropy in float64: [N, C], [N] -> [N]."""
    logits = S * (cos - M3 * np.eye(cos.shape[1])[labels])
    shift = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - shift).sum(axis=1)) + shift[:, 0]
    return log_norm - logits[np.arange(len(labels)), labels]


def expected_group_means(steps, print_every):
    """{print step: {'loss_<group>': mean}} from numpy's per-row losses of the recorded steps."""
    expected = {}
    for end in range(print_every, len(steps) + 1, print_every):
        rows = np.concatenate([cosface_rows(cos, labels) for cos, labels in steps[end - print_every:end]])
        races = np.concatenate([race_of_label(labels) for _, labels in steps[end - print_every:end]])
        expected[end] = {f"loss_{group}": rows[races == race].mean()
                         for race, group in enumerate(DEFAULT_GROUPS) if np.any(races == race)}
    return expected


def test_per_group_losses_equal_numpy_over_each_print_interval(tmp_path, balanced_root):
    trainer = Trainer(load_config(str(write_config(tmp_path, balanced_root)), []))
    steps = record_head_outputs(trainer)
    trainer.train_logger.writer = writer = RecordingWriter()
    trainer.train()
    assert len(steps) == 6  # 48 images / 16 per step x 2 epochs

    expected = expected_group_means(steps, print_every=2)
    log = (tmp_path / "output" / "IResNet" / "train.log").read_text()
    for step, means in expected.items():
        assert set(means) == {f"loss_{group}" for group in DEFAULT_GROUPS}
        line = re.search(rf"global_step: {step}, .*", log).group(0)
        for key, value in means.items():
            assert writer.scalars[f"train/{key}"][step] == pytest.approx(value, rel=1e-5)
            assert float(re.search(rf"{key}: ([0-9.]+)", line).group(1)) == pytest.approx(value, abs=2e-5)  # 5 decimals
    # Logged only at print steps, as the interval's average.
    assert set(writer.scalars["train/loss_group_a"]) == set(expected)


def test_data_without_groups_logs_no_group_keys_and_computes_no_sample_losses(tmp_path, balanced_root, monkeypatch):
    def refuse(self, inputs):
        raise AssertionError("per-sample losses computed for data without groups")

    monkeypatch.setattr(CombinedLoss, "with_sample_losses", refuse)
    trainer = Trainer(load_config(str(write_config(tmp_path, balanced_root, grouped=False)), []))
    trainer.train_logger.writer = writer = RecordingWriter()
    trainer.train()
    assert "train/loss" in writer.scalars and not any(tag.startswith("train/loss_") for tag in writer.scalars)
    log = (tmp_path / "output" / "IResNet" / "train.log").read_text()
    assert "global_step: 6," in log and not re.search(r"loss_(?!scale)", log)


LOGGED = re.compile(r"global_step: (\d+), .*?, loss: ([0-9.]+)(.*?)(?:, loss_scale: [0-9.]+)?, batch_cost")
GROUP_VALUE = re.compile(r"loss_(\w+): ([0-9.]+)")


def logged_intervals(log):
    """{step: (loss, {group: loss})} from a rank's train log."""
    return {int(step): (float(loss), {group: float(value) for group, value in GROUP_VALUE.findall(rest)})
            for step, loss, rest in LOGGED.findall(log)}


def group_counts_per_interval(dataset_groups, global_batch, seed, epochs, print_every):
    """Samples of each group in each print interval of the global batches (the trainer's sampler, 1 rank)."""
    class Sized:
        def __len__(self):
            return len(dataset_groups)

    sampler = GlobalBatchSampler(Sized(), global_batch, shuffle=True, drop_last=True, seed=seed, num_replicas=1, rank=0)
    batches = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches += [dataset_groups[indices] for indices in sampler]
    return {end: np.bincount(np.concatenate(batches[end - print_every:end]), minlength=len(DEFAULT_GROUPS))
            for end in range(print_every, len(batches) + 1, print_every)}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_model_parallel_ranks_log_the_same_groups_of_the_whole_global_batch(tmp_path, balanced_root):
    # 2 ranks x 8 = the global batch of 16; the class layer sharded (the quickstart's model_parallel);
    # a loader worker carries the group field.
    config = write_config(tmp_path, balanced_root, changes={
        "DataLoader.Train.sampler.batch_size": 8, "DataLoader.Train.loader.num_workers": 1})
    launch(REPO_ROOT / "tools" / "train.py", ["-c", config], log_dir=tmp_path / "launch")
    logs = [logged_intervals((tmp_path / "output" / "IResNet" / f"train.rank{rank}.log").read_text())
            for rank in (0, 1)]
    assert sorted(logs[0]) == [2, 4, 6] and logs[0] == logs[1]  # the same figures on both ranks

    groups = np.array([race_of_label(int(line.split()[2]))
                       for line in (balanced_root / "data" / "index.txt").read_text().splitlines()])
    counts = group_counts_per_interval(groups, 16, seed=5, epochs=2, print_every=2)
    for step, (loss, by_group) in logs[0].items():
        assert set(by_group) == {group for group, count in zip(DEFAULT_GROUPS, counts[step]) if count}
        # The groups' means weighted by their counts are the mean over all samples, i.e. the logged
        # loss (the mean of each step's global-batch mean): the sums covered both ranks' samples.
        weighted = sum(count * by_group[group] for group, count in zip(DEFAULT_GROUPS, counts[step]) if count)
        assert weighted / counts[step].sum() == pytest.approx(loss, abs=2e-5)
