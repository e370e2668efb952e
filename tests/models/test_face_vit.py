import inspect

import numpy as np
import paddle
import pytest

from backbone_checks import assert_finite_gradients, assert_layouts_agree, images
from plsc.errors import PlscError
from plsc.models import MODELS
from plsc.models.complexity import count_flops
from plsc.models.face_vit import Attention, FaceViT, random_token_keep, restore_tokens

VIT_NAMES = ["FaceViT_tiny_patch9_112", "FaceViT_small_patch9_112", "FaceViT_base_patch9_112",
             "FaceViT_large_patch9_112"]
SMALL = dict(num_features=16, embed_dim=32, depth=3, num_heads=4)


def small_pair(**kwargs):
    """Two FaceViTs with the same weights: one with the given switches, one with everything off."""
    paddle.seed(0)
    switched = FaceViT(**SMALL, **kwargs)
    plain = FaceViT(**SMALL)
    plain.set_state_dict(switched.state_dict())
    return switched, plain


def test_tiny_shape_gradients_and_gflops():
    paddle.seed(0)
    model = MODELS.build("FaceViT_tiny_patch9_112", mask_ratio=0.1, drop_path_rate=0.1)
    assert model.num_tokens == 144 and model.keep_count == 129
    model.eval()
    with paddle.no_grad():
        assert model(images(2)).shape == [2, 512]
    assert_finite_gradients(model, images(2))
    # insightface lists its ViT-T (same shape) at 1.5 GFLOPs.
    assert count_flops(model) * 1e-9 == pytest.approx(1.5, rel=0.01)


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_tiny_output_shape(data_format):
    model = MODELS.build("FaceViT_tiny_patch9_112", data_format=data_format, num_features=128)
    model.eval()
    with paddle.no_grad():
        assert model(images(2)).shape == [2, 128]


def test_layouts_agree():
    # Same weights, patch conv in either layout: the tokens and so the embedding must agree.
    assert_layouts_agree(lambda fmt: FaceViT(**SMALL, data_format=fmt), batch=4)


def test_gradients_finite_without_masking():
    model, _ = small_pair(drop_path_rate=0.2)
    # With masking off the mask token takes no part in the forward.
    assert_finite_gradients(model, images(3), unused=("mask_token",))


def test_masking_changes_training_output_only():
    masked, plain = small_pair(mask_ratio=0.25)
    inputs = images(4)
    # Eval first: a train-mode forward moves the BN running statistics differently in each model.
    masked.eval()
    plain.eval()
    with paddle.no_grad():
        np.testing.assert_allclose(masked(inputs).numpy(), plain(inputs).numpy(), rtol=0, atol=1e-6)
    masked.train()
    plain.train()
    with paddle.no_grad():
        assert np.abs(masked(inputs).numpy() - plain(inputs).numpy()).max() > 1e-3


def test_eval_is_deterministic_and_drop_path_off():
    switched, plain = small_pair(mask_ratio=0.1, drop_path_rate=0.5)
    inputs = images(2)
    switched.eval()
    plain.eval()
    with paddle.no_grad():
        first, second = switched(inputs).numpy(), switched(inputs).numpy()
        reference = plain(inputs).numpy()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, reference, rtol=0, atol=1e-6)


def test_drop_path_is_random_in_training():
    paddle.seed(0)
    model = FaceViT(**SMALL, drop_path_rate=0.5)
    model.train()
    # Batch statistics are the same in both calls; only the dropped branches differ.
    inputs = images(4)
    with paddle.no_grad():
        outputs = [model(inputs).numpy() for _ in range(3)]
    assert max(np.abs(outputs[0] - other).max() for other in outputs[1:]) > 1e-3


def test_drop_path_rates_grow_linearly():
    model = FaceViT(**SMALL, drop_path_rate=0.3)
    rates = [block.drop_path.drop_prob for block in model.blocks]
    np.testing.assert_allclose(rates, [0.0, 0.15, 0.3], atol=1e-7)


def test_keep_count_follows_mask_ratio():
    assert FaceViT(**SMALL, mask_ratio=0.05).keep_count == 136  # PLSC's 0.05 config would keep 129
    assert FaceViT(**SMALL, mask_ratio=0.5).keep_count == 72


def test_token_keep_and_restore_match_numpy():
    paddle.seed(3)
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 10, 4)).astype("float32")
    filler = rng.normal(size=(1, 1, 4)).astype("float32")
    kept, restore = random_token_keep(paddle.to_tensor(tokens), 6)
    kept, restore = kept.numpy(), restore.numpy()
    rebuilt = restore_tokens(paddle.to_tensor(kept), paddle.to_tensor(filler), paddle.to_tensor(restore)).numpy()
    for sample in range(3):
        assert sorted(restore[sample]) == list(range(10))
        # restore[i] < K means position i holds kept token restore[i]; others hold the filler.
        is_kept = restore[sample] < 6
        assert is_kept.sum() == 6
        np.testing.assert_array_equal(rebuilt[sample][is_kept], tokens[sample][is_kept])
        np.testing.assert_array_equal(rebuilt[sample][~is_kept], np.repeat(filler[0], 4, axis=0))
        # The kept tokens are distinct rows of the input, in the order the restore index gives.
        np.testing.assert_array_equal(kept[sample][restore[sample][is_kept]], tokens[sample][is_kept])


def test_attention_matches_numpy():
    paddle.seed(0)
    attention = Attention(8, num_heads=2)
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, 5, 8)).astype("float32")
    qkv = tokens @ attention.qkv.weight.numpy()
    query, key, value = (qkv[..., i * 8:(i + 1) * 8].reshape(2, 5, 2, 4).transpose(0, 2, 1, 3) for i in range(3))
    scores = query @ key.transpose(0, 1, 3, 2) / 2.0                    # sqrt(head dim 4)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    mixed = (weights @ value).transpose(0, 2, 1, 3).reshape(2, 5, 8)
    expected = mixed @ attention.proj.weight.numpy() + attention.proj.bias.numpy()
    with paddle.no_grad():
        np.testing.assert_allclose(attention(paddle.to_tensor(tokens)).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_init():
    paddle.seed(0)
    model = MODELS.build("FaceViT_tiny_patch9_112")
    fc1 = model.blocks[0].mlp[0]
    assert fc1.weight.numpy().std() == pytest.approx(0.02, rel=0.03)
    assert not fc1.bias.numpy().any()
    pos_embed = model.pos_embed.numpy()
    # N(0, 1) cut at +-2 (the cut is absolute, so it only matters at this std): std 0.88.
    assert np.abs(pos_embed).max() <= 2.0 and pos_embed.std() == pytest.approx(0.88, abs=0.02)


def test_constructor_contract():
    for name in VIT_NAMES:
        parameters = list(inspect.signature(MODELS.get(name)).parameters.values())
        assert [(p.name, p.default, p.kind) for p in parameters] == [
            ("num_features", 512, inspect.Parameter.KEYWORD_ONLY),
            ("data_format", "NCHW", inspect.Parameter.KEYWORD_ONLY),
            ("drop_path_rate", 0.0, inspect.Parameter.KEYWORD_ONLY),
            ("mask_ratio", 0.0, inspect.Parameter.KEYWORD_ONLY)]
        with pytest.raises(TypeError):
            MODELS.build(name, dropout=0.1)
        with pytest.raises(PlscError, match="data_format"):
            MODELS.build(name, data_format="nhwc")
    with pytest.raises(PlscError, match="mask_ratio"):
        MODELS.build("FaceViT_tiny_patch9_112", mask_ratio=1.0)
    with pytest.raises(PlscError, match="drop_path_rate"):
        MODELS.build("FaceViT_tiny_patch9_112", drop_path_rate=-0.1)
