"""Reading source networks: an ONNX export's initializers, an arcface_torch `.pth` state dict."""
import os
from collections import namedtuple

from plsc.errors import PlscError

# Prefix DistributedDataParallel adds to every name of a model saved without unwrapping it.
DDP_PREFIX = "module."

SourceReading = namedtuple("SourceReading", ["tensors", "model", "located", "origins", "layout"])
SourceReading.__doc__ = """What plsc-import read from a source file.

tensors: {arcface_torch name: float32 array}; model: the ONNX ModelProto (None for a .pth);
located: [(plsc layer, source label, ONNX value name)] of the layers whose outputs the check can compare;
origins: {arcface_torch name: where in the file it came from} or None when the names are the file's own;
layout: how the source was read, for the user.
"""


def read_onnx_tensors(path):
    """(onnx ModelProto, {initializer name: float32 array}) of an ONNX file."""
    import onnx
    from onnx import numpy_helper

    if not os.path.isfile(path):
        raise PlscError(f"{path}: no such file")
    try:
        model = onnx.load(path)
    except Exception as error:  # noqa: BLE001 - onnx raises several types for a file that is not a model
        raise PlscError(f"{path}: not an ONNX model ({type(error).__name__}: {error})") from None
    tensors = {initializer.name: numpy_helper.to_array(initializer) for initializer in model.graph.initializer}
    return model, {name: value for name, value in tensors.items() if value.dtype.kind == "f"}


def read_torch_state(path):
    """{name: float32 array} of an arcface_torch `.pth` (a state dict, possibly DDP-prefixed or nested)."""
    try:
        import torch
    except ImportError:
        raise PlscError(f"{path}: reading a .pth needs PyTorch (pip install 'plsc[torch]'), "
                        f"or import the model's ONNX export instead") from None
    if not os.path.isfile(path):
        raise PlscError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for an unreadable file
        raise PlscError(f"{path}: not a PyTorch state dict ({type(error).__name__}: {error})") from None
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PlscError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {name.removeprefix(DDP_PREFIX): value.detach().float().numpy() for name, value in state.items()
            if hasattr(value, "detach") and value.is_floating_point()}
