"""A face-embedding ONNX model under onnxruntime: checks the graph, normalises and batches images."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from plsc.errors import PlscError

# PLSC's models take (pixel - 127.5) / 127.5 of RGB pixels, i.e. inputs in [-1, 1].
DEFAULT_INPUT_MEAN = 127.5
DEFAULT_INPUT_STD = 127.5


def default_providers():
    """CUDA first when this onnxruntime build has it, always CPU as the fallback."""
    available = onnxruntime.get_available_providers()
    preferred = [name for name in ("CUDAExecutionProvider",) if name in available]
    return preferred + ["CPUExecutionProvider"]


def check_graph(model, path):
    """Raise a PlscError unless the graph has one 4-D NCHW 3-channel image input (first; FaceT adds
    `is_masked`), one output and fp32 weights."""
    weights = {initializer.name: initializer for initializer in model.graph.initializer}
    # Old exporters also list the weights as graph inputs; only the others are fed.
    inputs = [value for value in model.graph.input if value.name not in weights]
    extra = [value.name for value in inputs[1:]]
    if not inputs or set(extra) - {"is_masked"}:
        raise PlscError(f"{path}: expected one image input (and optionally is_masked), found "
                        f"{[value.name for value in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise PlscError(f"{path}: input '{inputs[0].name}' has {len(dims)} dimensions, expected 4 (N, 3, H, W)")
    if dims[1].HasField("dim_value") and dims[1].dim_value != 3:
        raise PlscError(f"{path}: input '{inputs[0].name}' has {dims[1].dim_value} channels at axis 1, "
                        "expected 3 (NCHW)")
    if len(model.graph.output) != 1:
        raise PlscError(f"{path}: expected one output (the embedding), found {len(model.graph.output)}")
    half = [name for name, tensor in weights.items() if tensor.data_type in
            (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)]
    if half:
        raise PlscError(f"{path}: weights stored in 16-bit floats (e.g. '{half[0]}'); export in float32")


class OnnxFaceModel:
    """images uint8 [N, H, W, 3] RGB -> embeddings [N, D] float32, in batches of `batch_size`.

    A model exported with a per-image side input (FaceT's `is_masked`, int64 [N]) is fed the flags
    given to `embed`, 0 (holistic) for every image when none are given.
    """

    def __init__(self, path, providers=None, batch_size=128, input_mean=DEFAULT_INPUT_MEAN,
                 input_std=DEFAULT_INPUT_STD):
        path = Path(path)
        if not path.is_file():
            raise PlscError(f"{path}: ONNX model not found")
        try:
            model = onnx.load(str(path))
        except Exception as error:  # protobuf decode errors have no common public type
            raise PlscError(f"{path}: not a readable ONNX model ({error})") from error
        check_graph(model, path)
        self.path = path
        self.session = onnxruntime.InferenceSession(str(path), providers=providers or default_providers())
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        batch_dim, _, height, width = model_input.shape
        if not isinstance(height, int) or not isinstance(width, int):
            raise PlscError(f"{path}: input '{self.input_name}' needs a fixed image size, got {model_input.shape}")
        self.image_size = (height, width)
        # A model exported with a fixed batch is fed exactly that many images at a time.
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.batch_size = self.fixed_batch or int(batch_size)
        self.input_mean = float(input_mean)
        self.input_std = float(input_std)
        self.side_inputs = [extra.name for extra in self.session.get_inputs()[1:]]
        if set(self.side_inputs) - {"is_masked"}:
            raise PlscError(f"{path}: unknown extra inputs {self.side_inputs} (known: the image and is_masked)")

    def preprocess(self, images):
        """uint8 [N, H, W, 3] RGB -> float32 [N, 3, H, W] normalised."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (*self.image_size, 3):
            raise ValueError(f"expected images [N, {self.image_size[0]}, {self.image_size[1]}, 3], "
                             f"got {list(images.shape)}")
        normalised = (images.astype(np.float32) - self.input_mean) / self.input_std
        return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))

    def _run(self, batch, flags):
        count = batch.shape[0]
        if self.fixed_batch and count < self.fixed_batch:
            padding = np.zeros((self.fixed_batch - count, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, padding])
            flags = np.concatenate([flags, np.zeros(self.fixed_batch - count, dtype=np.int64)])
        feed = {self.input_name: batch, **{name: flags for name in self.side_inputs}}
        return self.session.run(None, feed)[0][:count]

    def embed(self, images, is_masked=None):
        """Embeddings of RGB uint8 images [N, H, W, 3]: [N, D] float32 (not normalised).

        is_masked: [N] 0/1 per image, for models with that input (ignored by the others).
        """
        inputs = self.preprocess(images)
        flags = (np.zeros(inputs.shape[0], dtype=np.int64) if is_masked is None
                 else np.asarray(is_masked, dtype=np.int64).reshape(-1))
        outputs = [self._run(inputs[start:start + self.batch_size], flags[start:start + self.batch_size])
                   for start in range(0, inputs.shape[0], self.batch_size)]
        return np.concatenate(outputs).astype(np.float32, copy=False)
