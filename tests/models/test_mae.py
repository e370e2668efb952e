import cv2
import numpy as np
import paddle
import pytest

from backbone_checks import images
from plsc.data.synthetic.identity import make_identity
from plsc.data.synthetic.render import render_face
from plsc.errors import PlscError
from plsc.models import MODELS
from plsc.models.mae import (MAEPretrainModel, masked_patch_loss, patchify, sincos_position_embedding, to_uint8,
                             unpatchify, write_png)

SIZE = 32  # 4 x 4 patches of 8 x 8: 12 hidden, 4 visible at mask_ratio 0.75
TINY_DECODER = dict(decoder_dim=64, decoder_depth=2, decoder_heads=4, decoder_mlp_ratio=2.0)


def tiny_mae(seed=0, **kwargs):
    paddle.seed(seed)
    encoder = MODELS.build("FaceT_tiny", input_size=SIZE)
    return MAEPretrainModel(encoder, **{**TINY_DECODER, **kwargs})


def numpy_patchify(batch, patch):
    """[N, C, H, W] -> [N, L, p*p*C]: each patch read row by row, then column, then channel."""
    count, channels, height, width = batch.shape
    rows = []
    for image in batch:
        rows.append([image[:, i:i + patch, j:j + patch].transpose(1, 2, 0).reshape(-1)
                     for i in range(0, height, patch) for j in range(0, width, patch)])
    return np.asarray(rows)


def test_patchify_matches_numpy_and_round_trips():
    batch = np.random.default_rng(0).normal(size=(2, 3, 24, 24)).astype("float32")
    patches = patchify(paddle.to_tensor(batch), 8)
    assert patches.shape == [2, 9, 192]
    np.testing.assert_array_equal(patches.numpy(), numpy_patchify(batch, 8))
    np.testing.assert_array_equal(unpatchify(patches, 8).numpy(), batch)
    model = tiny_mae()
    round_trip = model.unpatchify(model.patchify(paddle.to_tensor(batch[:, :, :16, :16])))
    np.testing.assert_array_equal(round_trip.numpy(), batch[:, :, :16, :16])


def numpy_masked_loss(prediction, target, mask, norm_pix=False):
    if norm_pix:
        target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + 1e-6)
    squared = (prediction.astype(np.float64) - target) ** 2  # [N, L, P]
    return squared[mask.astype(bool)].mean()  # every element of every masked patch, nothing else


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_is_mse_on_masked_patches_only(norm_pix_loss):
    model = tiny_mae(norm_pix_loss=norm_pix_loss)
    batch = images(3, SIZE)
    paddle.seed(5)
    loss, prediction, mask = model(batch)
    prediction, mask = prediction.numpy(), mask.numpy()
    assert prediction.shape == (3, 16, 192) and mask.shape == (3, 16)
    assert set(np.unique(mask)) == {0.0, 1.0} and (mask.sum(axis=1) == 12).all()
    assert len({tuple(row) for row in mask}) > 1  # each image draws its own mask
    target = numpy_patchify(batch.numpy(), 8)
    expected = numpy_masked_loss(prediction, target, mask, norm_pix_loss)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # A perfect prediction of the visible patches changes nothing; of the hidden ones, everything.
    loss_target = target if not norm_pix_loss else (
        (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + 1e-6))
    visible_fixed = np.where(mask[..., None] == 0, loss_target, prediction).astype("float32")
    hidden_fixed = np.where(mask[..., None] == 1, loss_target, prediction).astype("float32")
    tensors = [paddle.to_tensor(a) for a in (target.astype("float32"), mask)]
    assert float(masked_patch_loss(paddle.to_tensor(visible_fixed), *tensors, norm_pix_loss)) == pytest.approx(
        expected, rel=1e-5)
    assert float(masked_patch_loss(paddle.to_tensor(hidden_fixed), *tensors, norm_pix_loss)) == pytest.approx(
        0.0, abs=1e-6)


def test_encoder_sees_visible_patches_only_and_no_prompts():
    model = tiny_mae()
    model.eval()
    batch = images(2, SIZE)
    with paddle.no_grad():
        paddle.seed(7)
        _, prediction, mask = model(batch)
        # Repaint every hidden patch and redraw the prompts: with the same mask the prediction stays.
        patches = model.patchify(batch).numpy()
        patches[mask.numpy() == 1] = np.random.default_rng(1).uniform(-1, 1, size=(24, 192))
        model.encoder.prompts.set_value(np.zeros(model.encoder.prompts.shape, "float32"))
        paddle.seed(7)
        _, repainted, same_mask = model(model.unpatchify(paddle.to_tensor(patches)))
    np.testing.assert_array_equal(same_mask.numpy(), mask.numpy())
    np.testing.assert_allclose(repainted.numpy(), prediction.numpy(), atol=1e-5, rtol=0)


def test_decoder_position_embedding_is_fixed_sincos():
    table = sincos_position_embedding(3, 8)  # dim/4 = 2 frequencies: 1 and 1/100
    row, column = 1, 2  # patch 5 of a 3 x 3 grid
    expected = [np.sin(row), np.sin(row / 100), np.cos(row), np.cos(row / 100),
                np.sin(column), np.sin(column / 100), np.cos(column), np.cos(column / 100)]
    np.testing.assert_allclose(table[5], expected, rtol=1e-6)
    model = tiny_mae()
    assert model.decoder_pos_embed.shape == [1, 16, 64]
    names = [name for name, _ in model.named_parameters()] + list(model.state_dict())
    assert not any("decoder_pos_embed" in name for name in names)
    with pytest.raises(PlscError, match="decoder_dim"):
        sincos_position_embedding(4, 66)


def test_deepnorm_decoder_constants():
    model = tiny_mae()
    assert all(block.residual_scale == pytest.approx(4 ** 0.25) for block in model.decoder_blocks)
    paddle.seed(0)
    default = MAEPretrainModel(MODELS.build("FaceT_tiny", input_size=SIZE))
    assert len(default.decoder_blocks) == 8 and default.mask_token.shape == [1, 1, 516]
    assert default.decoder_blocks[0].residual_scale == pytest.approx(16 ** 0.25)
    fc = default.decoder_blocks[0].mlp[0]  # 516 -> 1548, gain (8 * 8)^(-1/4)
    assert fc.weight.numpy().std() == pytest.approx(64 ** -0.25 * np.sqrt(2 / (516 + 1548)), rel=0.02)
    assert default.decoder_prediction.weight.shape == [516, 192]


def synthetic_faces(count, size):
    """RGB faces rendered by plsc's generator, as the model sees them: [count, 3, size, size] in [-1, 1]."""
    faces = [render_face(make_identity(0, index), np.random.default_rng(index), 0.5, size=size)[0]
             for index in range(count)]
    return paddle.to_tensor((np.stack(faces).transpose(0, 3, 1, 2).astype("float32") - 127.5) / 127.5)


def test_loss_falls_on_synthetic_faces():
    model = tiny_mae()
    faces = synthetic_faces(6, SIZE)
    optimizer = paddle.optimizer.Adam(learning_rate=2e-3, parameters=model.parameters())
    paddle.seed(1)
    losses = []
    for _ in range(30):
        loss, _, _ = model(faces)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
    # Masks are redrawn each step, so compare averages over a few steps.
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert np.isfinite(losses).all()
    assert last < 0.5 * first, (first, last)


def test_reconstruction_grid(tmp_path):
    model = tiny_mae()
    batch = images(3, SIZE)
    with paddle.no_grad():
        paddle.seed(2)
        _, prediction, mask = model(batch)
    grid = model.reconstruction_grid(batch, prediction, mask, max_images=2)
    assert grid.dtype == np.uint8 and grid.shape == (3 * 32 + 2 * 2, 2 * 32 + 2, 3)
    original = to_uint8(batch.numpy()[:2])
    tile = lambda row, column: grid[row * 34:row * 34 + 32, column * 34:column * 34 + 32]  # noqa: E731
    hidden = np.kron(mask.numpy()[:2].reshape(2, 4, 4), np.ones((8, 8))).astype(bool)  # [2, 32, 32]
    predicted = to_uint8(model.unpatchify(prediction[:2]).numpy())
    for column in range(2):
        np.testing.assert_array_equal(tile(0, column), original[column])
        # Hidden patches grey (0 in [-1, 1]), visible ones as they are.
        assert (tile(1, column)[hidden[column]] == 128).all()
        np.testing.assert_array_equal(tile(1, column)[~hidden[column]], original[column][~hidden[column]])
        np.testing.assert_array_equal(tile(2, column)[~hidden[column]], original[column][~hidden[column]])
        np.testing.assert_array_equal(tile(2, column)[hidden[column]], predicted[column][hidden[column]])
    assert (grid[32:34] == 255).all()
    path = write_png(tmp_path / "progress.png", grid)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), grid)


def test_user_errors_name_the_key():
    encoder = MODELS.build("FaceT_tiny", input_size=SIZE)
    for kwargs, key in [(dict(mask_ratio=1.0), "mask_ratio"), (dict(mask_ratio=0.01), "mask_ratio"),
                        (dict(decoder_dim=64, decoder_heads=5), "decoder_heads"),
                        (dict(decoder_dim=66, decoder_heads=6), "decoder_dim")]:
        with pytest.raises(PlscError, match=key):
            MAEPretrainModel(encoder, **{**TINY_DECODER, **kwargs})
