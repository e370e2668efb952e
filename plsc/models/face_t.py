"""FaceT: one ViT for holistic and masked faces that differ only in per-layer prompts (Zhang et al., TIFS 2023).

A plain ViT on 8x8 patches (no class token) whose blocks are DeepNorm (post-LN with an up-weighted
residual) or pre-norm. Each sample carries a flag `is_masked` (0 holistic, 1 masked face). The
flag picks one of two sets of learned prompt tokens that are prepended to the tokens before each
of the first `prompt_layers` blocks and dropped after it, and one of two sets of learned queries
of the prompt pool, which attends over the patch tokens. The pool's outputs are averaged and go
through Linear + BatchNorm (no affine). Everything else is shared by the two kinds of face.
"""
import paddle
import paddle.nn as nn

from plsc.errors import PlscError
from plsc.models.face_vit import Attention
from plsc.models.layers import DropPath, check_data_format, init_constant, init_normal, to_layout
from plsc.registry import MODELS

PATCH_SIZE = 8  # 112 / 8 = 14 x 14 = 196 tokens
NORM_TYPES = ("deepnorm", "prenorm")
# Flag values of `is_masked`, the index of the prompt set used for a sample.
HOLISTIC, MASKED = 0, 1
NUM_PROMPT_KINDS = 2
LAYER_NORM_EPSILON = 1e-5
HEAD_BN_EPSILON = 1e-5
# The authors draw prompts and pool queries from N(0, 1).
PROMPT_INIT_STD = 1.0


def deepnorm_constants(depth):
    """DeepNorm (Wang et al. 2022, encoder-only): residual scale alpha = (2N)^(1/4), init gain beta = (8N)^(-1/4)."""
    return (2.0 * depth) ** 0.25, (8.0 * depth) ** -0.25


def init_xavier(layer, gain):
    """Xavier-uniform weight with `gain` (std = gain * sqrt(2 / (fan_in + fan_out))), zero bias."""
    nn.initializer.XavierUniform(gain=gain)(layer.weight)
    if layer.bias is not None:
        init_constant(layer.bias, 0.0)


def check_norm_type(norm_type, key="Model.norm_type"):
    if norm_type not in NORM_TYPES:
        raise PlscError(f"{key}: '{norm_type}' is not one of {', '.join(NORM_TYPES)}")
    return norm_type


class BiasedAttention(Attention):
    """Multi-head self-attention with a bias on q, k and v (the `qkv_bias` ViT variant)."""

    def __init__(self, dim, num_heads):
        super().__init__(dim, num_heads)
        self.qkv = nn.Linear(dim, 3 * dim)


class Block(nn.Layer):
    """A transformer block, GELU MLP.

    deepnorm: x = LN(alpha x + DropPath(Attn(x))), then x = LN(alpha x + DropPath(MLP(x))).
    prenorm:  x = x + DropPath(Attn(LN(x))), then x = x + DropPath(MLP(LN(x))).
    """

    def __init__(self, dim, num_heads, mlp_ratio, drop_path, norm_type, residual_scale=1.0):
        super().__init__()
        self.norm_type = check_norm_type(norm_type)
        self.residual_scale = float(residual_scale)
        self.attention_norm = nn.LayerNorm(dim, epsilon=LAYER_NORM_EPSILON)
        self.attention = BiasedAttention(dim, num_heads)
        self.mlp_norm = nn.LayerNorm(dim, epsilon=LAYER_NORM_EPSILON)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens):
        """tokens: [N, L, D] -> [N, L, D]."""
        if self.norm_type == "prenorm":
            tokens = tokens + self.drop_path(self.attention(self.attention_norm(tokens)))
            return tokens + self.drop_path(self.mlp(self.mlp_norm(tokens)))
        tokens = self.attention_norm(self.residual_scale * tokens + self.drop_path(self.attention(tokens)))
        return self.mlp_norm(self.residual_scale * tokens + self.drop_path(self.mlp(tokens)))

    def extra_repr(self):
        return f"norm_type={self.norm_type}, residual_scale={self.residual_scale:.4f}"


class PromptPool(nn.Layer):
    """Learned queries (one set per flag value) attend over the patch tokens: [N, L, D] -> [N, P, D].

    Keys are a linear map of the tokens, values the tokens themselves, split into heads; the
    scores are scaled by D^-0.5 (the full width, not the head width, as the authors do).
    """

    def __init__(self, dim, num_heads, num_prompts):
        super().__init__()
        self.num_heads = num_heads
        self.scale = dim ** -0.5
        self.queries = self.create_parameter([NUM_PROMPT_KINDS, num_heads, num_prompts, dim // num_heads])
        self.key = nn.Linear(dim, dim)

    def forward(self, tokens, is_masked):
        """tokens [N, L, D] float32, is_masked [N] int64 -> pooled prompts [N, P, D]."""
        batch, length, dim = tokens.shape
        head_dim = dim // self.num_heads
        queries = paddle.gather(self.queries, is_masked, axis=0)  # [N, H, P, D/H]
        keys = self.key(tokens).reshape([batch, length, self.num_heads, head_dim]).transpose([0, 2, 1, 3])
        values = tokens.reshape([batch, length, self.num_heads, head_dim]).transpose([0, 2, 1, 3])
        weights = nn.functional.softmax(paddle.matmul(queries, keys, transpose_y=True) * self.scale, axis=-1)
        pooled = paddle.matmul(weights, values)  # [N, H, P, D/H]
        return pooled.transpose([0, 2, 1, 3]).reshape([batch, self.queries.shape[2], dim])

    def count_macs(self, inputs, output):
        """The two matmuls (queries k^T and weights v): 2 * N * P * L * D multiply-accumulates."""
        batch, length, dim = inputs[0].shape
        return 2 * batch * self.queries.shape[2] * length * dim


class FaceT(nn.Layer):
    """images [N, 3, S, S] in [-1, 1], is_masked [N] (0/1) -> embedding [N, num_features] (BN output).

    S = `input_size` (a multiple of 8). `is_masked=None` treats every sample as holistic.
    `prompt_layers` of the `depth` blocks (the first ones) get deep prompts; 0 keeps only the
    flag-dependent prompt pool. `data_format` is the layout of the patch-embedding conv only.
    """

    # Inputs beyond the images that the trainer, the evaluator and export pass by name.
    side_inputs = ("is_masked",)
    # Parameters MAE pre-training never uses: fine-tuning from an MAE checkpoint starts them fresh.
    pretraining_fresh = ("prompts", "prompt_pool.", "head.")

    def __init__(self, *, num_features=512, data_format="NCHW", input_size=112, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, norm_type="deepnorm", prompt_layers=None, num_prompts=32,
                 drop_path_rate=0.0):
        super().__init__()
        self.data_format = check_data_format(data_format)
        self.norm_type = check_norm_type(norm_type)
        prompt_layers = depth if prompt_layers is None else prompt_layers
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < PATCH_SIZE \
                or input_size % PATCH_SIZE:
            raise PlscError(f"Model.input_size: {input_size} must be a positive multiple of the patch size "
                            f"{PATCH_SIZE}")
        if not 0 <= prompt_layers <= depth:
            raise PlscError(f"Model.prompt_layers: {prompt_layers} must be in [0, {depth}] (the number of blocks)")
        if num_prompts < 1:
            raise PlscError(f"Model.num_prompts: {num_prompts} must be at least 1")
        if not 0.0 <= drop_path_rate < 1.0:
            raise PlscError(f"Model.drop_path_rate: {drop_path_rate} must be in [0, 1)")
        if num_features < 1:
            raise PlscError(f"Model.num_features: {num_features} must be at least 1")
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.patch_size = PATCH_SIZE
        self.grid_size = input_size // PATCH_SIZE
        self.num_patches = self.grid_size * self.grid_size
        self.prompt_layers, self.num_prompts = prompt_layers, num_prompts
        # Layer-wise LR decay groups: 0 = embeddings, k + 1 = block k, depth + 1 = prompts, pool, head.
        self.num_lr_layers = depth + 2
        if norm_type == "deepnorm":
            self.residual_scale, self.init_gain = deepnorm_constants(depth)
        else:
            self.residual_scale, self.init_gain = 1.0, 1.0

        self.patch_embed = nn.Conv2D(3, embed_dim, PATCH_SIZE, stride=PATCH_SIZE, data_format=data_format)
        self.pos_embed = self.create_parameter([1, self.num_patches, embed_dim])
        drop_rates = paddle.linspace(0.0, drop_path_rate, depth).tolist()  # linear in depth, 0 first
        self.blocks = nn.LayerList([Block(embed_dim, num_heads, mlp_ratio, rate, norm_type, self.residual_scale)
                                    for rate in drop_rates])
        # DeepNorm blocks end in a LayerNorm already; pre-norm blocks need a final one.
        self.norm = nn.LayerNorm(embed_dim, epsilon=LAYER_NORM_EPSILON) if norm_type == "prenorm" else nn.Identity()
        # [layer, kind, prompt, D]; no parameter at all when no block takes prompts.
        self.prompts = (self.create_parameter([prompt_layers, NUM_PROMPT_KINDS, num_prompts, embed_dim])
                        if prompt_layers else None)
        self.prompt_pool = PromptPool(embed_dim, num_heads, num_prompts)
        self.head = nn.Sequential(
            nn.Linear(embed_dim, num_features),
            nn.BatchNorm1D(num_features, epsilon=HEAD_BN_EPSILON, weight_attr=False, bias_attr=False),
        )
        self.initialize()

    def initialize(self):
        init_constant(self.pos_embed, 0.0)
        if self.prompts is not None:
            init_normal(self.prompts, PROMPT_INIT_STD)
        init_normal(self.prompt_pool.queries, PROMPT_INIT_STD)
        # The patch conv is a linear map of each patch's 3*p*p pixels, initialised as that linear
        # layer (fans 3*p*p and D, gain beta) rather than with a conv's fan_out of D*p*p.
        nn.initializer.XavierUniform(fan_in=3 * PATCH_SIZE * PATCH_SIZE, fan_out=self.embed_dim,
                                     gain=self.init_gain)(self.patch_embed.weight)
        init_constant(self.patch_embed.bias, 0.0)
        head = self.head[0]
        for layer in self.sublayers():
            if isinstance(layer, nn.Linear):
                # DeepNorm scales every linear map down by beta but the embedding layer.
                init_xavier(layer, 1.0 if layer is head else self.init_gain)

    def layer_id(self, name):
        """Layer-wise LR decay group of the parameter `name` (as in `named_parameters()`): 0 .. depth + 1."""
        first = name.split(".", 1)[0]
        if first in ("patch_embed", "pos_embed"):
            return 0
        if first == "blocks":
            return int(name.split(".")[1]) + 1
        if first in ("norm", "prompts", "prompt_pool", "head"):
            return self.depth + 1
        raise ValueError(f"FaceT has no parameter group for '{name}'")

    def patch_tokens(self, images):
        """images [N, 3, S, S] -> patch embeddings plus position embedding [N, L, D], row-major patches."""
        patches = self.patch_embed(to_layout(images, self.data_format))
        if self.data_format == "NHWC":
            tokens = patches.flatten(1, 2)  # [N, g, g, D] -> [N, L, D]
        else:
            tokens = patches.flatten(2).transpose([0, 2, 1])  # [N, D, g, g] -> [N, L, D]
        return tokens + self.pos_embed

    def encode_tokens(self, tokens):
        """Any subset of patch tokens [N, K, D] through the blocks without prompts (MAE) -> [N, K, D]."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, images, is_masked=None):
        """images [N, 3, S, S] float32 (always NCHW), is_masked [N] int/bool tensor or None -> [N, num_features]."""
        tokens = self.patch_tokens(images)
        if is_masked is None:
            is_masked = paddle.zeros([tokens.shape[0]], dtype="int64")
        is_masked = is_masked.astype("int64").reshape([-1])  # also takes a collated [N, 1]
        if self.prompts is not None:
            prompts = paddle.gather(self.prompts, is_masked, axis=1)  # [prompt_layers, N, P, D]
        for index, block in enumerate(self.blocks):
            if index < self.prompt_layers:
                # The prompts of this block join the attention and are dropped after it.
                tokens = block(paddle.concat([prompts[index], tokens], axis=1))[:, self.num_prompts:]
            else:
                tokens = block(tokens)
        pooled = self.prompt_pool(self.norm(tokens), is_masked).mean(axis=1)
        return self.head(pooled)


# name -> (width, blocks, heads, default prompts); MLP ratio 4 throughout.
SIZES = {"base": (768, 12, 12, 32), "tiny": (96, 4, 4, 16)}


def register_size(size):
    """Register `FaceT_{size}` with the width, depth, heads and prompt count of SIZES[size]."""
    embed_dim, depth, num_heads, default_prompts = SIZES[size]

    def build(*, num_features=512, data_format="NCHW", input_size=112, norm_type="deepnorm",
              prompt_layers=depth, num_prompts=default_prompts, drop_path_rate=0.0):
        return FaceT(num_features=num_features, data_format=data_format, input_size=input_size,
                     embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4.0, norm_type=norm_type,
                     prompt_layers=prompt_layers, num_prompts=num_prompts, drop_path_rate=drop_path_rate)

    build.__name__ = f"face_t_{size}"
    build.__doc__ = f"FaceT-{size}: width {embed_dim}, {depth} blocks, {num_heads} heads, patch 8."
    MODELS.register(f"FaceT_{size}")(build)


for _size in SIZES:
    register_size(_size)
