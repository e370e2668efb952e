"""Backbone weights as numpy dicts (what travels), and the generic model read from a plsc-train checkpoint."""
import numpy as np

from plsc.checkpoint import load_backbone_state, load_weights, read_global_table
from plsc.errors import PlscError


def backbone_state(backbone):
    """{parameter or buffer name: numpy array} of a backbone, copied."""
    return {name: np.array(value.numpy()) for name, value in backbone.state_dict().items()}


def set_backbone_state(backbone, state, source="backbone state"):
    """Load a numpy state dict into `backbone`; names and shapes must match exactly."""
    load_backbone_state(backbone, {f"backbone.{name}": value for name, value in state.items()}, source)


def load_generic_model(path, num_public_classes):
    """(backbone state, public class centres float32 [C, D]) of plsc-train checkpoint `path`."""
    try:
        dense, source = load_weights(path)
        centers = np.asarray(read_global_table(path, "head"), dtype=np.float32)
    except PlscError as error:
        raise PlscError(f"Federated.generic_model: {error}") from None
    state = {key[len("backbone."):]: np.asarray(value) for key, value in dense.items() if key.startswith("backbone.")}
    if not state:
        raise PlscError(f"Federated.generic_model: {source} holds no backbone.* weights")
    if centers.shape[0] != num_public_classes:
        raise PlscError(f"Federated.generic_model: {path} has {centers.shape[0]} classes but the public set has "
                        f"{num_public_classes}")
    return state, centers
