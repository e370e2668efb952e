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


# ---- MixFair Adapter on GroupFace -------------------------------------------------------------

ALPHA = 0.3
FIXED_PERMUTATION = [2, 0, 3, 1]


def mixfair_images(seed=4):
    return paddle.to_tensor(np.random.default_rng(seed).uniform(-1, 1, (4, 3, 16, 16)).astype(np.float32))


def test_mixfair_embeds_the_mixed_trunk_map_through_the_group_layers(monkeypatch):
    model = build(mixfair={"alpha": ALPHA})
    model.train()
    images = mixfair_images()
    monkeypatch.setattr(paddle, "randperm", lambda n, dtype="int64": paddle.to_tensor(FIXED_PERMUTATION, dtype=dtype))
    embedding = model(images)
    mixed, permutation = model.mixfair_adapter.outputs
    assert permutation.numpy().tolist() == FIXED_PERMUTATION

    # By hand: the trunk's last feature map k, mixed with k[p], through the trunk's output layer and
    # the group layers (the whole GroupFace embedding); the group logits are those of k itself.
    feature_map = model.trunk.stages(model.trunk.stem(images))
    mixed_map = ALPHA * feature_map + (1 - ALPHA) * paddle.gather(feature_map, paddle.to_tensor(FIXED_PERMUTATION))
    expected_mixed, _ = model.group_layers(model.trunk.output_layer(mixed_map))
    expected_embedding, expected_group_logits = model.group_layers(model.trunk.output_layer(feature_map))
    np.testing.assert_allclose(mixed.numpy(), expected_mixed.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(embedding.numpy(), expected_embedding.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.group_logits.numpy(), expected_group_logits.numpy(), rtol=1e-4, atol=1e-5)
    assert mixed.shape == embedding.shape == [4, 6]


def test_mixfair_never_mixes_in_evaluation_and_adds_no_parameters(tmp_path):
    model, plain = build(mixfair={"alpha": ALPHA}), build()
    assert set(model.state_dict()) == set(plain.state_dict())  # checkpoints interchange
    model.train()
    model(mixfair_images())  # a training forward first: evaluation must forget its mix
    model.eval()
    plain.set_state_dict(model.state_dict())
    plain.eval()
    images = mixfair_images(5)
    evaluated = model(images).numpy()
    assert model.mixfair_adapter.outputs == (None, None) and model.group_logits is None
    np.testing.assert_allclose(evaluated, plain(images).numpy(), rtol=1e-6)
    path = str(tmp_path / "groupface_mixfair")
    paddle.jit.save(model, path, input_spec=[paddle.static.InputSpec([None, 3, 16, 16], "float32")])
    np.testing.assert_allclose(paddle.jit.load(path)(images).numpy(), evaluated, rtol=1e-5, atol=1e-5)


def test_every_groupface_name_takes_mixfair():
    for name in ["GroupFace_IResNet"] + [f"GroupFace_IResNet{depth}" for depth in (18, 34, 50, 100, 200)]:
        assert MODELS.parameters(name)["mixfair"] is None
    with pytest.raises(PlscError, match="Model.mixfair.alpha"):
        build(mixfair={"alpha": 0.0})


@pytest.mark.slow
def test_groupface_with_mixfair_cosface_and_group_loss_trains(tmp_path):
    from heads_tiny import NUM_CLASSES, write_head_config

    from plsc.config import load_config
    from plsc.data.synthetic import ensure_quickstart_data
    from plsc.engine.trainer import Trainer
    from tests.engine.tiny_run import record_losses

    ensure_quickstart_data(str(tmp_path / "data"), num_classes=NUM_CLASSES, images_per_class=4, num_pairs=20, seed=7)
    config = write_head_config(tmp_path, tmp_path / "data", "groupface", {
        "Model.mixfair": {"alpha": 0.5},
        "Loss.Train": [{"MixFairCosFace": {"s": 16.0, "m": 0.2}}, {"GroupLoss": {"weight": 0.1}}]})
    trainer = Trainer(load_config(str(config), ["Global.max_train_step=5"]))
    losses = record_losses(trainer)
    trainer.train()
    assert len(losses) == 5 and np.all(np.isfinite(losses))
    log = (tmp_path / "output" / "GroupFace_IResNet" / "train.log").read_text()
    assert "MixFairCosFace: " in log and "GroupLoss: " in log
