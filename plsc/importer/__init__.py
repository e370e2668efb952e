"""`plsc-import`: an insightface / arcface_torch backbone (ONNX export or `.pth`) as a plsc weights file.

Supported: arcface_torch's IResNet (`r18`, `r34`, `r50`, `r100`, `r200`) and MobileFaceNet (`mbf`,
`mbf_large`), from a `.pth` state dict, from an ONNX export whose initializers keep the state dict's
names (BatchNorm nodes not folded into the convolutions), or from a model-zoo ONNX file whose
BatchNorms are folded into the convolutions (read by graph order, `folded.py`); the layout is detected.
The result is checked: plsc's embeddings of sample images must equal onnxruntime's on the source graph
within 1e-4 (relative to the embedding's largest value), or the import fails naming the first layer
that differs. A `.pth` is checked tensor by tensor (names, shapes); its embeddings are not compared
(no torch model code here).
"""
import os

from plsc.errors import PlscError
from plsc.importer.architectures import ARCHITECTURES, Architecture, get_architecture
from plsc.importer.check import check_against_onnx, locate_named_layers
from plsc.importer.convert import map_source_state, resolve_architecture, write_weights
from plsc.importer.folded import OnnxGraph, read_folded_graph
from plsc.importer.sources import SourceReading, read_onnx_tensors, read_torch_state

SOURCE_KINDS = {".onnx": "onnx", ".pth": "pth", ".pt": "pth"}


def read_source(source_path, architecture, arch_label):
    """The tensors of `source_path` under arcface_torch's names, and how they were found: a SourceReading."""
    kind = SOURCE_KINDS.get(os.path.splitext(source_path)[1].lower())
    if kind is None:
        raise PlscError(f"{source_path}: expected an .onnx export or a .pth state dict")
    if kind == "pth":
        return SourceReading(read_torch_state(source_path), None, [], None, "state dict")
    model, tensors = read_onnx_tensors(source_path)
    graph = OnnxGraph(model, tensors, source_path)
    if graph.has_folded_conv():
        return read_folded_graph(graph, architecture.name_map, arch_label)
    return SourceReading(tensors, model, locate_named_layers(model, architecture.name_map), None,
                         "arcface_torch names, BatchNorm unfolded")


def import_backbone(source_path, arch, out_path, log=print):
    """Convert `source_path` (.onnx / .pth) of architecture `arch` (name or Architecture) into `out_path`.

    Returns a summary dict: model name, num_features, the source's layout, the ONNX check's difference
    (None for a .pth).
    """
    source_path = str(source_path)
    architecture = resolve_architecture(arch)
    arch_label = arch if isinstance(arch, str) else architecture.model_name
    source = read_source(source_path, architecture, arch_label)
    backbone, state = map_source_state(architecture, source.tensors, source_path, arch_label, source.origins)
    difference = None
    if source.model is not None:
        difference = check_against_onnx(backbone, source.model, source.located, source_path)
        log(f"checked ({source.layout}): plsc vs onnxruntime embeddings differ by {difference:.2e} "
            f"(relative, limit 1e-4)")
    out_dir = os.path.dirname(os.path.abspath(str(out_path)))
    os.makedirs(out_dir, exist_ok=True)
    write_weights(state, str(out_path))
    num_features = int(state["embedding.features.bias" if "embedding.features.bias" in state
                             else "embedding.features._mean"].shape[0])
    log(f"wrote {out_path}: use it with -o Model.name={architecture.model_name} "
        f"-o Model.num_features={num_features} -o Global.pretrained_model={out_path}")
    return {"model": architecture.model_name, "num_features": num_features, "layout": source.layout,
            "difference": difference}


__all__ = ["ARCHITECTURES", "Architecture", "get_architecture", "import_backbone"]
