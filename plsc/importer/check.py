"""Does the imported plsc backbone compute what the source ONNX model computes? Embeddings, then layers."""
import numpy as np
import paddle

from plsc.errors import PlscError

TOLERANCE = 1e-4
NUM_SAMPLE_IMAGES = 4
RESHAPING_OPS = ("Unsqueeze", "Reshape", "Transpose", "Cast", "Identity")


def sample_images(num_images=NUM_SAMPLE_IMAGES, size=112, seed=0):
    """Images in the models' input range [-1, 1]: float32 [N, 3, size, size]."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (num_images, 3, size, size)).astype(np.float32)


def relative_difference(actual, expected):
    """max |actual - expected| over max(1, max |expected|): the error measured on the output's own scale."""
    return float(np.max(np.abs(actual - expected)) / max(1.0, float(np.max(np.abs(expected)))))


def _session(model_bytes):
    import onnxruntime

    return onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def locate_named_layers(model, name_map):
    """[(plsc layer, source prefix, ONNX value name)] for the mapped layers whose node a graph with
    arcface_torch's parameter names shows."""
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for plsc_layer, prefix, kind in name_map:
        parameter = f"{prefix}.running_mean" if kind in ("bn", "fixed_bn") else f"{prefix}.weight"
        nodes = consumers.get(parameter, [])
        if len(nodes) != 1:
            continue
        node = nodes[0]
        # An unfolded export reshapes some parameters first (PReLU's slope [C] -> [C, 1, 1]).
        while node.op_type in RESHAPING_OPS and len(consumers.get(node.output[0], [])) == 1:
            node = consumers[node.output[0]][0]
        output = node.output[0]
        if kind == "linear" and node.op_type == "MatMul":
            # torch exports a Linear with bias as MatMul + Add: the layer's output is the Add's.
            following = [user for user in consumers.get(output, []) if user.op_type == "Add"]
            output = following[0].output[0] if following else output
        found.append((plsc_layer, prefix, output))
    return found


def _plsc_layer_outputs(backbone, layer_names, images):
    layers = dict(backbone.named_sublayers())
    captured, hooks = {}, []
    for name in layer_names:
        def keep(layer, inputs, output, name=name):
            captured[name] = output.numpy()
        hooks.append(layers[name].register_forward_post_hook(keep))
    try:
        with paddle.no_grad():
            backbone(paddle.to_tensor(images))
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def first_differing_layer(backbone, model, located, images, tolerance=TOLERANCE):
    """(plsc layer, source label, difference) of the first `located` layer whose outputs differ, or None.

    located: [(plsc layer, source label, ONNX value name)] in forward order.
    """
    import onnx

    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    known_outputs = {output.name for output in extended.graph.output}
    extended.graph.output.extend(onnx.helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT, None)
                                 for _, _, value in located if value not in known_outputs)
    session = _session(extended.SerializeToString())
    values = dict(zip([output.name for output in session.get_outputs()],
                      session.run(None, {session.get_inputs()[0].name: images})))
    plsc_outputs = _plsc_layer_outputs(backbone, [layer for layer, _, _ in located], images)
    for plsc_layer, label, value in located:
        expected, actual = values[value], plsc_outputs[plsc_layer]
        if expected.shape != actual.shape:
            return plsc_layer, label, float("inf")
        difference = relative_difference(actual, expected)
        if difference > tolerance:
            return plsc_layer, label, difference
    return None


def check_against_onnx(backbone, model, located, where, tolerance=TOLERANCE):
    """Embeddings of sample images from plsc and from onnxruntime agree within `tolerance`, else PlscError
    naming the first of the `located` layers (see first_differing_layer) that differs. Returns the
    embedding difference."""
    session = _session(model.SerializeToString())
    input_shape = session.get_inputs()[0].shape
    size = input_shape[-1] if isinstance(input_shape[-1], int) else 112
    images = sample_images(size=size)
    if isinstance(input_shape[0], int) and input_shape[0] > 0:
        images = images[:input_shape[0]]  # an export with a fixed batch size
    expected = session.run(None, {session.get_inputs()[0].name: images})[0]
    with paddle.no_grad():
        actual = backbone(paddle.to_tensor(images)).numpy()
    if actual.shape != expected.shape:
        raise PlscError(f"{where}: the source's output has shape {list(expected.shape)}, plsc's "
                        f"{list(actual.shape)}")
    difference = relative_difference(actual, expected)
    if difference <= tolerance:
        return difference
    culprit = first_differing_layer(backbone, model, located, images, tolerance)
    if culprit is None:
        raise PlscError(f"{where}: embeddings differ by {difference:.2e} (> {tolerance:g}) although every "
                        f"mapped layer agrees: the graph computes something outside the mapped layers")
    plsc_layer, label, layer_difference = culprit
    raise PlscError(f"{where}: embeddings differ by {difference:.2e} (> {tolerance:g}); the first layer that "
                    f"differs is {label} (plsc {plsc_layer}), by {layer_difference:.2e}")
