"""The class layer's CPU kernels (plsc.fast_cpu) against the pure-Paddle reference, step by step.

Every head + loss pair, sampled (rows gathered, the gradient written over them) and at ratio 1.0
(the table updated in place), with and without loss scaling, and on 2 model-parallel ranks: loss,
embedding gradient, class table and momentum agree to 1e-5 after each of three steps.
"""
from pathlib import Path

import numpy as np
import pytest

from tests.heads.kernel_cases import PAIRS, run_steps
from tests.multirank_worker import close, launch_and_collect

KEYS = ("loss", "grad_embeddings", "weight", "velocity")


def assert_same_steps(fast, reference):
    for step, (got, want) in enumerate(zip(fast, reference)):
        assert bool(got["stepped"]) == bool(want["stepped"]), f"step {step}"
        for key in KEYS:
            close(got[key], want[key])


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("sample_ratio, overwrite_rows", [(0.3, True), (0.3, False), (1.0, False)],
                         ids=["sampled-gradient-over-rows", "sampled-separate-gradient", "all-rows"])
def test_cpu_kernels_equal_the_reference(pair, sample_ratio, overwrite_rows):
    fast = run_steps(pair, reference=False, sample_ratio=sample_ratio, model_parallel=False,
                     overwrite_rows=overwrite_rows)
    reference = run_steps(pair, reference=True, sample_ratio=sample_ratio, model_parallel=False)
    assert_same_steps(fast, reference)
    # The steps did something: the table moved and the momentum is not zero.
    assert np.abs(fast[-1]["velocity"]).max() > 0


@pytest.mark.parametrize("pair", ["arcface", "curricularface", "magface"])
def test_cpu_kernels_equal_the_reference_under_loss_scaling(pair):
    fast = run_steps(pair, reference=False, sample_ratio=0.3, model_parallel=False, loss_scale=1024.0)
    reference = run_steps(pair, reference=True, sample_ratio=0.3, model_parallel=False, loss_scale=1024.0)
    assert_same_steps(fast, reference)
    unscaled = run_steps(pair, reference=True, sample_ratio=0.3, model_parallel=False)
    assert_same_steps(fast, unscaled)  # scaling then unscaling changes nothing beyond rounding


def test_an_overflowing_step_leaves_the_table_as_it_was():
    # A scale of 1e38 overflows float32 in backward: the step is skipped, though the kernel has
    # already written the gradient over its gathered copy of the rows.
    fast = run_steps("arcface", reference=False, sample_ratio=0.3, model_parallel=False, loss_scale=1e38, steps=1)
    reference = run_steps("arcface", reference=True, sample_ratio=0.3, model_parallel=False, loss_scale=1e38,
                          steps=1)
    assert not fast[0]["stepped"] and not reference[0]["stepped"]
    np.testing.assert_array_equal(fast[0]["weight"], reference[0]["weight"])


def test_the_target_softmax_kernel_matches_numpy():
    """ArcFace's loss and cosine gradient from the kernel against a direct numpy computation."""
    import paddle

    from plsc.loss.margin import MarginLoss

    rng = np.random.default_rng(3)
    cos = rng.uniform(-0.9, 0.9, size=(5, 9)).astype(np.float32)
    labels = np.array([0, 3, -1, 8, 4])  # row 2's target is on another rank: all its columns are negatives
    cos_tensor = paddle.to_tensor(cos, stop_gradient=False)
    loss = MarginLoss(m2=0.5, s=16.0)(cos_tensor, paddle.to_tensor(labels))
    loss.backward()

    logits = 16.0 * cos.astype(np.float64)
    rows = np.flatnonzero(labels >= 0)
    theta = np.arccos(cos[rows, labels[rows]].astype(np.float64))
    logits[rows, labels[rows]] = 16.0 * np.cos(theta + 0.5)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1))
    target = np.zeros(5)
    target[rows] = shifted[rows, labels[rows]]
    np.testing.assert_allclose(float(loss), np.mean(log_sum - target), rtol=1e-5)

    softmax = np.exp(shifted - log_sum[:, None])
    grad = 16.0 * softmax / 5
    slope = np.sin(theta + 0.5) / np.sin(theta)  # d cos(theta + m) / d cos(theta)
    grad[rows, labels[rows]] = 16.0 * (softmax[rows, labels[rows]] - 1.0) / 5 * slope
    np.testing.assert_allclose(cos_tensor.grad.numpy(), grad, rtol=1e-4, atol=1e-6)


TWO_RANK_SETTINGS = ["arcface", "curricularface", "magface", "subcenter", "arcface_centerloss"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu_kernels_2ranks")
    settings = [f"{pair}_{kind}" for pair in TWO_RANK_SETTINGS for kind in ("fast", "reference")]
    return launch_and_collect(Path(__file__).with_name("_worker_cpu_kernels.py"), root, settings, steps=3)


@pytest.mark.slow
@pytest.mark.parametrize("pair", TWO_RANK_SETTINGS)
def test_cpu_kernels_equal_the_reference_on_two_model_parallel_ranks(two_ranks, pair):
    for step in range(3):
        for rank in range(2):
            got, want = two_ranks[(f"{pair}_fast", step)][rank], two_ranks[(f"{pair}_reference", step)][rank]
            for key in KEYS:
                close(got[key], want[key])
    # Model parallel: the loss is the global batch's on both ranks.
    close(two_ranks[(f"{pair}_fast", 2)][0]["loss"], two_ranks[(f"{pair}_fast", 2)][1]["loss"])
