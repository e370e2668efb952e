"""Clipping by global norm (PLSC semantics) on its own and inside FaceOptimizer, against numpy."""
import numpy as np
import paddle
import pytest
from optim_fakes import FakeHead, give_gradients, parameter
from optim_reference import global_norm, momentum_step

from plsc.errors import PlscError
from plsc.optim import ClipGradByGlobalNorm, build_grad_clip, build_optimizer

EPS = 1e-6  # PLSC divides by norm + 1e-6


def grads_of(arrays):
    return [paddle.to_tensor(np.asarray(array, np.float32)) for array in arrays]


@pytest.fixture
def arrays():
    rng = np.random.default_rng(2)
    return [rng.standard_normal((3, 4)), rng.standard_normal(5), rng.standard_normal((2, 2))]


@pytest.mark.parametrize("clip_norm, always_clip, clip_norm_max, expected_factor", [
    # the three arrays have a norm of about 4.6 (asserted below)
    (1.0, False, None, "clip_norm / (norm + eps)"),  # norm above the threshold: scaled down
    (10.0, False, None, None),                       # below it: left alone
    (10.0, True, None, "clip_norm / (norm + eps)"),  # always_clip: scaled *up* to clip_norm
    (10.0, True, 1.5, 1.5),                          # ... but no more than clip_norm_max
    (1.0, True, 1.5, "clip_norm / (norm + eps)"),    # the cap only bounds the factor from above
])
def test_clip_factor_and_in_place_scaling(arrays, clip_norm, always_clip, clip_norm_max, expected_factor):
    norm = global_norm(arrays)
    assert 4.0 < norm < 5.5
    grads = grads_of(arrays)
    clip = ClipGradByGlobalNorm(clip_norm=clip_norm, always_clip=always_clip, clip_norm_max=clip_norm_max)
    returned = clip([((f"p{k}",), grad) for k, grad in enumerate(grads)], [])
    assert returned == pytest.approx(norm, rel=1e-6)
    if expected_factor is None:
        for grad, array in zip(grads, arrays):  # untouched, bit for bit
            np.testing.assert_array_equal(grad.numpy(), array.astype(np.float32))
        return
    factor = clip_norm / (norm + EPS) if isinstance(expected_factor, str) else expected_factor
    for grad, array in zip(grads, arrays):
        np.testing.assert_allclose(grad.numpy(), array * factor, rtol=1e-6, atol=1e-7)


def test_no_clip_list_excludes_names_containing_dist(arrays):
    grads = grads_of(arrays)
    clip = ClipGradByGlobalNorm(clip_norm=1.0, no_clip_list=["dist"])
    named = [(("backbone.conv.weight", "conv2d_0.w_0"), grads[0]),
             (("partialfc_dist_rank_00000_0.w",), grads[1]),  # excluded: neither counted nor scaled
             (("backbone.fc.weight", "linear_0.w_0"), grads[2])]
    returned = clip(named[:1], named[1:])
    norm = global_norm([arrays[0], arrays[2]])
    assert returned == pytest.approx(norm, rel=1e-6)
    np.testing.assert_allclose(grads[0].numpy(), arrays[0] / (norm + EPS), rtol=1e-6)
    np.testing.assert_allclose(grads[2].numpy(), arrays[2] / (norm + EPS), rtol=1e-6)
    np.testing.assert_array_equal(grads[1].numpy(), arrays[1].astype(np.float32))


def test_no_clip_list_matches_the_structured_name_too(arrays):
    grads = grads_of(arrays[:2])
    clip = ClipGradByGlobalNorm(clip_norm=1e-3, no_clip_list="head")
    clip([(("head.weight", "linear_3.w_0"), grads[0]), (("body.weight", "linear_4.w_0"), grads[1])], [])
    np.testing.assert_array_equal(grads[0].numpy(), arrays[0].astype(np.float32))
    np.testing.assert_allclose(grads[1].numpy(), arrays[1] * 1e-3 / (global_norm(arrays[1:2]) + EPS), rtol=1e-6)


def test_all_zero_gradients_stay_finite():
    grads = grads_of([np.zeros(3)])
    assert ClipGradByGlobalNorm(clip_norm=1.0, always_clip=True)([(("w",), grads[0])], []) == 0.0
    np.testing.assert_array_equal(grads[0].numpy(), 0.0)


@pytest.mark.parametrize("no_clip_list", [[], ["dist"]], ids=["head_clipped", "head_exempt"])
def test_optimizer_clips_before_updating(no_clip_list):
    """Dense grads and the class-centre rows share one norm unless the rows are on no_clip_list."""
    rng = np.random.default_rng(3)
    weight0, head_weight0 = rng.standard_normal((4, 3)), rng.standard_normal((6, 3))
    grad, rows, grad_rows = rng.standard_normal((4, 3)) * 3, [1, 4], rng.standard_normal((2, 3)) * 3
    dense = parameter(weight0, "clipped.w")
    head = FakeHead(head_weight0, name="partialfc_dist_rank_00000_0.w")
    config = {"name": "Momentum", "momentum": 0.9, "weight_decay": 0.0,
              "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 2.0, "no_clip_list": no_clip_list}}
    optimizer = build_optimizer(config, [dense], [head], lr=0.1)
    give_gradients([(dense, grad)])
    head.backward_rows(rows, grad_rows)
    optimizer.step()

    counted = [grad] + ([] if no_clip_list else [grad_rows])
    factor = 2.0 / (global_norm(counted) + EPS)
    expected_dense, _ = momentum_step(weight0, 0.0, grad * factor, 0.1, 0.9, 0.0)
    row_factor = 1.0 if no_clip_list else factor
    expected_rows, _ = momentum_step(head_weight0[rows], 0.0, grad_rows * row_factor, 0.1, 0.9, 0.0)
    np.testing.assert_allclose(dense.numpy(), expected_dense, rtol=1e-5)
    np.testing.assert_allclose(head.weight.numpy()[rows], expected_rows, rtol=1e-5)


def test_replicated_head_rows_count_once():
    """A replicated head (model_parallel False) is clipped with the dense gradients, not summed over ranks."""
    rng = np.random.default_rng(4)
    grad_rows = rng.standard_normal((2, 3)) * 5
    head = FakeHead(rng.standard_normal((4, 3)), name="partialfc_0.w", model_parallel=False)
    config = {"name": "Momentum", "momentum": 0.0, "grad_clip": {"clip_norm": 1.0}}
    optimizer = build_optimizer(config, [], [head], lr=1.0)
    before = head.weight.numpy().copy()
    head.backward_rows([0, 3], grad_rows)
    optimizer.step()
    step = before[[0, 3]] - head.weight.numpy()[[0, 3]]
    # the step is a difference of float32 weights: absolute rounding of about 1e-7
    np.testing.assert_allclose(step, grad_rows / (global_norm([grad_rows]) + EPS), rtol=1e-5, atol=1e-6)


def test_build_grad_clip_from_config():
    assert build_grad_clip(None) is None
    clip = build_grad_clip({"name": "ClipGradByGlobalNorm", "clip_norm": 5.0, "always_clip": True,
                            "no_clip_list": ["dist"]})
    assert (clip.clip_norm, clip.always_clip, clip.no_clip_list, clip.clip_norm_max) == (5.0, True, ["dist"], None)
    with pytest.raises(PlscError, match="ClipGradByGlobalNorm"):
        build_grad_clip({"name": "ClipGradByGlobalNom"})
