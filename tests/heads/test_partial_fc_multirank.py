"""PartialFC + MarginLoss on 2 ranks (gloo, CPU) against one process and a numpy classifier.

One launch runs every setting (see _worker_partial_fc.SETTINGS); the tests read its results.
"""
from pathlib import Path

import numpy as np
import paddle
import pytest
from _worker_partial_fc import DIM, MARGINS, NUM_CLASSES, ROWS_PER_RANK, SEED, SETTINGS, global_batch
from tests.conftest import launch
from pfc_reference import dense_margin_softmax

from plsc.heads.class_table import shard_range
from plsc.heads.partial_fc import PartialFC
from plsc.loss.margin import MarginLoss

WORLD = 2
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """{setting: [rank 0 results, rank 1 results]} from one 2-rank launch."""
    root = tmp_path_factory.mktemp("partial_fc_2ranks")
    launch(Path(__file__).with_name("_worker_partial_fc.py"), [root / "out"], nproc=WORLD, log_dir=root / "log")
    return {name: [dict(np.load(root / "out" / f"{name}_rank{rank}.npz")) for rank in range(WORLD)]
            for name in SETTINGS}


def single_process_step(sample_ratio, model_parallel):
    """The same step in this (1-rank) process over the whole global batch."""
    embeddings, labels = global_batch(WORLD)
    head = PartialFC(NUM_CLASSES, DIM, sample_ratio=sample_ratio, model_parallel=model_parallel, seed=SEED)
    x = paddle.to_tensor(embeddings, stop_gradient=False)
    cos, local_labels = head(x, paddle.to_tensor(labels))
    loss = MarginLoss(**MARGINS, model_parallel=model_parallel)(cos, local_labels)
    loss.backward()
    return dict(loss=float(loss), grad_x=x.grad.numpy(), weight=head.weight.numpy(),
                sampled_index=head.sampled_index.numpy(), sampled_grad=head.sampled_weight.grad.numpy())


def close(actual, expected, rel=1e-5):
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * np.abs(expected).max())


def rows_of(rank):
    return slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)


@pytest.mark.parametrize("name", ["sharded", "replicated"])
def test_ratio_one_on_two_ranks_equals_one_process(ranks, name):
    sample_ratio, model_parallel = SETTINGS[name]
    single = single_process_step(sample_ratio, model_parallel)
    _, labels = global_batch(WORLD)
    shards = []
    for rank, result in enumerate(ranks[name]):
        start, count = shard_range(NUM_CLASSES, WORLD, rank) if model_parallel else (0, NUM_CLASSES)
        assert (int(result["class_start"]), int(result["num_local"])) == (start, count)
        shards.append(result["weight"])
        assert result["loss"] == pytest.approx(single["loss"], rel=1e-5)
        close(result["grad_x"], single["grad_x"][rows_of(rank)])
        close(result["sampled_grad"], single["sampled_grad"][start:start + count])
        np.testing.assert_array_equal(result["global_labels"], labels)
    # Same initial table whether it is cut in two or held whole.
    np.testing.assert_array_equal(np.concatenate(shards) if model_parallel else shards[0], single["weight"])


def test_sampled_shards_form_one_classifier_over_their_union(ranks):
    embeddings, labels = global_batch(WORLD)
    results = ranks["sharded_half"]
    owners = np.zeros(len(labels), dtype=int)
    centers, expected_global_labels, offset = [], np.full(len(labels), -1), 0
    for rank, result in enumerate(results):
        start, count = int(result["class_start"]), int(result["num_local"])
        index, local = result["sampled_index"], result["local_labels"]
        on_shard = labels[(labels >= start) & (labels < start + count)] - start
        assert set(on_shard) <= set(index)
        assert len(index) == max(int(result["num_sample"]), len(set(on_shard)))
        assert int(result["num_sample"]) == int(np.ceil(0.5 * count))
        assert np.all(np.diff(index) > 0)
        column_of_class = {start + row: column for column, row in enumerate(index)}
        np.testing.assert_array_equal(local, [column_of_class.get(label, -1) for label in labels])
        owners += local >= 0
        expected_global_labels[local >= 0] = local[local >= 0] + offset
        centers.append(result["weight"][index])
        offset += len(index)
    np.testing.assert_array_equal(owners, 1)

    loss, grad_x, grad_w, cos = dense_margin_softmax(embeddings, np.concatenate(centers), expected_global_labels,
                                                     **MARGINS)
    columns = np.cumsum([0] + [len(result["sampled_index"]) for result in results])
    for rank, result in enumerate(results):
        np.testing.assert_array_equal(result["global_labels"], expected_global_labels)
        assert result["loss"] == pytest.approx(loss, rel=1e-5)
        close(result["cos"], cos[:, columns[rank]:columns[rank + 1]])
        close(result["grad_x"], grad_x[rows_of(rank)], rel=1e-4)
        close(result["sampled_grad"], grad_w[columns[rank]:columns[rank + 1]], rel=1e-4)


def test_replicated_sampling_is_identical_on_every_rank(ranks):
    single = single_process_step(*SETTINGS["replicated_half"])
    for rank, result in enumerate(ranks["replicated_half"]):
        np.testing.assert_array_equal(result["sampled_index"], single["sampled_index"])
        assert result["loss"] == pytest.approx(single["loss"], rel=1e-5)
        close(result["grad_x"], single["grad_x"][rows_of(rank)])
        close(result["sampled_grad"], single["sampled_grad"])
