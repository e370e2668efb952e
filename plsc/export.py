"""Backbone export: weights from a checkpoint -> paddle.jit.save -> paddle2onnx -> parity check.

Two paddle2onnx 2.1 behaviours shape this module:
- `export(save_file=...)` post-processes with Polygraphy by default, which pip-installs packages at
  run time. We ask for the model bytes (`save_file=None`, which skips every post-processing tool),
  run the ONNX checker ourselves and write the file: nothing is installed at run time.
- Its converter aborts the whole process (SIGABRT, no Python exception) on an NHWC convolution.
  Backbone weights do not depend on the layout, so we export a copy switched to NCHW and refuse,
  with a PlscError, any traced program that still mentions NHWC.

Backbones with side inputs (a class attribute `side_inputs`, e.g. FaceT's `("is_masked",)`) are
exported as ONE graph with the side input as a further graph input after 'data': `is_masked`,
int64 [batch], 0 = holistic and 1 = masked face, picking the prompt set per image. One graph
serves both kinds and mixed batches; the parity check feeds a batch that mixes 0 and 1. Every
other backbone keeps its single input 'data'.
"""
import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import paddle

from plsc.checkpoint import load_backbone_state, load_weights, weights_path
from plsc.errors import PlscError

# Paddle 3.x's conversion to ONNX is tested here at opset 13; paddle2onnx may raise it further
# (auto_upgrade_opset) for operators that need a newer one (e.g. LayerNorm in FaceViT).
DEFAULT_OPSET = 13
PARITY_TOLERANCE = 1e-4
CHECKPOINT_PREFIX = "backbone."
# Attributes through which paddle.nn layers (and plsc backbones) remember their layout.
LAYOUT_ATTRIBUTES = ("data_format", "_data_format", "_data_layout")
# Side inputs a backbone may declare -> their ONNX dtype; each is one value per image, [batch].
SIDE_INPUT_DTYPES = {"is_masked": "int64"}


class ParityError(PlscError):
    """The exported ONNX model does not reproduce the Paddle backbone."""


def resolve_weights_path(path):
    """A weights file, or a training checkpoint (`output/X/latest`) -> the `.pdparams` path."""
    return Path(weights_path(str(path)))


def _read_state(path):
    """The state dict in `path`, read without running code (plsc.serialization)."""
    state, _ = load_weights(str(path))
    return state


def as_checkpoint_state(state):
    """A state dict in the trainer's layout: a bare backbone state gets the `backbone.` prefix."""
    if any(key.startswith(CHECKPOINT_PREFIX) for key in state):
        return state
    return {CHECKPOINT_PREFIX + key: value for key, value in state.items()}


def load_backbone_weights(backbone, path):
    """Load weights into `backbone`; returns the `.pdparams` path that was read.

    `path` is a `.pdparams` file holding the backbone's own state dict or a training checkpoint's
    (keys `backbone.<name>`; head and bookkeeping entries are ignored), or a checkpoint prefix.
    Tensors are cast to the parameter's dtype (fp16 checkpoints load into fp32 backbones);
    missing, unexpected or mis-shaped keys raise a PlscError naming the first few.
    """
    path = resolve_weights_path(path)
    load_backbone_state(backbone, as_checkpoint_state(_read_state(path)), str(path))
    return path


def nchw_copy(backbone):
    """A deep copy of `backbone` whose layers all run in NCHW (weights are layout independent)."""
    converted = copy.deepcopy(backbone)
    for layer in converted.sublayers(include_self=True):
        switched = False
        for attribute in LAYOUT_ATTRIBUTES:
            if getattr(layer, attribute, None) == "NHWC":
                setattr(layer, attribute, "NCHW")
                switched = True
        if switched and hasattr(layer, "_channel_dim"):  # conv layers cache where the channels are
            layer._channel_dim = 1
    return converted


def side_inputs(backbone):
    """Names of the backbone's inputs after the images (`side_inputs` class attribute; none for most)."""
    names = tuple(getattr(backbone, "side_inputs", ()))
    unknown = [name for name in names if name not in SIDE_INPUT_DTYPES]
    if unknown:
        raise ValueError(f"{type(backbone).__name__} declares side inputs {unknown} that export does not know")
    return names


def side_input_values(backbone, batch):
    """Side-input arrays for a parity batch: 0, 1, 0, 1, ... so a batch > 1 mixes both values."""
    return {name: (np.arange(batch) % 2).astype(SIDE_INPUT_DTYPES[name]) for name in side_inputs(backbone)}


def _trace(backbone, prefix, input_shape):
    """paddle.jit.save the backbone with float32 input 'data' (+ its side inputs) -> (program, params) paths."""
    prefix = str(prefix)
    specs = [paddle.static.InputSpec(shape=list(input_shape), dtype="float32", name="data")]
    specs += [paddle.static.InputSpec(shape=[input_shape[0]], dtype=SIDE_INPUT_DTYPES[name], name=name)
              for name in side_inputs(backbone)]
    paddle.jit.save(backbone, prefix, input_spec=specs)
    # Paddle 3 writes the PIR program as .json; with PIR switched off it is the legacy .pdmodel.
    program = prefix + ".json" if os.path.exists(prefix + ".json") else prefix + ".pdmodel"
    return program, prefix + ".pdiparams"


def _convert(program_path, params_path, opset_version):
    """paddle2onnx on a saved program -> serialized ONNX model bytes (no post-processing tools)."""
    import paddle2onnx

    if '"NHWC"' in Path(program_path).read_text(errors="ignore"):
        raise PlscError("the traced backbone still runs NHWC operators, which paddle2onnx cannot "
                        "convert; build it with data_format='NCHW' and load the same weights")
    try:
        # paddle2onnx logs conversion errors and then fails to return; surface that as one error.
        model_bytes = paddle2onnx.export(program_path, params_path, save_file=None,
                                         opset_version=opset_version, auto_upgrade_opset=True,
                                         enable_onnx_checker=True, optimize_tool=None)
    except Exception as error:
        raise PlscError(f"paddle2onnx could not convert the backbone ({error}); see its log above") from error
    if not model_bytes:
        raise PlscError("paddle2onnx returned an empty model; see its log above")
    return model_bytes


def _check_input_shape(backbone, input_shape):
    """Run one image of `input_shape` through the backbone so a wrong size fails with a clear message."""
    if len(input_shape) != 4 or input_shape[1] != 3:
        raise PlscError(f"Export.input_shape must be [batch, 3, height, width], got {list(input_shape)}")
    try:
        with paddle.no_grad():
            backbone(paddle.zeros([1, *input_shape[1:]], dtype="float32"))
    except ValueError as error:  # Paddle reports mismatched layer sizes as ValueError
        first_line = str(error).strip().splitlines()[0]
        raise PlscError(f"the backbone does not accept input_shape {list(input_shape)} "
                        f"(Export.input_shape; match the training image size): {first_line}") from error


def _traceable_copy(backbone, input_shape):
    """Eval-mode NCHW copy of `backbone`, after checking that it accepts `input_shape`."""
    backbone.eval()
    _check_input_shape(backbone, input_shape)
    exported = nchw_copy(backbone)
    exported.eval()
    return exported


def export_onnx(backbone, output_path, input_shape=(None, 3, 112, 112), opset_version=None,
                check=True):
    """Export `backbone` (eval mode) to ONNX with input 'data' [batch, 3, H, W]; returns the path.

    The batch dimension stays dynamic when input_shape[0] is None. With `check`, the ONNX model is
    compared with Paddle on a random batch (`assert_parity`).
    """
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    exported = _traceable_copy(backbone, input_shape)
    with tempfile.TemporaryDirectory(prefix="plsc_export_") as directory:
        program_path, params_path = _trace(exported, os.path.join(directory, "backbone"), input_shape)
        model_bytes = _convert(program_path, params_path, opset_version or DEFAULT_OPSET)
    model = onnx.load_from_string(model_bytes)
    onnx.checker.check_model(model)
    onnx.save(model, str(output_path))
    if check:
        assert_parity(backbone, output_path, input_shape)
    return output_path


def export_inference_model(backbone, output_prefix, input_shape=(None, 3, 112, 112)):
    """PLSC's `export_type: paddle`: paddle.jit.save of the NCHW backbone -> (program, params) paths."""
    output_prefix = Path(output_prefix)
    output_prefix.parent.mkdir(parents=True, exist_ok=True)
    exported = _traceable_copy(backbone, input_shape)
    program_path, params_path = _trace(exported, output_prefix, input_shape)
    return Path(program_path), Path(params_path)


def _normalise_rows(features):
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def check_parity(backbone, onnx_path, batch=4, seed=0, image_size=(112, 112)):
    """Max abs difference of L2-normalised Paddle vs onnxruntime (CPU) embeddings of a random batch.

    Side inputs (e.g. `is_masked`) are fed to both, alternating 0 and 1 over the batch.
    """
    import onnxruntime

    images = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(batch, 3, *image_size)).astype(np.float32)
    extra = side_input_values(backbone, batch)
    backbone.eval()
    with paddle.no_grad():
        expected = backbone(paddle.to_tensor(images),
                            **{name: paddle.to_tensor(value) for name, value in extra.items()}).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: images, **extra})[0]
    if actual.shape != expected.shape:
        raise ParityError(f"{onnx_path}: ONNX output shape {list(actual.shape)} != Paddle "
                          f"{list(expected.shape)}")
    return float(np.max(np.abs(_normalise_rows(actual) - _normalise_rows(expected))))


def assert_parity(backbone, onnx_path, input_shape=(None, 3, 112, 112), tolerance=PARITY_TOLERANCE):
    """`check_parity` on a batch of `input_shape`; ParityError beyond `tolerance`, else the difference."""
    batch = input_shape[0] if isinstance(input_shape[0], int) and input_shape[0] > 0 else 4
    difference = check_parity(backbone, onnx_path, batch=batch, image_size=tuple(input_shape[2:]))
    if difference > tolerance:
        raise ParityError(f"{onnx_path}: ONNX and Paddle embeddings differ by {difference:.2e} "
                          f"(max abs, L2-normalised) > {tolerance:g}")
    return difference


def export_from_config(config, log=print):
    """`plsc-export`: the config's backbone with `Global.pretrained_model` -> ONNX (or Paddle) files.

    Writes `{Global.output_dir}/{Model.name}.onnx` (export_type onnx, parity-checked) or the
    `{Model.name}.json/.pdiparams` inference program (export_type paddle); returns the main path.
    """
    from plsc.engine.build import build_backbone

    weights = config.Global.get("pretrained_model") or config.Global.get("checkpoint")
    if not weights:
        raise PlscError("plsc-export needs -o Global.pretrained_model=PATH "
                        "(a .pdparams file or a checkpoint prefix such as output/IResNet50/latest)")
    # Export and its parity check run on the CPU: a one-off job, and the reference ONNX runtime
    # of the check is the CPU one.
    paddle.set_device("cpu")
    backbone = build_backbone(config.Model)
    log(f"loaded {load_backbone_weights(backbone, weights)}")
    export_section = config.get("Export") or {}
    input_shape = tuple(export_section.get("input_shape") or (None, 3, 112, 112))
    output_stem = Path(config.Global.output_dir) / config.Model.name
    if export_section.get("export_type", "onnx") == "paddle":
        program, params = export_inference_model(backbone, output_stem, input_shape)
        log(f"wrote {program} and {params}")
        return program
    path = export_onnx(backbone, f"{output_stem}.onnx", input_shape, check=False)
    difference = assert_parity(backbone, path, input_shape)
    inputs = "".join(f", '{name}' {SIDE_INPUT_DTYPES[name]} ['N']" for name in side_inputs(backbone))
    log(f"wrote {path} (input 'data' {['N' if d is None else d for d in input_shape]}{inputs}); "
        f"ONNX vs Paddle max abs difference {difference:.2e} (limit {PARITY_TOLERANCE:g})")
    return path
