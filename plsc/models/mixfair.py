"""MixFair Adapter (Wang et al., "MixFairFace", AAAI 2023): feature-map mixing for the identity bias term.

A CNN backbone is an encoder E (up to its last feature map k) followed by an output layer M (the
paper's "debias layer": IResNet's BN2d + flatten + Dropout + Linear + BN1d). With `Model.mixfair:
{alpha: 0.5}` a training forward also draws a permutation p of the rank's batch and embeds the
mixed map k_mix = alpha * k + (1 - alpha) * k[p]:

    f = M(k)  (returned, as always)        f_mix = M(k_mix)  (kept for the MixFairCosFace loss)

The loss derives the identity bias e_i = <f_mix, f_p(i)>^2 - <f_mix, f_i>^2 from them (on unit
vectors). Evaluation and export never mix: the backbone stays images -> f. The adapter holds no
parameters, so checkpoints of a backbone with and without it are interchangeable.
"""
import paddle
import paddle.nn as nn

from plsc.errors import PlscError

ADAPTER_KEYS = ("alpha",)


def mix_feature_maps(feature_map, permutation, alpha):
    """alpha * k + (1 - alpha) * k[p]: [n, ...] feature maps, [n] int64 permutation -> [n, ...]."""
    return alpha * feature_map + (1.0 - alpha) * paddle.gather(feature_map, permutation, axis=0)


class MixFairAdapter(nn.Layer):
    """Runs the output layer on the feature map (and, in training, on its mix); keeps the mix's embedding."""

    def __init__(self, alpha=0.5):
        super().__init__()
        if not 0.0 < float(alpha) < 1.0:
            raise PlscError(f"Model.mixfair.alpha ({alpha}) must be in (0, 1): 1 would mix nothing in")
        self.alpha = float(alpha)
        # A plain dict: a Tensor attribute of a Layer would be registered (and saved) as a buffer.
        self._last_step = {"mixed": None, "permutation": None}

    @property
    def outputs(self):
        """(f_mix [n, D] embeddings of the mixed maps, permutation [n] int64) of the last training forward."""
        return self._last_step["mixed"], self._last_step["permutation"]

    def forward(self, feature_map, output_layer):
        """feature_map [n, ...] -> output_layer(feature_map) [n, D]; in training also embeds the mix."""
        # The authors' order: M(k) first, then M(k_mix); each call normalises with its own batch statistics.
        embedding = output_layer(feature_map)
        self.embed_mix(feature_map, output_layer)
        return embedding

    def embed_mix(self, feature_map, output_layer):
        """In training, draw p and keep (output_layer(k_mix) [n, D], p); in evaluation keep nothing.

        For a model whose own forward embeds k (GroupFace keeps more than the embedding of it); it
        calls this after embedding k, in the authors' order.
        """
        if not self.training:
            self._last_step.update(mixed=None, permutation=None)
            return
        permutation = paddle.randperm(feature_map.shape[0], dtype="int64")
        mixed = output_layer(mix_feature_maps(feature_map, permutation, self.alpha))
        self._last_step.update(mixed=mixed, permutation=permutation)


def build_adapter(mixfair):
    """`Model.mixfair` (None, or a mapping with `alpha`) -> a MixFairAdapter or None."""
    if mixfair is None or mixfair is False:
        return None
    if mixfair is True:
        mixfair = {}
    if not isinstance(mixfair, dict):
        raise PlscError(f"Model.mixfair must be a mapping such as {{alpha: 0.5}}, got {mixfair!r}")
    unknown = sorted(set(mixfair) - set(ADAPTER_KEYS))
    if unknown:
        raise PlscError(f"unknown key Model.mixfair.{unknown[0]} (Model.mixfair takes: {', '.join(ADAPTER_KEYS)})")
    return MixFairAdapter(**mixfair)


def mixfair_outputs(backbone):
    """(f_mix, permutation) of a backbone's last training forward, or None when it has no MixFair adapter."""
    layer = getattr(backbone, "_layers", backbone)  # a DataParallel wrapper holds the backbone
    adapter = getattr(layer, "mixfair_adapter", None)
    if adapter is None:
        return getattr(layer, "mixfair_outputs", None)  # a stand-in that offers the outputs directly
    return adapter.outputs
