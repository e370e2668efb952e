"""Accepted PLSC settings get their meaning or a one-line warning: Global.flags, use_dali, -p, BatchSampler, class_num."""
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from plsc.cli import parse_args
from plsc.config import load_config, notices
from plsc.engine import build, tasks  # noqa: F401  (tasks fills TASKS)
from plsc.errors import PlscError


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(notices, "_ALREADY_SAID", set())


def warnings_of(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("plsc: warning: ")]


def test_global_flags_are_applied_and_gpu_only_ones_skipped_on_cpu(capsys):
    before = paddle.get_flags(["FLAGS_max_inplace_grad_add"])["FLAGS_max_inplace_grad_add"]
    try:
        applied = build.apply_paddle_flags({"FLAGS_max_inplace_grad_add": before + 5,
                                            "FLAGS_cudnn_deterministic": 1})
        assert paddle.get_flags(["FLAGS_max_inplace_grad_add"])["FLAGS_max_inplace_grad_add"] == before + 5
    finally:
        paddle.set_flags({"FLAGS_max_inplace_grad_add": before})
    if paddle.device.is_compiled_with_cuda():
        assert applied["FLAGS_cudnn_deterministic"] is True
    else:
        assert applied == {"FLAGS_max_inplace_grad_add": before + 5}
        assert warnings_of(capsys) == ["plsc: warning: Global.flags.FLAGS_cudnn_deterministic: not in this CPU "
                                       "build of Paddle (a GPU-only flag?); skipped"]


def test_flag_of_the_wrong_type_names_the_key():
    with pytest.raises(PlscError, match="Global.flags.FLAGS_max_inplace_grad_add: 'many' is not a int"):
        build.apply_paddle_flags({"FLAGS_max_inplace_grad_add": "many"})


def test_check_supported_applies_flags_and_warns_once_about_use_dali(capsys):
    before = paddle.get_flags(["FLAGS_max_inplace_grad_add"])["FLAGS_max_inplace_grad_add"]
    config = load_config("configs/quickstart.yaml", ["Global.use_dali=True",
                                                     f"Global.flags.FLAGS_max_inplace_grad_add={before + 3}"])
    try:
        build.check_supported(config)
        build.check_supported(config)
        assert paddle.get_flags(["FLAGS_max_inplace_grad_add"])["FLAGS_max_inplace_grad_add"] == before + 3
    finally:
        paddle.set_flags({"FLAGS_max_inplace_grad_add": before})
    said = warnings_of(capsys)
    assert len(said) == 1 and said[0].startswith("plsc: warning: Global.use_dali: True is accepted and ignored")


def test_profiler_option_warns_once_naming_the_flag(capsys):
    for _ in range(2):
        assert parse_args("plsc-train", "", ["-c", "x.yaml", "-p", "batch_range=[10,20]"]).profiler_options
    assert warnings_of(capsys) == ["plsc: warning: -p/--profiler_options is accepted for PLSC compatibility and "
                                   "ignored (Paddle's profiler is not wired in)"]
    parse_args("plsc-train", "", ["-c", "x.yaml"])
    assert warnings_of(capsys) == []


def test_batch_sampler_trains_as_the_distributed_sampler_on_one_process(capsys):
    section = build.train_sampler_section({"name": "BatchSampler", "batch_size": 4, "shuffle": True})
    assert section == {"name": "DistributedBatchSampler", "batch_size": 4, "shuffle": True}
    assert "DataLoader.Train.sampler.name: BatchSampler" in warnings_of(capsys)[0]
    assert build.train_sampler_section({"name": "DistributedBatchSampler", "batch_size": 4})["name"] == \
        "DistributedBatchSampler"


def test_batch_sampler_on_several_ranks_is_refused(monkeypatch):
    monkeypatch.setattr(build.distributed, "world_size", lambda: 2)
    with pytest.raises(PlscError, match="DataLoader.Train.sampler.name: BatchSampler would give every rank"):
        build.train_sampler_section({"name": "BatchSampler", "batch_size": 4})


def test_class_num_above_the_labels_warns_once_naming_both_numbers(capsys):
    dataset = SimpleNamespace(labels=np.array([0, 3, 2, 6, 1]))
    build.check_class_num(dataset, 7)
    assert warnings_of(capsys) == []
    build.check_class_num(dataset, 10)
    build.check_class_num(dataset, 10)
    assert warnings_of(capsys) == ["plsc: warning: Model.class_num is 10 but the training labels need only 7 "
                                   "(largest label 6); the other 3 class centres are never a target"]
    # a property file is checked exactly by the dataset itself: no second opinion here
    build.check_class_num(SimpleNamespace(labels=dataset.labels, records=SimpleNamespace(property=(10, (112, 112)))), 10)
    assert warnings_of(capsys) == []
