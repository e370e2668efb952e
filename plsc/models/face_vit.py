"""FaceViT: a plain pre-norm ViT on 9x9 patches of a 112x112 face with a flatten+BN embedding head."""
import paddle
import paddle.nn as nn

from plsc.errors import PlscError
from plsc.models.layers import DropPath, check_data_format, init_constant, init_trunc_normal, to_layout
from plsc.registry import MODELS

IMAGE_SIZE = 112
PATCH_SIZE = 9  # 12 x 12 = 144 patches; the last 4 pixel rows/columns are never seen (as in PLSC)
LINEAR_INIT_STD = 0.02
# PLSC draws pos_embed and mask_token from a truncated N(0, 1) (its face_vit.py); pre-norm
# blocks normalise the sum, so the large scale does not swamp the patch embedding.
TOKEN_INIT_STD = 1.0
LAYER_NORM_EPSILON = 1e-5
HEAD_BN_EPSILON = 2e-5


def random_token_keep(tokens, keep_count):
    """Keep `keep_count` random tokens per sample: tokens [N, L, D] -> kept [N, K, D], restore index [N, L].

    Concatenating K processed tokens with L-K filler tokens and gathering with the restore
    index puts every kept token back at its original position.
    """
    batch, length, dim = tokens.shape
    shuffle = paddle.argsort(paddle.rand([batch, length]), axis=1)
    restore = paddle.argsort(shuffle, axis=1)
    keep_index = shuffle[:, :keep_count].unsqueeze(-1).expand([batch, keep_count, dim])
    return paddle.take_along_axis(tokens, keep_index, axis=1), restore


def restore_tokens(kept, filler, restore):
    """kept [N, K, D], filler [1, 1, D], restore [N, L] -> [N, L, D] with filler at the dropped slots."""
    batch, keep_count, dim = kept.shape
    length = restore.shape[1]
    padded = paddle.concat([kept, filler.expand([batch, length - keep_count, dim])], axis=1)
    return paddle.take_along_axis(padded, restore.unsqueeze(-1).expand([batch, length, dim]), axis=1)


class Attention(nn.Layer):
    """Multi-head self-attention, qkv without bias, output projection with bias."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias_attr=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens):
        """tokens: [N, L, D] -> [N, L, D]."""
        batch, length, dim = tokens.shape
        qkv = self.qkv(tokens).reshape([batch, length, 3, self.num_heads, dim // self.num_heads])
        query, key, value = qkv.transpose([2, 0, 3, 1, 4]).unbind(0)  # each [N, H, L, D/H]
        weights = nn.functional.softmax(paddle.matmul(query, key, transpose_y=True) * self.scale, axis=-1)
        mixed = paddle.matmul(weights, value).transpose([0, 2, 1, 3]).reshape([batch, length, dim])
        return self.proj(mixed)

    def count_macs(self, inputs, output):
        """The two matmuls (q k^T and weights v): 2 * N * L^2 * D multiply-accumulates."""
        batch, length, dim = inputs[0].shape
        return 2 * batch * length * length * dim


class Block(nn.Layer):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x))), MLP with ReLU6."""

    def __init__(self, dim, num_heads, mlp_ratio, drop_path):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, epsilon=LAYER_NORM_EPSILON)
        self.attention = Attention(dim, num_heads)
        self.mlp_norm = nn.LayerNorm(dim, epsilon=LAYER_NORM_EPSILON)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU6(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens):
        tokens = tokens + self.drop_path(self.attention(self.attention_norm(tokens)))
        return tokens + self.drop_path(self.mlp(self.mlp_norm(tokens)))


class FaceViT(nn.Layer):
    """images [N, 3, 112, 112] in [-1, 1] -> embedding [N, num_features] (BN output).

    In training with mask_ratio > 0, a random int(L * (1 - mask_ratio)) of the L = 144 patch
    tokens go through the blocks and a learned mask token fills the other slots before the
    head. PLSC treats its config value as an on/off switch and always drops 10% (keeps 129);
    here the ratio is taken literally, so PLSC's `mask_ratio: 0.05` keeps 136 tokens and
    `mask_ratio=0.1` reproduces PLSC.

    `data_format` is the layout of the patch-embedding conv only (the tokens are the same either
    way); it is accepted so that every backbone takes the `Model.data_format` key export sets.
    """

    def __init__(self, *, num_features=512, data_format="NCHW", embed_dim=256, depth=12, num_heads=8,
                 mlp_ratio=4.0, drop_path_rate=0.0, mask_ratio=0.0):
        super().__init__()
        self.data_format = check_data_format(data_format)
        if not 0.0 <= mask_ratio < 1.0:
            raise PlscError(f"Model.mask_ratio: {mask_ratio} must be in [0, 1)")
        if not 0.0 <= drop_path_rate < 1.0:
            raise PlscError(f"Model.drop_path_rate: {drop_path_rate} must be in [0, 1)")
        grid = (IMAGE_SIZE - PATCH_SIZE) // PATCH_SIZE + 1
        self.num_tokens = grid * grid
        self.keep_count = int(self.num_tokens * (1.0 - mask_ratio))
        self.mask_ratio = mask_ratio

        self.patch_embed = nn.Conv2D(3, embed_dim, PATCH_SIZE, stride=PATCH_SIZE, data_format=data_format)
        self.pos_embed = self.create_parameter([1, self.num_tokens, embed_dim])
        self.mask_token = self.create_parameter([1, 1, embed_dim])
        # Stochastic depth grows linearly with depth (0 for the first block).
        drop_rates = paddle.linspace(0.0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, rate) for rate in drop_rates])
        self.norm = nn.LayerNorm(embed_dim, epsilon=LAYER_NORM_EPSILON)
        self.feature = nn.Sequential(
            nn.Linear(self.num_tokens * embed_dim, embed_dim, bias_attr=False),
            nn.BatchNorm1D(embed_dim, epsilon=HEAD_BN_EPSILON),
            nn.Linear(embed_dim, num_features, bias_attr=False),
            nn.BatchNorm1D(num_features, epsilon=HEAD_BN_EPSILON),
        )
        self.initialize()

    def initialize(self):
        init_trunc_normal(self.pos_embed, TOKEN_INIT_STD)
        init_trunc_normal(self.mask_token, TOKEN_INIT_STD)
        for layer in self.sublayers():
            if isinstance(layer, nn.Linear):
                init_trunc_normal(layer.weight, LINEAR_INIT_STD)
                if layer.bias is not None:
                    init_constant(layer.bias, 0.0)

    def masking(self):
        return self.training and self.mask_ratio > 0.0

    def patch_tokens(self, images):
        """images: [N, 3, 112, 112] -> patch embeddings [N, L, D], patches in row-major order."""
        patches = self.patch_embed(to_layout(images, self.data_format))
        if self.data_format == "NHWC":
            return patches.flatten(1, 2)  # [N, 12, 12, D] -> [N, L, D]
        return patches.flatten(2).transpose([0, 2, 1])  # [N, D, 12, 12] -> [N, L, D]

    def forward(self, images):
        """images: [N, 3, 112, 112] float32 (always NCHW) -> [N, num_features]."""
        tokens = self.patch_tokens(images) + self.pos_embed  # [N, L, D]
        if self.masking():
            tokens, restore = random_token_keep(tokens, self.keep_count)
        tokens = self.norm(self.blocks(tokens))
        if self.masking():
            tokens = restore_tokens(tokens, self.mask_token, restore)
        return self.feature(tokens.flatten(1))

    # ---- layer-wise LR decay (Optimizer.layer_decay) ---------------------------------------------
    @property
    def num_lr_layers(self):
        """Layer ids run from 0 (patch and position embedding) to depth + 1 (final norm and feature head)."""
        return len(self.blocks) + 2

    def layer_id(self, name):
        """Layer id of a structured parameter name: 'pos_embed' 0, 'blocks.3.mlp.0.weight' 4, 'norm.bias' depth + 1."""
        top = name.split(".", 1)[0]
        # The mask token stands in for patch tokens, so it learns with the input embedding.
        if top in ("patch_embed", "pos_embed", "mask_token"):
            return 0
        if top == "blocks":
            return int(name.split(".")[1]) + 1
        if top in ("norm", "feature"):
            return len(self.blocks) + 1
        raise ValueError(f"FaceViT.layer_id: no layer for parameter '{name}'")


def face_vit(num_features, data_format, drop_path_rate, mask_ratio, embed_dim, depth):
    """PLSC's FaceViT sizes differ only in width and depth (8 heads, MLP ratio 4 throughout)."""
    return FaceViT(num_features=num_features, data_format=data_format, embed_dim=embed_dim, depth=depth,
                   num_heads=8, mlp_ratio=4.0, drop_path_rate=drop_path_rate, mask_ratio=mask_ratio)


# PLSC's sizes: name -> (width, blocks); 8 heads, MLP ratio 4 throughout.
SIZES = {"tiny": (256, 12), "small": (512, 12), "base": (512, 24), "large": (768, 24)}


def register_size(size):
    """Register `FaceViT_{size}_patch9_112` with the width and depth of SIZES[size]."""
    embed_dim, depth = SIZES[size]

    def build(*, num_features=512, data_format="NCHW", drop_path_rate=0.0, mask_ratio=0.0):
        return face_vit(num_features, data_format, drop_path_rate, mask_ratio, embed_dim=embed_dim, depth=depth)

    build.__name__ = f"face_vit_{size}"
    build.__doc__ = f"FaceViT-{size}: width {embed_dim}, {depth} blocks, 8 heads."
    MODELS.register(f"FaceViT_{size}_patch9_112")(build)


for _size in SIZES:
    register_size(_size)
