import inspect
import math

import numpy as np
import paddle
import pytest

from backbone_checks import (assert_finite_gradients, assert_layouts_agree, expected_facet_macs,
                             expected_facet_parameters, images, randomize_norms)
from plsc.errors import PlscError
from plsc.models import MODELS
from plsc.models.complexity import count_flops, count_parameters
from plsc.models.face_t import FaceT, deepnorm_constants

SIZE = 32  # 4 x 4 = 16 patches of 8x8
SMALL = dict(num_features=24, input_size=SIZE, embed_dim=32, depth=3, num_heads=4, num_prompts=5)


def small(seed=0, **kwargs):
    paddle.seed(seed)
    model = FaceT(**{**SMALL, **kwargs})
    randomize_norms(model)
    model.eval()
    return model


def embed(model, inputs, flags=None):
    with paddle.no_grad():
        return model(inputs, None if flags is None else paddle.to_tensor(flags)).numpy()


def test_flag_picks_the_prompt_set_and_nothing_else():
    model = small()
    inputs = images(3, SIZE)
    holistic, masked = embed(model, inputs, [0, 0, 0]), embed(model, inputs, [1, 1, 1])
    assert np.abs(holistic - masked).max(axis=1).min() > 1e-3  # every sample changes
    # A mixed batch: each sample gets its own kind (eval mode: samples are independent).
    mixed = embed(model, inputs, [0, 1, 0])
    np.testing.assert_allclose(mixed[[0, 2]], holistic[[0, 2]], atol=1e-5, rtol=0)
    np.testing.assert_allclose(mixed[1], masked[1], atol=1e-5, rtol=0)
    # With kind 1's prompts and pool queries overwritten by kind 0's, the flag no longer matters:
    # every other weight is shared.
    prompts, queries = model.prompts.numpy(), model.prompt_pool.queries.numpy()
    prompts[:, 1], queries[1] = prompts[:, 0], queries[0]
    model.prompts.set_value(prompts)
    model.prompt_pool.queries.set_value(queries)
    np.testing.assert_allclose(embed(model, inputs, [1, 1, 1]), holistic, atol=1e-6, rtol=0)


def test_only_the_flagged_prompt_set_learns():
    model = small()
    model.train()
    inputs = images(4, SIZE)
    readout = paddle.to_tensor(np.random.default_rng(1).normal(size=(4, 24)).astype("float32"))
    (model(inputs, paddle.to_tensor([0, 0, 0, 0])) * readout).sum().backward()
    prompt_grad, query_grad = model.prompts.grad.numpy(), model.prompt_pool.queries.grad.numpy()
    assert np.abs(prompt_grad[:, 0]).min(axis=(1, 2)).max() > 0 and np.abs(query_grad[0]).max() > 0
    assert not prompt_grad[:, 1].any() and not query_grad[1].any()


def test_holistic_default_equals_zero_flags():
    model = small()
    inputs = images(3, SIZE)
    np.testing.assert_array_equal(embed(model, inputs), embed(model, inputs, [0, 0, 0]))
    # bool flags are accepted as 0/1
    np.testing.assert_array_equal(embed(model, inputs, np.array([True, False, True])),
                                  embed(model, inputs, [1, 0, 1]))


def test_side_inputs_declared():
    assert FaceT.side_inputs == ("is_masked",)
    assert "is_masked" in inspect.signature(FaceT.forward).parameters
    assert not hasattr(MODELS.build("IResNet", layers=[1], widths=[8], input_size=16), "side_inputs")


def test_deepnorm_constants_and_block():
    alpha, beta = deepnorm_constants(12)
    assert alpha == pytest.approx(24 ** 0.25) and alpha == pytest.approx(2.2134, abs=1e-4)
    assert beta == pytest.approx(96 ** -0.25) and beta == pytest.approx(0.31947, abs=1e-5)
    model = small(depth=3)
    assert model.residual_scale == pytest.approx(6 ** 0.25) and model.init_gain == pytest.approx(24 ** -0.25)
    assert all(block.residual_scale == model.residual_scale for block in model.blocks)
    assert isinstance(model.norm, paddle.nn.Identity)  # no final LN
    block = model.blocks[1]
    tokens = paddle.to_tensor(np.random.default_rng(0).normal(size=(2, 7, 32)).astype("float32"))
    with paddle.no_grad():
        # x = LN(a x + Attn(x)); x = LN(a x + MLP(x)), composed from the block's own parts.
        after_attention = block.attention_norm(model.residual_scale * tokens + block.attention(tokens))
        expected = block.mlp_norm(model.residual_scale * after_attention + block.mlp(after_attention))
        np.testing.assert_allclose(block(tokens).numpy(), expected.numpy(), atol=1e-6, rtol=0)


def test_prenorm_block_and_final_norm():
    model = small(norm_type="prenorm")
    assert model.residual_scale == 1.0 and model.init_gain == 1.0
    assert isinstance(model.norm, paddle.nn.LayerNorm)
    block = model.blocks[0]
    tokens = paddle.to_tensor(np.random.default_rng(0).normal(size=(2, 7, 32)).astype("float32"))
    with paddle.no_grad():
        middle = tokens + block.attention(block.attention_norm(tokens))
        expected = middle + block.mlp(block.mlp_norm(middle))
        np.testing.assert_allclose(block(tokens).numpy(), expected.numpy(), atol=1e-5, rtol=0)
    assert embed(model, images(2, SIZE)).shape == (2, 24)


def xavier_std(gain, fan_in, fan_out):
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


@pytest.mark.parametrize("norm_type, gain", [("deepnorm", (8 * 12) ** -0.25), ("prenorm", 1.0)])
def test_init_gains(norm_type, gain):
    # Depth 12 as FaceT-B, a narrow width so it builds fast; num_features 512 as the real head.
    paddle.seed(0)
    model = FaceT(input_size=SIZE, embed_dim=128, depth=12, num_heads=4, norm_type=norm_type)
    for name, layer, fans in [("mlp.0", model.blocks[3].mlp[0], (128, 512)),
                              ("qkv", model.blocks[0].attention.qkv, (128, 384)),
                              ("pool key", model.prompt_pool.key, (128, 128))]:
        assert layer.weight.numpy().std() == pytest.approx(xavier_std(gain, *fans), rel=0.04), name
        assert not layer.bias.numpy().any()
    # The patch embedding is initialised as the linear map 192 -> 128 it is.
    assert model.patch_embed.weight.numpy().std() == pytest.approx(xavier_std(gain, 192, 128), rel=0.03)
    head = model.head[0]
    assert head.weight.shape == [128, 512]
    assert head.weight.numpy().std() == pytest.approx(xavier_std(1.0, 128, 512), rel=0.03)
    assert not model.pos_embed.numpy().any()
    assert model.prompts.numpy().std() == pytest.approx(1.0, rel=0.03)
    assert model.prompt_pool.queries.numpy().std() == pytest.approx(1.0, rel=0.03)
    # The head BN has no affine parameters.
    assert model.head[1].weight is None and model.head[1].bias is None


def test_prompt_layers():
    model = small(prompt_layers=2)
    assert model.prompts.shape == [2, 2, 5, 32]
    # No deep prompts at all: the prompt pool alone follows the flag.
    plain = small(prompt_layers=0)
    assert plain.prompts is None
    inputs = images(2, SIZE)
    holistic, masked = embed(plain, inputs, [0, 0]), embed(plain, inputs, [1, 1])
    assert np.abs(holistic - masked).max() > 1e-3
    with pytest.raises(PlscError, match="Model.prompt_layers"):
        FaceT(**{**SMALL, "prompt_layers": 4})


def test_layer_ids():
    model = small()
    assert model.num_lr_layers == 5
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert ids["pos_embed"] == ids["patch_embed.weight"] == ids["patch_embed.bias"] == 0
    assert ids["blocks.0.attention.qkv.weight"] == 1 and ids["blocks.2.mlp_norm.bias"] == 3
    assert ids["prompts"] == ids["prompt_pool.queries"] == ids["prompt_pool.key.weight"] == 4
    assert ids["head.0.weight"] == ids["head.0.bias"] == 4
    assert set(ids.values()) == set(range(model.num_lr_layers))
    with pytest.raises(ValueError):
        model.layer_id("decoder_blocks.0.weight")


def test_registered_sizes_and_contract():
    parameters = inspect.signature(MODELS.get("FaceT_tiny")).parameters
    assert {name: p.default for name, p in parameters.items()} == dict(
        num_features=512, data_format="NCHW", input_size=112, norm_type="deepnorm", prompt_layers=4,
        num_prompts=16, drop_path_rate=0.0)
    assert inspect.signature(MODELS.get("FaceT_base")).parameters["num_prompts"].default == 32
    model = MODELS.build("FaceT_tiny", input_size=64, num_features=128, drop_path_rate=0.1)
    assert (model.embed_dim, model.depth, model.num_heads, model.num_patches) == (96, 4, 4, 64)
    np.testing.assert_allclose([block.drop_path.drop_prob for block in model.blocks], [0, 0.1 / 3, 0.2 / 3, 0.1],
                               atol=1e-7)
    model.eval()
    assert embed(model, images(2, 64), [0, 1]).shape == (2, 128)
    for key, value in [("norm_type", "postnorm"), ("input_size", 60), ("num_prompts", 0),
                       ("drop_path_rate", 1.0), ("data_format", "nchw")]:
        with pytest.raises(PlscError, match=f"Model.{key}"):
            MODELS.build("FaceT_tiny", **{key: value})


def test_layouts_agree():
    assert_layouts_agree(lambda fmt: FaceT(**SMALL, data_format=fmt), batch=3, size=SIZE)


def test_gradients_finite():
    model = small(drop_path_rate=0.2)
    assert_finite_gradients(model, images(3, SIZE))


def test_encode_tokens_runs_any_subset_without_prompts():
    model = small(prompt_layers=0)
    inputs = images(2, SIZE)
    with paddle.no_grad():
        tokens = model.patch_tokens(inputs)
        assert tokens.shape == [2, 16, 32]
        full = model.encode_tokens(tokens)
        # Without prompts, forward is encode_tokens followed by the pool and head.
        np.testing.assert_allclose(embed(model, inputs),
                                   model.head(model.prompt_pool(full, paddle.zeros([2], "int64")).mean(1)).numpy(),
                                   atol=1e-6, rtol=0)
        assert model.encode_tokens(tokens[:, :5]).shape == [2, 5, 32]


def test_facet_base_size_and_gflops():
    paddle.seed(0)
    model = MODELS.build("FaceT_base")
    assert (model.embed_dim, model.depth, model.num_heads, model.num_patches) == (768, 12, 12, 196)
    assert model.prompts.shape == [12, 2, 32, 768] and model.prompt_pool.queries.shape == [2, 12, 32, 64]
    count = count_parameters(model)
    assert count == expected_facet_parameters(768, 12, 12, 32, 196) == 86_976_512
    macs = count_flops(model)
    assert macs == expected_facet_macs(768, 12, 32, 196)
    assert macs * 1e-9 == pytest.approx(20.48, abs=0.01)
