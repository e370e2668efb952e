"""Layer-wise LR decay and the no-weight-decay rule: per-group LRs against the formula, in numpy."""
import numpy as np
import paddle
import pytest
from optim_fakes import FakeHead, give_gradients, parameter
from optim_reference import adamw_step, global_norm, momentum_step

from plsc.errors import PlscError
from plsc.models.face_vit import FaceViT
from plsc.optim import build_optimizer

DEPTH = 2
NUM_LR_LAYERS = DEPTH + 2  # patch/pos embedding, two blocks, final norm + feature head
DECAY = 0.75
LRS = [0.01, 0.004, 0.003, 0.002]
# Written out by hand from FaceViT's layout: the tensors the no-weight-decay rule keeps decaying
# (matrices and the 3-D mask token); everything else is 1-D, a bias or the position embedding.
DECAYED = {"mask_token", "patch_embed.weight", "feature.0.weight", "feature.2.weight"} | {
    f"blocks.{block}.{name}" for block in range(DEPTH)
    for name in ("attention.qkv.weight", "attention.proj.weight", "mlp.0.weight", "mlp.2.weight")}


def expected_layer(name):
    """FaceViT's layer ids: 0 embeddings, k + 1 for block k, DEPTH + 1 for the final norm and head."""
    if name in ("pos_embed", "mask_token") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    assert name.startswith(("norm.", "feature.")), name
    return DEPTH + 1


def close(actual, expected, rtol=2e-5):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def tiny_vit():
    """A small FaceViT and its trainable (structured name, Parameter) pairs."""
    model = FaceViT(embed_dim=16, depth=DEPTH, num_heads=2, num_features=8)
    return model, [(name, param) for name, param in model.named_parameters() if not param.stop_gradient]


def random_gradients(rng, named):
    return {name: rng.standard_normal(param.shape) for name, param in named}


def group_of(optimizer):
    """structured name -> its ParameterGroup."""
    return {names[0]: group for group in optimizer.groups for names, _ in group.parameters}


# ---- the groups --------------------------------------------------------------------------------
def test_face_vit_groups_scale_by_the_layer_formula():
    model, named = tiny_vit()
    assert model.num_lr_layers == NUM_LR_LAYERS
    optimizer = build_optimizer({"name": "AdamW", "weight_decay": 0.05, "layer_decay": DECAY}, named, [], lr=1e-3,
                                backbone=model)
    groups = group_of(optimizer)
    assert set(groups) == {name for name, _ in named}
    for name, param in named:
        layer = expected_layer(name)
        assert groups[name].layer_id == layer, name
        assert groups[name].lr_scale == pytest.approx(DECAY ** (NUM_LR_LAYERS - 1 - layer), rel=1e-12)
        # What Paddle multiplies the schedule's LR by at each step.
        assert param.optimize_attr["learning_rate"] == groups[name].lr_scale
        assert groups[name].weight_decay == (0.05 if name in DECAYED else 0.0), name
    assert [group.lr_scale for group in optimizer.groups if group.weight_decay > 0] == pytest.approx(
        [0.421875, 0.5625, 0.75, 1.0])


def test_describe_groups_lists_each_group_and_follows_set_lr():
    model, named = tiny_vit()
    head = FakeHead(np.ones((5, 8)), name="partialfc_describe.w")
    optimizer = build_optimizer({"name": "Momentum", "weight_decay": 5e-4, "layer_decay": 0.5}, named, [head],
                                lr=0.1, backbone=model)
    lines = optimizer.describe_groups()
    assert len(lines) == len(optimizer.groups) + 1
    # layer 0, decayed: patch_embed.weight [16, 3, 9, 9] and mask_token [1, 1, 16]; 0.5 ** 3 = 0.125
    assert lines[0] == "layer 0: lr scale 0.125, lr 0.0125, weight decay 0.0005, 2 parameters (3904 values)"
    assert lines[-1] == "head0 class centres (sparse): lr scale 1, lr 0.1, weight decay 0.0005, 40 values on this rank"
    optimizer.set_lr(0.02)
    assert optimizer.describe_groups()[0].startswith("layer 0: lr scale 0.125, lr 0.0025,")


# ---- one step moves each parameter by its group's LR -------------------------------------------
def test_momentum_steps_follow_the_layer_lr_with_clipping(rng):
    """Two steps of Momentum (L2 decay, clipped gradients) against numpy; the class centres at scale 1."""
    model, named = tiny_vit()
    head = FakeHead(rng.standard_normal((6, 8)), name="partialfc_layer_momentum.w")
    config = {"name": "Momentum", "momentum": 0.9, "weight_decay": 0.05, "layer_decay": DECAY,
              "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 2.0}}
    optimizer = build_optimizer(config, named, [head], lr=LRS[0], backbone=model)
    weights = {name: param.numpy().astype(np.float64) for name, param in named}
    velocities = {name: 0.0 for name, _ in named}
    rows = [1, 4]
    head_weight, head_velocity = head.weight.numpy().astype(np.float64), np.zeros((2, 8))
    for lr in LRS[:2]:
        grads = random_gradients(rng, named)
        row_grads = rng.standard_normal((2, 8))
        factor = 2.0 / (global_norm([*grads.values(), row_grads]) + 1e-6)
        assert factor < 1.0  # the clip is active
        optimizer.set_lr(lr)
        give_gradients([(param, grads[name]) for name, param in named])
        head.backward_rows(rows, row_grads)
        optimizer.step()
        optimizer.clear_grad()
        for name, param in named:
            scale = DECAY ** (NUM_LR_LAYERS - 1 - expected_layer(name))
            decay = 0.05 if name in DECAYED else 0.0
            weights[name], velocities[name] = momentum_step(weights[name], velocities[name], grads[name] * factor,
                                                            lr * scale, 0.9, decay)
            close(param.numpy(), weights[name])
        head_weight[rows], head_velocity = momentum_step(head_weight[rows], head_velocity, row_grads * factor, lr,
                                                         0.9, 0.05)
        close(head.weight.numpy(), head_weight)


def test_adamw_steps_follow_the_layer_lr(rng):
    """AdamW's first step moves by lr * scale * g / (|g| + eps) (plus the decoupled decay lr * scale * wd * p)."""
    model, named = tiny_vit()
    config = {"name": "AdamW", "betas": [0.9, 0.999], "epsilon": 1e-8, "weight_decay": 0.05, "layer_decay": DECAY}
    optimizer = build_optimizer(config, named, [], lr=LRS[0], backbone=model)
    state = {name: (param.numpy().astype(np.float64), 0.0, 0.0) for name, param in named}
    for step, lr in enumerate(LRS[:2], start=1):
        grads = random_gradients(rng, named)
        optimizer.set_lr(lr)
        give_gradients([(param, grads[name]) for name, param in named])
        before = {name: param.numpy().astype(np.float64) for name, param in named}
        optimizer.step()
        optimizer.clear_grad()
        for name, param in named:
            scale = DECAY ** (NUM_LR_LAYERS - 1 - expected_layer(name))
            decay = 0.05 if name in DECAYED else 0.0
            if step == 1:  # the closed form of the first step, independent of the reference
                expected = before[name] * (1.0 - lr * scale * decay) - lr * scale * grads[name] / (
                    np.abs(grads[name]) + 1e-8)
                close(param.numpy(), expected, rtol=1e-5)
            state[name] = adamw_step(*state[name], step, grads[name], lr * scale, 0.9, 0.999, 1e-8, decay)
            close(param.numpy(), state[name][0], rtol=1e-5)


# ---- the no-weight-decay rule on its own ----------------------------------------------------------
def rule_model(rng):
    """Named parameters covering each case of the rule, plus a bias known only by its Paddle name."""
    named = [("encoder.pos_embed", parameter(rng.standard_normal((1, 3, 2)), "pos.w")),
             ("encoder.fc.weight", parameter(rng.standard_normal((2, 3)), "fc.w")),
             ("encoder.fc.bias", parameter(rng.standard_normal(3), "fc.b")),
             ("encoder.norm.weight", parameter(rng.standard_normal(3), "norm.w")),
             ("encoder.proj.bias", parameter(rng.standard_normal((2, 3)), "proj.b"))]  # a 2-D 'bias'
    unnamed_bias = parameter(rng.standard_normal((2, 2)), "linear_bias_test.b")
    return named, unnamed_bias


@pytest.mark.parametrize("keys, exempt", [
    ({}, set()),
    ({"no_weight_decay_1d": True}, {"encoder.pos_embed", "encoder.fc.bias", "encoder.norm.weight",
                                    "encoder.proj.bias", "unnamed_bias"}),
    ({"no_weight_decay_1d": True, "no_weight_decay_name": "fc.w"}, {
        "encoder.pos_embed", "encoder.fc.weight", "encoder.fc.bias", "encoder.norm.weight", "encoder.proj.bias",
        "unnamed_bias"}),
], ids=["off_by_default", "on", "with_name_patterns"])
def test_no_weight_decay_rule_exempts_1d_bias_and_pos_embed(rng, keys, exempt):
    """With a zero gradient one Momentum step is pure decay: p -= lr * wd * p, or nothing when exempt."""
    named, unnamed_bias = rule_model(rng)
    everything = named + [("unnamed_bias", unnamed_bias)]
    # The unnamed bias goes in as a plain Parameter: only its Paddle name ('..b_0') says it is a bias.
    optimizer = build_optimizer({"name": "Momentum", "weight_decay": 0.1, **keys}, named + [unnamed_bias], [],
                                lr=0.5)
    before = {name: param.numpy().astype(np.float64) for name, param in everything}
    give_gradients([(param, np.zeros(param.shape)) for _, param in everything])
    optimizer.step()
    for name, param in everything:
        expected = before[name] if name in exempt else before[name] * (1.0 - 0.5 * 0.1)
        close(param.numpy(), expected)


def test_layer_decay_without_the_rule_when_switched_off():
    model, named = tiny_vit()
    optimizer = build_optimizer({"name": "AdamW", "weight_decay": 0.05, "layer_decay": DECAY,
                                 "no_weight_decay_1d": False}, named, [], lr=1e-3, backbone=model)
    assert {group.weight_decay for group in optimizer.groups} == {0.05}
    assert len(optimizer.groups) == NUM_LR_LAYERS


# ---- state round trip --------------------------------------------------------------------------
@pytest.mark.parametrize("config", [
    {"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4, "layer_decay": DECAY},
    {"name": "AdamW", "weight_decay": 0.05, "layer_decay": DECAY},
], ids=["Momentum", "AdamW"])
def test_state_round_trip_with_layer_decay_resumes_bit_exactly(rng, tmp_path, config):
    """Save after two steps, load into an optimizer over a rebuilt model (other Paddle names), and the
    next two steps match an uninterrupted run exactly."""
    model, named = tiny_vit()
    grads = [random_gradients(rng, named) for _ in LRS]

    def run(optimizer, named, steps):
        for step in steps:
            give_gradients([(param, grads[step][name]) for name, param in named])
            optimizer.set_lr(LRS[step])
            optimizer.step()
            optimizer.clear_grad()

    first = build_optimizer(config, named, [], lr=LRS[0], backbone=model)
    run(first, named, [0, 1])
    saved = {name: param.numpy().copy() for name, param in named}
    paddle.save(first.state_dict(), str(tmp_path / "opt.pdopt"))
    run(first, named, [2, 3])
    uninterrupted = {name: param.numpy().copy() for name, param in named}

    rebuilt, rebuilt_named = tiny_vit()
    assert rebuilt_named[0][1].name != named[0][1].name
    for name, param in rebuilt_named:
        param.set_value(saved[name])
    resumed = build_optimizer(config, rebuilt_named, [], lr=LRS[2], backbone=rebuilt)
    resumed.set_state_dict(paddle.load(str(tmp_path / "opt.pdopt")))
    run(resumed, rebuilt_named, [2, 3])
    for name, param in rebuilt_named:
        np.testing.assert_array_equal(param.numpy(), uninterrupted[name], err_msg=name)


# ---- mistakes ------------------------------------------------------------------------------------
class PlainCNN(paddle.nn.Layer):
    """A backbone without layer ids."""

    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3)


def test_layer_decay_on_a_backbone_without_layer_ids_is_a_user_error():
    model = PlainCNN()
    with pytest.raises(PlscError, match=r"Optimizer\.layer_decay.*PlainCNN"):
        build_optimizer({"name": "AdamW", "layer_decay": DECAY}, model.named_parameters(), [], lr=0.1,
                        backbone=model)
    # Without the key the same backbone is fine.
    build_optimizer({"name": "AdamW"}, model.named_parameters(), [], lr=0.1, backbone=model)


@pytest.mark.parametrize("keys, words", [
    ({"layer_decay": 1.5}, "Optimizer.layer_decay"),
    ({"layer_decay": 0}, "Optimizer.layer_decay"),
    ({"layer_decay": "0.75"}, "Optimizer.layer_decay"),
    ({"no_weight_decay_1d": "yes"}, "Optimizer.no_weight_decay_1d"),
])
def test_bad_values_are_user_errors(keys, words):
    with pytest.raises(PlscError, match=words):
        build_optimizer({"name": "Momentum", **keys}, [], [], lr=0.1)
