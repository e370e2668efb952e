"""GroupFace on IResNet: the aggregation against numpy, training vs eval outputs, save/load as a backbone."""
import numpy as np
import paddle
import pytest

import plsc.heads.groupface  # noqa: F401  (registers GroupFace_IResNet*)
from plsc.errors import PlscError
from plsc.registry import MODELS

TINY = dict(layers=[1, 1], widths=[8, 16], input_size=16, num_features=6, shared_features=10, num_groups=4,
            gdn_hidden=5)


def build(**changes):
    paddle.seed(3)
    return MODELS.build("GroupFace_IResNet", **{**TINY, **changes})


def numpy_groupface(layers, shared, aggregation):
    """v_x + sum_k p_k v_k from the layer's own weights, BN in eval mode (running mean 0, var 1)."""
    def linear(layer, x):
        return x @ layer.weight.numpy() + layer.bias.numpy()

    def batch_norm(layer, x):
        return ((x - layer._mean.numpy()) / np.sqrt(layer._variance.numpy() + layer._epsilon)
                * layer.weight.numpy() + layer.bias.numpy())

    instance = batch_norm(layers.instance[1], linear(layers.instance[0], shared))
    groups = batch_norm(layers.groups[1], linear(layers.groups[0], shared)).reshape(len(shared), 4, 6)
    hidden = np.maximum(batch_norm(layers.decision[1], linear(layers.decision[0], instance)), 0.0)
    logits = linear(layers.decision[3], hidden)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if aggregation == "hard":
        p = np.eye(4)[p.argmax(axis=1)]
    return instance + np.einsum("nk,nkd->nd", p, groups), logits


@pytest.mark.parametrize("aggregation", ["soft", "hard"])
def test_embedding_is_instance_plus_probability_weighted_groups(aggregation):
    model = build(aggregation=aggregation)
    model.eval()
    images = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32))
    shared = model.trunk(images).numpy()
    embedding = model(images).numpy()
    expected, _ = numpy_groupface(model.group_layers, shared, aggregation)
    assert embedding.shape == (3, 6)
    np.testing.assert_allclose(embedding, expected, rtol=1e-4, atol=1e-5)
    assert model.group_logits is None  # nothing kept for the loss outside training


def test_training_forward_keeps_the_group_logits_for_the_loss():
    model = build()
    model.train()
    images = paddle.to_tensor(np.random.default_rng(1).uniform(-1, 1, (4, 3, 16, 16)).astype(np.float32))
    embedding = model(images)
    assert embedding.shape == [4, 6] and model.group_logits.shape == [4, 4]
    (embedding.sum() + model.group_logits.sum()).backward()
    assert model.group_layers.decision[0].weight.grad is not None


def test_depth_variants_are_registered_with_iresnet_keys():
    for depth in (18, 34, 50, 100, 200):
        params = MODELS.parameters(f"GroupFace_IResNet{depth}")
        assert {"num_groups", "shared_features", "gdn_hidden", "aggregation", "output_layer"} <= set(params)
    with pytest.raises(PlscError, match="aggregation"):
        build(aggregation="mean")


def test_jit_save_and_load_reproduce_the_embedding(tmp_path):
    model = build()
    model.eval()
    images = np.random.default_rng(2).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    expected = model(paddle.to_tensor(images)).numpy()
    path = str(tmp_path / "groupface")
    paddle.jit.save(model, path, input_spec=[paddle.static.InputSpec([None, 3, 16, 16], "float32")])
    loaded = paddle.jit.load(path)
    np.testing.assert_allclose(loaded(paddle.to_tensor(images)).numpy(), expected, rtol=1e-5, atol=1e-5)
