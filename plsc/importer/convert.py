"""Source tensors (arcface_torch names) -> a plsc backbone's state, and that state as a plsc weights file."""
import numpy as np
import paddle

from plsc.errors import PlscError
from plsc.importer.architectures import Architecture, get_architecture
from plsc.registry import MODELS
from plsc.serialization import save_state

# Source tensors each kind reads, as (source suffix, plsc suffix).
BN_TENSORS = (("weight", "weight"), ("bias", "bias"), ("running_mean", "_mean"), ("running_var", "_variance"))
# Names of trainable tensors and BN statistics: a source tensor like these that no plsc layer takes means
# the architecture is wrong (e.g. an r100 imported as r50), never something to drop silently.
PARAMETER_SUFFIXES = (".weight", ".bias", ".running_mean", ".running_var")
BN_EPSILON = 1e-5  # arcface_torch's and plsc's BatchNorm epsilon


def resolve_architecture(architecture):
    return architecture if isinstance(architecture, Architecture) else get_architecture(architecture)


def embedding_size(architecture, source, where):
    """num_features of the source network: the length of its last BN's running mean."""
    _, prefix, _ = architecture.name_map[-1]
    name = f"{prefix}.running_mean"
    if name not in source:
        raise PlscError(f"{where}: no tensor {name}: not an arcface_torch network with its parameter names "
                        f"(renamed weights?)")
    return int(np.asarray(source[name]).reshape(-1).size)


def build_plsc_backbone(architecture, num_features):
    return MODELS.build(architecture.model_name, where="--arch", num_features=num_features,
                        **architecture.model_kwargs)


class _Assigner:
    """Fills a plsc state dict from source tensors, checking names and shapes and recording what was used."""

    def __init__(self, targets, source, where, arch_label, origins=None):
        self.targets, self.source, self.where, self.arch_label = targets, source, where, arch_label
        self.origins = origins or {}
        self.state, self.used = {}, set()

    def take(self, name):
        if name not in self.source:
            raise PlscError(f"{self.where}: no tensor {name}: not an arcface_torch {self.arch_label}, or an export "
                            f"that renamed its weights")
        self.used.add(name)
        return np.asarray(self.source[name], dtype=np.float32)

    def put(self, plsc_name, value, source_name):
        expected = tuple(self.targets[plsc_name].shape)
        if value.size != int(np.prod(expected)) or (value.ndim > 1 and value.shape != expected):
            origin = f" ({self.origins[source_name]})" if source_name in self.origins else ""
            raise PlscError(f"{self.where}: {source_name}{origin} has shape {list(value.shape)} but plsc's "
                            f"{plsc_name} of {self.arch_label} needs {list(expected)}: is the architecture right?")
        self.state[plsc_name] = value.reshape(expected).astype(np.float32)


def map_source_state(architecture, source, where, arch_label=None, origins=None):
    """Source tensors {arcface_torch name: array} -> (plsc backbone with them loaded, {plsc name: array}).

    `origins` ({arcface_torch name: e.g. "ONNX node Conv_12"}) names where a tensor came from in errors.
    """
    architecture = resolve_architecture(architecture)
    arch_label = arch_label or architecture.model_name
    backbone = build_plsc_backbone(architecture, embedding_size(architecture, source, where))
    assigner = _Assigner(backbone.state_dict(), source, where, arch_label, origins)
    for plsc_layer, prefix, kind in architecture.name_map:
        if kind == "conv":
            assigner.put(f"{plsc_layer}.weight", assigner.take(f"{prefix}.weight"), f"{prefix}.weight")
        elif kind == "prelu":  # paddle's PReLU names its slope `_weight`
            assigner.put(f"{plsc_layer}._weight", assigner.take(f"{prefix}.weight"), f"{prefix}.weight")
        elif kind == "bn":
            for source_suffix, plsc_suffix in BN_TENSORS:
                name = f"{prefix}.{source_suffix}"
                assigner.put(f"{plsc_layer}.{plsc_suffix}", assigner.take(name), name)
        elif kind == "linear":
            weight = assigner.take(f"{prefix}.weight")
            assigner.put(f"{plsc_layer}.weight", weight.T, f"{prefix}.weight")  # torch [out, in], paddle [in, out]
            bias_name = f"{prefix}.bias"
            if f"{plsc_layer}.bias" in assigner.targets:
                assigner.put(f"{plsc_layer}.bias", assigner.take(bias_name), bias_name)
            elif bias_name in source and not np.any(source[bias_name]):
                # A zero bias is no bias: a model-zoo graph's FC whose bias moved into the BN after it.
                assigner.used.add(bias_name)
        elif kind == "fixed_bn":
            scale = assigner.take(f"{prefix}.weight")
            variance = assigner.take(f"{prefix}.running_var")
            if np.any(scale <= 0):
                raise PlscError(f"{where}: {prefix}.weight has non-positive entries; plsc's embedding BN keeps its "
                                f"scale at 1 and can only absorb a positive one")
            # scale * (x - m) / sqrt(v + eps) == (x - m) / sqrt(v' + eps) with v' = (v + eps) / scale^2 - eps;
            # arcface_torch freezes the scale at 1, where this is v itself.
            assigner.put(f"{plsc_layer}.norm._variance", (variance + BN_EPSILON) / scale ** 2 - BN_EPSILON,
                         f"{prefix}.running_var")
            assigner.put(f"{plsc_layer}.norm._mean", assigner.take(f"{prefix}.running_mean"),
                         f"{prefix}.running_mean")
            assigner.put(f"{plsc_layer}.bias", assigner.take(f"{prefix}.bias"), f"{prefix}.bias")
        else:
            raise ValueError(f"unknown name map kind {kind!r}")
    leftover = [name for name in source if name not in assigner.used and name.endswith(PARAMETER_SUFFIXES)]
    if leftover:
        raise PlscError(f"{where}: tensor {leftover[0]} (and {len(leftover) - 1} more) has no place in "
                        f"{arch_label}: is the architecture right?")
    unfilled = sorted(set(assigner.targets) - set(assigner.state))
    if unfilled:
        raise RuntimeError(f"name map of {arch_label} leaves plsc parameters unset: {unfilled[:3]}")
    backbone.set_state_dict({name: paddle.to_tensor(value) for name, value in assigner.state.items()})
    backbone.eval()
    return backbone, assigner.state


def write_weights(state, out_path):
    """{plsc backbone name: array} -> a weights file for Global.pretrained_model (`backbone.<name>` keys)."""
    save_state({f"backbone.{name}": value for name, value in state.items()}, out_path)
