"""Masked-autoencoder pre-training of a FaceT encoder (He et al., CVPR 2022, as FaceT uses it).

A random `mask_ratio` of the patches of each image is hidden; only the visible patch tokens go
through the encoder (no prompts). A light decoder sees them back in place, a shared mask token
in the hidden slots and a fixed 2-D sin-cos position embedding, and predicts the pixels of every
patch. The loss is the mean squared error on the hidden patches only, against the image as the
model sees it ([-1, 1]), or against each patch normalised to zero mean and unit variance
(`norm_pix_loss`).

Patch pixels are laid out row by row, then column, then channel: patch (i, j) of an image
[3, H, W] is `image[:, i*p:(i+1)*p, j*p:(j+1)*p].transpose(1, 2, 0).reshape(-1)`.
"""
import cv2
import numpy as np
import paddle
import paddle.nn as nn

from plsc.errors import PlscError
from plsc.models.face_t import Block, check_norm_type, deepnorm_constants, init_xavier
from plsc.models.face_vit import random_token_keep, restore_tokens
from plsc.models.layers import init_normal

# Keeps the per-patch normalisation finite on flat patches (the MAE reference value).
NORM_PIX_EPSILON = 1e-6
MASK_TOKEN_INIT_STD = 0.02
LAYER_NORM_EPSILON = 1e-5
GRID_GAP = 2  # pixels between the tiles of the reconstruction picture
GRID_GAP_VALUE = 255


def sincos_position_embedding(grid_size, dim):
    """Fixed 2-D sin-cos embedding [grid*grid, dim] (row-major patches): half the channels encode the
    row, half the column, each as sin and cos of the position at dim/4 frequencies 10000^(-k/(dim/4))."""
    if dim % 4:
        raise PlscError(f"decoder_dim: {dim} must be a multiple of 4 (sin and cos of row and column)")
    frequencies = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    rows, columns = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")

    def encode(positions):
        angles = positions.reshape(-1, 1) * frequencies  # [L, dim/4]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(rows), encode(columns)], axis=1).astype(np.float32)


def patchify(images, patch_size):
    """images [N, C, H, W] -> patches [N, (H/p)*(W/p), p*p*C], row-major patches."""
    batch, channels, height, width = images.shape
    rows, columns = height // patch_size, width // patch_size
    blocks = images.reshape([batch, channels, rows, patch_size, columns, patch_size])
    return blocks.transpose([0, 2, 4, 3, 5, 1]).reshape([batch, rows * columns, patch_size * patch_size * channels])


def unpatchify(patches, patch_size, channels=3):
    """patches [N, L, p*p*C] of a square grid -> images [N, C, H, W]; the inverse of `patchify`."""
    batch, length, _ = patches.shape
    grid = int(round(length ** 0.5))
    if grid * grid != length:
        raise ValueError(f"{length} patches do not form a square grid")
    blocks = patches.reshape([batch, grid, grid, patch_size, patch_size, channels])
    return blocks.transpose([0, 5, 1, 3, 2, 4]).reshape([batch, channels, grid * patch_size, grid * patch_size])


def masked_patch_loss(prediction, target, mask, norm_pix_loss=False):
    """Mean squared error over the masked patches only.

    prediction, target: [N, L, P] float32; mask: [N, L], 1 = masked. With `norm_pix_loss` each
    target patch is first normalised by its own mean and variance.
    """
    if norm_pix_loss:
        target = normalise_patches(target)
    per_patch = ((prediction - target) ** 2).mean(axis=-1)  # [N, L]
    return (per_patch * mask).sum() / mask.sum()


def normalise_patches(patches):
    """[N, L, P] -> each patch minus its mean, divided by sqrt(its variance + 1e-6)."""
    mean = patches.mean(axis=-1, keepdim=True)
    variance = patches.var(axis=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (variance + NORM_PIX_EPSILON) ** 0.5


class MAEPretrainModel(nn.Layer):
    """images [N, 3, S, S] in [-1, 1] -> (loss [], prediction [N, L, p*p*3], mask [N, L] float32, 1 = masked).

    `encoder` is a FaceT (anything with `patch_tokens`, `encode_tokens`, `embed_dim`, `patch_size`,
    `grid_size` and `norm_type`). Its embedding head, prompts and pool are not used here; after
    pre-training the `encoder.` tensors are the backbone's weights.
    """

    def __init__(self, encoder, decoder_dim=516, decoder_depth=8, decoder_heads=12, decoder_mlp_ratio=3.0,
                 mask_ratio=0.75, norm_pix_loss=False):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise PlscError(f"mask_ratio: {mask_ratio} must be in (0, 1)")
        if decoder_depth < 1:
            raise PlscError(f"decoder_depth: {decoder_depth} must be at least 1")
        if decoder_heads < 1 or decoder_dim % decoder_heads:
            raise PlscError(f"decoder_heads: {decoder_heads} must divide decoder_dim {decoder_dim}")
        self.encoder = encoder
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.patch_size = encoder.patch_size
        num_patches = encoder.grid_size * encoder.grid_size
        # As many patches are hidden in every image, so a batch is one tensor.
        self.num_masked = int(mask_ratio * num_patches)
        if self.num_masked in (0, num_patches):
            raise PlscError(f"mask_ratio: {mask_ratio} hides {self.num_masked} of {num_patches} patches; "
                            "at least one must be hidden and one visible")
        norm_type = check_norm_type(encoder.norm_type)
        residual_scale, init_gain = deepnorm_constants(decoder_depth) if norm_type == "deepnorm" else (1.0, 1.0)

        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = self.create_parameter([1, 1, decoder_dim])
        # Fixed, so not saved: it is recomputed from the grid size on construction.
        self.register_buffer("decoder_pos_embed", paddle.to_tensor(
            sincos_position_embedding(encoder.grid_size, decoder_dim)).unsqueeze(0), persistable=False)
        self.decoder_blocks = nn.LayerList([
            Block(decoder_dim, decoder_heads, decoder_mlp_ratio, 0.0, norm_type, residual_scale)
            for _ in range(decoder_depth)])
        self.decoder_norm = (nn.LayerNorm(decoder_dim, epsilon=LAYER_NORM_EPSILON) if norm_type == "prenorm"
                             else nn.Identity())
        self.decoder_prediction = nn.Linear(decoder_dim, self.patch_size * self.patch_size * 3)

        init_normal(self.mask_token, MASK_TOKEN_INIT_STD)
        for block in self.decoder_blocks:
            for layer in block.sublayers():
                if isinstance(layer, nn.Linear):
                    init_xavier(layer, init_gain)
        init_xavier(self.decoder_embed, 1.0)
        init_xavier(self.decoder_prediction, 1.0)

    def patchify(self, images):
        """images [N, 3, S, S] -> [N, L, p*p*3]."""
        return patchify(images, self.patch_size)

    def unpatchify(self, patches):
        """[N, L, p*p*3] -> images [N, 3, S, S]."""
        return unpatchify(patches, self.patch_size)

    def forward(self, images):
        tokens = self.encoder.patch_tokens(images)  # [N, L, D]
        num_patches = tokens.shape[1]
        visible, restore = random_token_keep(tokens, num_patches - self.num_masked)
        # restore[n, i] is where patch i sits in the shuffled order; the visible ones come first.
        mask = (restore >= num_patches - self.num_masked).astype("float32")
        decoded = self.decoder_embed(self.encoder.encode_tokens(visible))
        decoded = restore_tokens(decoded, self.mask_token, restore) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            decoded = block(decoded)
        prediction = self.decoder_prediction(self.decoder_norm(decoded))
        loss = masked_patch_loss(prediction, self.patchify(images), mask, self.norm_pix_loss)
        return loss, prediction, mask

    def reconstruction_grid(self, images, prediction, mask, max_images=8):
        """uint8 [3*S + 2*gap, n*S + (n-1)*gap, 3] picture of the first n <= max_images images.

        Rows: the original, the encoder's input (hidden patches grey) and the reconstruction (the
        prediction in the hidden patches, the visible ones pasted from the original). Channels keep
        the images' order (RGB for plsc's pipelines).
        """
        with paddle.no_grad():
            count = min(int(images.shape[0]), max_images)
            images = as_float_tensor(images[:count])
            prediction = as_float_tensor(prediction[:count])
            hidden = as_float_tensor(mask[:count]).unsqueeze(-1)  # [n, L, 1]
            patches = self.patchify(images)
            if self.norm_pix_loss:
                # The prediction is in per-patch normalised units; put each patch's own statistics back.
                mean = patches.mean(axis=-1, keepdim=True)
                scale = (patches.var(axis=-1, keepdim=True, unbiased=False) + NORM_PIX_EPSILON) ** 0.5
                prediction = prediction * scale + mean
            masked_input = self.unpatchify(patches * (1.0 - hidden))  # 0 = mid grey in [-1, 1]
            reconstruction = self.unpatchify(prediction * hidden + patches * (1.0 - hidden))
            rows = [to_uint8(part.numpy()) for part in (images, masked_input, reconstruction)]
        return tile_rows(rows)


def as_float_tensor(values):
    """A paddle tensor or numpy array -> float32 paddle tensor."""
    if isinstance(values, paddle.Tensor):
        return values.astype("float32")
    return paddle.to_tensor(np.asarray(values, dtype=np.float32))


def to_uint8(images):
    """float [n, 3, H, W] in [-1, 1] -> uint8 [n, H, W, 3], clipped."""
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def tile_rows(rows):
    """A list of uint8 [n, H, W, 3] rows -> one picture, GRID_GAP pixels between the tiles."""
    count, height, width, _ = rows[0].shape
    picture = np.full((len(rows) * (height + GRID_GAP) - GRID_GAP, count * (width + GRID_GAP) - GRID_GAP, 3),
                      GRID_GAP_VALUE, dtype=np.uint8)
    for row_index, row in enumerate(rows):
        top = row_index * (height + GRID_GAP)
        for column_index, tile in enumerate(row):
            left = column_index * (width + GRID_GAP)
            picture[top:top + height, left:left + width] = tile
    return picture


def write_png(path, picture_rgb):
    """Write an RGB uint8 [H, W, 3] picture as PNG (OpenCV writes BGR, hence the swap)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(picture_rgb, cv2.COLOR_RGB2BGR)):
        raise PlscError(f"{path}: cannot write the reconstruction picture")
    return path
