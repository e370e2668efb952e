"""PartialFC in one process: shards, initialisation, sampling, and equality with a dense numpy classifier."""
import numpy as np
import paddle
import pytest
from pfc_reference import dense_margin_softmax

from plsc.errors import PlscError
from plsc.heads.class_table import INIT_BLOCK_ROWS, init_class_centers, shard_range
from plsc.heads.partial_fc import PartialFC, num_sampled_classes, remap_labels, sample_class_centers
from plsc.loss.margin import MarginLoss
from plsc.registry import HEADS


def as_rank(monkeypatch, rank, world):
    """Pretend to be `rank` of `world` (only the constructor may run: no collectives here)."""
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", str(world))
    monkeypatch.setenv("PADDLE_TRAINER_ID", str(rank))


def numpy_remap(labels, sampled_rows, class_start):
    column_of_class = {class_start + row: column for column, row in enumerate(sampled_rows)}
    return np.array([column_of_class.get(label, -1) for label in labels])


def run_step(head, embeddings, labels, margins=(1.0, 0.5, 0.0, 64.0)):
    x = paddle.to_tensor(embeddings, dtype="float32", stop_gradient=False)
    cos, local_labels = head(x, paddle.to_tensor(labels, dtype="int64"))
    m1, m2, m3, s = margins
    loss = MarginLoss(m1, m2, m3, s, model_parallel=head.model_parallel)(cos, local_labels)
    loss.backward()
    return float(loss), x.grad.numpy(), cos.numpy(), local_labels.numpy()


def close(actual, expected, rel=1e-5):
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * max(1e-12, np.abs(expected).max()))


# ---- the numpy reference itself ---------------------------------------------------------------
def test_reference_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    x, w, labels = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), np.array([0, 3, 3])
    _, grad_x, grad_w, _ = dense_margin_softmax(x, w, labels, s=8.0)
    step = 1e-6
    for array, grad in ((x, grad_x), (w, grad_w)):
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            original = array[index]
            array[index] = original + step
            upper = dense_margin_softmax(x, w, labels, s=8.0)[0]
            array[index] = original - step
            lower = dense_margin_softmax(x, w, labels, s=8.0)[0]
            array[index] = original
            numeric[index] = (upper - lower) / (2 * step)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


# ---- shards and initialisation --------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [4, 7, 10, 13, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_range_tiles_the_classes(num_classes, world):
    sizes = [len(part) for part in np.array_split(np.arange(num_classes), world)]  # larger parts first
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    assert [shard_range(num_classes, world, rank) for rank in range(world)] == list(zip(starts, sizes))


def test_init_rows_do_not_depend_on_how_the_table_is_cut():
    num_classes, dim, seed = 2 * INIT_BLOCK_ROWS + 5, 3, 11
    full = init_class_centers(seed, 0, num_classes, dim)
    cuts = [0, 1, INIT_BLOCK_ROWS - 1, INIT_BLOCK_ROWS + 7, 2 * INIT_BLOCK_ROWS, num_classes]
    pieces = [init_class_centers(seed, start, stop, dim) for start, stop in zip(cuts[:-1], cuts[1:])]
    np.testing.assert_array_equal(np.concatenate(pieces), full)
    assert full.dtype == np.float32
    assert abs(full.mean()) < 1e-3 and full.std() == pytest.approx(0.01, rel=0.03)
    assert not np.allclose(init_class_centers(seed + 1, 0, 10, dim), full[:10])


def test_shard_weights_concatenate_to_the_single_process_table(monkeypatch):
    num_classes, dim = 2 * INIT_BLOCK_ROWS + 3, 2
    single = PartialFC(num_classes, dim, model_parallel=True, seed=5).weight.numpy()
    for world in (2, 3):
        shards = []
        for rank in range(world):
            as_rank(monkeypatch, rank, world)
            head = PartialFC(num_classes, dim, model_parallel=True, seed=5)
            assert (head.class_start, head.num_local_classes) == shard_range(num_classes, world, rank)
            shards.append(head.weight.numpy())
        np.testing.assert_array_equal(np.concatenate(shards), single)


def test_weight_is_a_named_frozen_parameter(monkeypatch):
    as_rank(monkeypatch, 1, 2)
    sharded = HEADS.build("PartialFC", num_classes=9, embedding_size=4, sample_ratio=1.0,
                          model_parallel=True, seed=2022)
    assert "dist" in sharded.weight.name and "00001" in sharded.weight.name
    assert sharded.weight.stop_gradient and sharded.weight.is_distributed
    assert list(sharded.state_dict()) == ["weight"] and sharded.weight.shape == [4, 4]
    assert (sharded.class_start, sharded.num_local_classes) == (5, 4)

    replicated = PartialFC(9, 4, model_parallel=False)
    assert "dist" not in replicated.weight.name and replicated.replicated
    assert (replicated.class_start, replicated.num_local_classes) == (0, 9)
    assert not replicated.weight.is_distributed


@pytest.mark.parametrize("kwargs", [{"sample_ratio": 0.0}, {"sample_ratio": 1.5}, {"num_classes": 0}])
def test_bad_settings_are_user_errors(kwargs):
    settings = {"num_classes": 10, "embedding_size": 4, **kwargs}
    with pytest.raises(PlscError):
        PartialFC(**settings)


def test_more_ranks_than_classes_is_a_user_error(monkeypatch):
    as_rank(monkeypatch, 0, 4)
    with pytest.raises(PlscError, match="class_num"):
        PartialFC(3, 4, model_parallel=True)


# ---- sampling ------------------------------------------------------------------------------
def test_num_sampled_classes_rounds_up():
    assert num_sampled_classes(0.3, 10) == 3  # 0.3 * 10 is 3.0000000000000004 in floating point
    assert num_sampled_classes(0.1, 93431) == 9344
    assert num_sampled_classes(0.2, 1029953) == 205991
    assert num_sampled_classes(0.01, 5) == 1
    assert num_sampled_classes(1.0, 17) == 17


@pytest.mark.parametrize("world", [1, 3])
def test_sampling_invariants_on_uneven_shards(world):
    num_classes, ratio = 23, 0.3
    rng = np.random.default_rng(1)
    labels = rng.integers(0, num_classes, size=12)
    owners = np.zeros(len(labels), dtype=int)
    for rank in range(world):
        class_start, num_local = shard_range(num_classes, world, rank)
        num_sample = num_sampled_classes(ratio, num_local)
        index = sample_class_centers(labels, class_start, num_local, num_sample, np.random.default_rng(rank))
        on_shard = labels[(labels >= class_start) & (labels < class_start + num_local)] - class_start
        assert set(on_shard) <= set(index)
        assert len(index) == max(num_sample, len(set(on_shard)))
        assert np.all(np.diff(index) > 0) and index.min() >= 0 and index.max() < num_local

        local = remap_labels(paddle.to_tensor(labels), paddle.to_tensor(index), class_start).numpy()
        np.testing.assert_array_equal(local, numpy_remap(labels, index, class_start))
        owners += local >= 0
    np.testing.assert_array_equal(owners, 1)  # every row's class is on exactly one rank


def test_all_positives_are_kept_when_they_outnumber_the_sample():
    labels = np.array([0, 2, 4, 6, 8, 8, 9])
    index = sample_class_centers(labels, 0, 10, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(index, [0, 2, 4, 6, 8, 9])


def test_negatives_are_drawn_uniformly():
    labels = np.array([3, 3, 7])
    rng = np.random.default_rng(0)
    counts = np.zeros(20)
    draws = 2000
    for _ in range(draws):
        counts[sample_class_centers(labels, 0, 20, 5, rng)] += 1
    assert counts[3] == counts[7] == draws
    negatives = np.delete(counts, [3, 7])
    expected = draws * 3 / 18
    assert np.all(np.abs(negatives - expected) < 5 * np.sqrt(expected))


# ---- the head against a dense numpy classifier ------------------------------------------------
def batch(seed, rows, dim, num_classes):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, dim)).astype(np.float32), rng.integers(0, num_classes, size=rows)


@pytest.mark.parametrize("model_parallel", [True, False])
def test_ratio_one_equals_the_full_classifier(model_parallel):
    embeddings, labels = batch(0, 6, 8, 11)
    head = PartialFC(11, 8, sample_ratio=1.0, model_parallel=model_parallel, seed=3)
    weight = head.weight.numpy().copy()
    loss, grad_x, cos, local_labels = run_step(head, embeddings, labels)

    expected_loss, expected_grad_x, expected_grad_w, expected_cos = dense_margin_softmax(embeddings, weight,
                                                                                         labels)
    np.testing.assert_array_equal(head.sampled_index.numpy(), np.arange(11))
    np.testing.assert_array_equal(local_labels, labels)
    close(cos, expected_cos)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    close(grad_x, expected_grad_x)
    close(head.sampled_weight.grad.numpy(), expected_grad_w)
    assert head.weight.grad is None  # the shard is left to the sparse optimizer
    np.testing.assert_array_equal(head.weight.numpy(), weight)


def test_sampled_head_equals_the_classifier_over_its_sampled_rows():
    num_classes = 30
    embeddings, labels = batch(1, 8, 8, num_classes)
    head = PartialFC(num_classes, 8, sample_ratio=0.4, model_parallel=True, seed=4)
    loss, grad_x, _, local_labels = run_step(head, embeddings, labels)

    index = head.sampled_index.numpy()
    assert len(index) == 12 and set(labels) <= set(index) and np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(local_labels, numpy_remap(labels, index, 0))
    sampled = head.weight.numpy()[index]
    expected_loss, expected_grad_x, expected_grad_w, _ = dense_margin_softmax(embeddings, sampled, local_labels)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    close(grad_x, expected_grad_x)
    assert head.sampled_weight.is_leaf and head.sampled_weight.shape == [12, 8]
    assert head.buffers() == [] and list(head.state_dict()) == ["weight"]  # per-step tensors are not state
    close(head.sampled_weight.grad.numpy(), expected_grad_w)


def test_rng_state_makes_the_sample_reproducible():
    embeddings, labels = batch(2, 4, 4, 50)
    head = PartialFC(50, 4, sample_ratio=0.2, model_parallel=True, seed=9)
    inputs = (paddle.to_tensor(embeddings), paddle.to_tensor(labels))
    saved = head.rng_state()
    first = head(*inputs)[1].numpy(), head.sampled_index.numpy()
    head(*inputs)
    second_index = head.sampled_index.numpy()
    head.set_rng_state(saved)
    again = head(*inputs)[1].numpy(), head.sampled_index.numpy()
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], second_index)

    twin = PartialFC(50, 4, sample_ratio=0.2, model_parallel=True, seed=9)
    twin(*inputs)
    np.testing.assert_array_equal(twin.sampled_index.numpy(), first[1])


def test_fused_sampling_path_keeps_the_same_invariants(monkeypatch):
    # Paddle's class_center_sample has a CPU kernel, so its sort-and-remap wrapper is testable here.
    monkeypatch.setattr(PartialFC, "use_fused_ops", property(lambda self: True))
    num_classes = 40
    embeddings, labels = batch(3, 10, 4, num_classes)
    head = PartialFC(num_classes, 4, sample_ratio=0.25, model_parallel=True, seed=1)
    _, local_labels = head(paddle.to_tensor(embeddings), paddle.to_tensor(labels))
    index = head.sampled_index.numpy()
    assert len(index) == max(10, len(set(labels))) and set(labels) <= set(index)
    assert np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(local_labels.numpy(), numpy_remap(labels, index, 0))
    np.testing.assert_array_equal(head.sampled_weight.numpy(), head.weight.numpy()[index])
