"""Layer-wise LR decay and the no-weight-decay rule of ViT fine-tuning (the BEiT / MAE recipe).

A backbone that supports layer-wise decay declares `num_lr_layers` (L) and
`layer_id(structured parameter name) -> int` in [0, L): 0 for the input embedding, L - 1 for the
top (final norm, pooling, embedding head). With `Optimizer.layer_decay: d` a parameter of layer
`id` learns at  lr * d ** (L - 1 - id):  the top at the schedule's LR, every layer below it d times
slower than the one above, so the pre-trained low layers move least. Parameters the backbone does
not own (none today) keep the schedule's LR.

The no-weight-decay rule exempts 1-D parameters (norm scales and shifts), biases and position
embeddings: decaying them towards zero only fights the normalisation and the learned positions.

The dense parameters are partitioned into `ParameterGroup`s of equal (layer, weight decay); the
optimizer turns each into a Paddle parameter group whose `learning_rate` is the group's LR scale.
"""
import dataclasses
import numbers
import re

from plsc.errors import PlscError

# Paddle names a bias '<layer>_<n>.b_<k>' ('linear_3.b_0'); its structured name ends in '.bias'.
PADDLE_BIAS_NAME = re.compile(r"\.b_\d+$")


@dataclasses.dataclass
class ParameterGroup:
    """Dense parameters sharing one LR scale and one weight decay.

    layer_id: the backbone layer (None without layer-wise decay, or for a parameter outside the
    backbone); parameters: [(names, Parameter)] as FaceOptimizer.dense_named holds them.
    """

    layer_id: int | None
    lr_scale: float
    weight_decay: float
    parameters: list

    def num_values(self):
        return sum(int(parameter.size) for _, parameter in self.parameters)


def check_layer_decay(layer_decay):
    """`Optimizer.layer_decay` as a float in (0, 1], or None (off)."""
    if layer_decay is None:
        return None
    if isinstance(layer_decay, bool) or not isinstance(layer_decay, numbers.Real) or not 0.0 < layer_decay <= 1.0:
        raise PlscError(f"Optimizer.layer_decay must be a number in (0, 1] (e.g. 0.75) or None, got {layer_decay!r}")
    return float(layer_decay)


def check_no_weight_decay_1d(no_weight_decay_1d, layer_decay):
    """Whether the no-weight-decay rule is on: `Optimizer.no_weight_decay_1d`, or by default with layer_decay."""
    if no_weight_decay_1d is None:
        return layer_decay is not None
    if not isinstance(no_weight_decay_1d, bool):
        raise PlscError(f"Optimizer.no_weight_decay_1d must be True, False or None, got {no_weight_decay_1d!r}")
    return no_weight_decay_1d


def exempt_from_decay(names, parameter):
    """The no-weight-decay rule: True for a 1-D parameter, a bias or a position embedding.

    names: the parameter's names (structured name first when known, Paddle's name last).
    """
    if len(parameter.shape) <= 1:
        return True
    if names[0].rsplit(".", 1)[-1] == "bias" or PADDLE_BIAS_NAME.search(names[-1]):
        return True
    return any("pos_embed" in name for name in names)


def backbone_layers(backbone):
    """(num_lr_layers, layer_id) of a backbone that declares them; a PlscError naming the model otherwise."""
    num_lr_layers = getattr(backbone, "num_lr_layers", None)
    layer_id = getattr(backbone, "layer_id", None)
    if backbone is None or num_lr_layers is None or not callable(layer_id):
        model = "(none given)" if backbone is None else type(backbone).__name__
        raise PlscError(f"Optimizer.layer_decay needs a backbone with layer ids (a ViT such as FaceViT or FaceT); "
                        f"the model {model} has none: remove Optimizer.layer_decay")
    if isinstance(num_lr_layers, bool) or not isinstance(num_lr_layers, int) or num_lr_layers < 1:
        raise ValueError(f"{type(backbone).__name__}.num_lr_layers must be a positive int, got {num_lr_layers!r}")
    return num_lr_layers, layer_id


def layer_scale(layer_decay, num_lr_layers, layer_id):
    """The LR multiplier of layer `layer_id`: layer_decay ** (num_lr_layers - 1 - layer_id)."""
    return layer_decay ** (num_lr_layers - 1 - layer_id)


def layer_ids(named, backbone):
    """[layer id or None] for each (names, Parameter) of `named`, and the backbone's num_lr_layers.

    The backbone's own named_parameters() give the structured names, so plain Parameters work too.
    """
    num_lr_layers, layer_id = backbone_layers(backbone)
    structured_names = {parameter.name: name for name, parameter in backbone.named_parameters()}
    found = []
    for _, parameter in named:
        structured = structured_names.get(parameter.name)
        if structured is None:
            found.append(None)
            continue
        layer = layer_id(structured)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_lr_layers:
            raise ValueError(f"{type(backbone).__name__}.layer_id('{structured}') = {layer!r}, "
                             f"not in [0, {num_lr_layers})")
        found.append(layer)
    return found, num_lr_layers


def group_parameters(named, weight_decay, decays, layer_decay=None, backbone=None):
    """Partition `named` [(names, Parameter)] into ParameterGroups, lowest layer first.

    decays(names, parameter) -> bool says whether a parameter gets `weight_decay` (else 0);
    with `layer_decay` the backbone's layer ids set each group's LR scale (see the module docstring).
    """
    if layer_decay is None:
        layers, num_lr_layers = [None] * len(named), None
    else:
        layers, num_lr_layers = layer_ids(named, backbone)
    groups = {}
    for (names, parameter), layer in zip(named, layers):
        decayed = decays(names, parameter)
        key = (layer, decayed)
        if key not in groups:
            scale = 1.0 if layer is None else layer_scale(layer_decay, num_lr_layers, layer)
            groups[key] = ParameterGroup(layer, scale, weight_decay if decayed else 0.0, [])
        groups[key].parameters.append((names, parameter))
    # Layers in order (parameters outside the backbone last), decayed before exempt within a layer.
    order = sorted(groups, key=lambda key: (key[0] is None, key[0] or 0, not key[1]))
    return [groups[key] for key in order]
