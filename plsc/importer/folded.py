"""Model-zoo ONNX graphs, whose BatchNorms are folded into the convolutions -> arcface_torch-named tensors.

insightface's model zoo (buffalo_l's w600k_r50.onnx, glintr100.onnx) exported arcface_torch networks in
eval mode with constant folding: torch folds every BatchNorm that reads a conv's output into that conv's
weight and bias, and names what it folded by number. The BNs that read no conv stay (IResNet's `bn1`
at the head of each block, `bn2` after the last block), and so may the embedding BN after the FC, or
it is folded into the Gemm (MatMul + Add) too. Without names, the graph is read in order: each Conv,
BatchNormalization, PRelu and Gemm / MatMul takes the next entry of the architecture's name map.

A BN folded away becomes an identity BN that carries the bias: gamma 1, mean 0, variance 1 - eps (so
(x - 0) / sqrt(var + eps) is x itself) and beta the folded bias; the conv keeps the folded weight.
"""
from collections import namedtuple

import numpy as np
from onnx import helper

from plsc.errors import PlscError
from plsc.importer.convert import BN_EPSILON
from plsc.importer.sources import SourceReading

# Which ONNX ops can stand for each kind of name-map entry.
LAYER_OPS = {"conv": ("Conv",), "bn": ("BatchNormalization",), "fixed_bn": ("BatchNormalization",),
             "prelu": ("PRelu",), "linear": ("Gemm", "MatMul")}
LAYER_OP_TYPES = {op_type for op_types in LAYER_OPS.values() for op_type in op_types}
BN_KINDS = ("bn", "fixed_bn")
# Nodes that hold no layer: the residual sum (or a MatMul's bias), flattening before the FC, and the
# shape arithmetic and parameter reshaping an export may leave in the graph. Anything else
# (input scaling, ReLU, pooling, ...) is not an arcface_torch IResNet / MobileFaceNet.
PLUMBING_OPS = ("Add", "Flatten", "Reshape", "Identity", "Dropout", "Constant", "Unsqueeze", "Squeeze", "Cast",
                "Shape", "Gather", "Concat")
# Ops an export may put between a stored parameter and its layer without changing its values' order
# (PReLU's slope [C] -> [C, 1, 1]); the assigner reshapes by size.
PARAMETER_RESHAPES = ("Unsqueeze", "Squeeze", "Reshape", "Cast", "Identity")

# A conv or FC just read (bias [C] or None): the BN after it in the name map takes its bias.
BiasCarrier = namedtuple("BiasCarrier", ["node", "prefix", "output", "bias", "channels"])


class OnnxGraph:
    """An ONNX graph's stored tensors, nodes in order, and which nodes read each value.

    `stored`: {initializer name: array} as read_onnx_tensors gives them (not read twice: a model's
    weights can take hundreds of MB).
    """

    def __init__(self, model, stored, where):
        self.model, self.stored, self.where = model, stored, where
        self.nodes = list(model.graph.node)
        self.producer = {output: node for node in self.nodes for output in node.output}
        self.readers = {}
        for node in self.nodes:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.labels = {node.output[0]: node.name or f"#{index}" for index, node in enumerate(self.nodes)}

    def label(self, node):
        """The node's name, or its position when the export left it unnamed."""
        return self.labels[node.output[0]]

    def sole_reader(self, value):
        readers = self.readers.get(value, [])
        return readers[0] if len(readers) == 1 else None

    def stored_value(self, name):
        """float32 array of a stored tensor, also seen through PARAMETER_RESHAPES nodes; None if computed."""
        while name not in self.stored and name in self.producer and self.producer[name].op_type in PARAMETER_RESHAPES:
            name = self.producer[name].input[0]
        return np.asarray(self.stored[name], dtype=np.float32) if name in self.stored else None

    def parameter(self, node, position):
        """Input `position` of `node` as a float32 array; None if the node has no such input."""
        if position >= len(node.input) or not node.input[position]:
            return None
        value = self.stored_value(node.input[position])
        if value is None:
            raise PlscError(f"{self.where}: input {node.input[position]} of node {self.label(node)} "
                            f"({node.op_type}) is computed in the graph, not stored: not an exported network")
        return value

    def reads_batchnorm(self, value):
        return any(reader.op_type == "BatchNormalization" for reader in self.readers.get(value, []))

    def has_folded_conv(self):
        """True if some Conv has a bias and no BatchNormalization reads its output: BN was folded into it."""
        return any(node.op_type == "Conv" and self.parameter(node, 2) is not None
                   and not self.reads_batchnorm(node.output[0]) for node in self.nodes)

    def linear(self, node):
        """A Gemm, or a MatMul with the Add of a stored bias after it -> (weight [out, in] as torch stores it,
        bias [out] or None, the layer's output value)."""
        if node.op_type == "Gemm":
            attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
            weight = self.parameter(node, 1) * attributes.get("alpha", 1.0)
            bias = self.parameter(node, 2)
            if bias is not None:
                bias = bias.reshape(-1) * attributes.get("beta", 1.0)
            return (weight if attributes.get("transB", 0) else weight.T), bias, node.output[0]
        weight = self.parameter(node, 1).T  # MatMul multiplies by [in, out]
        add = self.sole_reader(node.output[0])
        if add is not None and add.op_type == "Add":
            other = [name for name in add.input if name != node.output[0]]
            bias = self.stored_value(other[0]) if len(other) == 1 else None
            if bias is not None:
                return weight, bias.reshape(-1), add.output[0]
        return weight, None, node.output[0]


def identity_bn(bias):
    """BN tensors (arcface_torch suffixes) that pass x through unchanged and add `bias`: [C] each."""
    channels = bias.shape[0]
    return {"weight": np.ones(channels, np.float32), "bias": bias.astype(np.float32),
            "running_mean": np.zeros(channels, np.float32),
            "running_var": np.full(channels, 1.0 - BN_EPSILON, np.float32)}


class _FoldedReader:
    """Walks the name map and the graph's layer nodes side by side, filling arcface_torch-named tensors."""

    def __init__(self, graph, arch_label):
        self.graph, self.arch_label, self.where = graph, arch_label, graph.where
        self.layer_nodes = iter(self._layer_nodes())
        self.tensors, self.origins, self.located = {}, {}, []
        self.carrier = None  # the conv / FC just read, whose bias the BN after it takes
        self.num_folded = self.num_kept = 0

    def _layer_nodes(self):
        nodes = []
        for node in self.graph.nodes:
            if node.op_type in LAYER_OP_TYPES:
                nodes.append(node)
            elif node.op_type not in PLUMBING_OPS:
                raise PlscError(f"{self.where}: node {self.graph.label(node)} is a {node.op_type}, which no "
                                f"arcface_torch {self.arch_label} has: plsc-import reads IResNet and "
                                f"MobileFaceNet graphs only")
        return nodes

    def _next_node(self, prefix, kind):
        node = next(self.layer_nodes, None)
        if node is None:
            raise PlscError(f"{self.where}: the graph ends before {self.arch_label}'s {prefix}: "
                            f"is the architecture right?")
        if node.op_type not in LAYER_OPS[kind]:
            raise PlscError(f"{self.where}: node {self.graph.label(node)} is a {node.op_type} where "
                            f"{self.arch_label} has {prefix} (a {LAYER_OPS[kind][0]}): is the architecture right?")
        return node

    def _keep(self, prefix, node, **tensors):
        """Record arcface_torch tensors `{prefix}.{suffix}` read from `node`."""
        for suffix, value in tensors.items():
            self.tensors[f"{prefix}.{suffix}"] = value
            self.origins[f"{prefix}.{suffix}"] = f"ONNX node {self.graph.label(node)}"

    def _locate(self, plsc_layer, node, source, output):
        """plsc's `plsc_layer` computes the graph's value `output` (of `node`, which holds `source`)."""
        self.located.append((plsc_layer, f"node {self.graph.label(node)} [{source}]", output))

    def read(self, plsc_layer, prefix, kind):
        """Take the name map's next entry from the graph."""
        carrier, self.carrier = self.carrier, None
        if kind in BN_KINDS and carrier is not None and not self.graph.reads_batchnorm(carrier.output):
            self._folded_bn(plsc_layer, prefix, carrier)
            return
        node = self._next_node(prefix, kind)
        if kind == "conv":
            self._bias_carrier(plsc_layer, prefix, node, self.graph.parameter(node, 1),
                               self.graph.parameter(node, 2), node.output[0])
        elif kind == "linear":
            weight, bias, output = self.graph.linear(node)
            # The FC's bias moves into the BN after it (its beta, or its running mean): in training that
            # BN subtracts the batch mean, which would cancel a bias kept before it.
            self._keep(prefix, node, bias=np.zeros(weight.shape[0], np.float32))
            self._bias_carrier(plsc_layer, prefix, node, weight, bias, output)
        elif kind == "prelu":
            self._keep(prefix, node, weight=self.graph.parameter(node, 1))
            self._locate(plsc_layer, node, prefix, node.output[0])
        else:
            self._kept_bn(plsc_layer, prefix, node, carrier)

    def _bias_carrier(self, plsc_layer, prefix, node, weight, bias, output):
        """A conv / FC: plsc takes its weight; its bias waits for the BN after it."""
        self._keep(prefix, node, weight=weight)
        self.carrier = BiasCarrier(node, prefix, output, bias, weight.shape[0])
        if bias is None:  # then plsc's bias-free layer computes the graph's output
            self._locate(plsc_layer, node, prefix, output)

    def _kept_bn(self, plsc_layer, prefix, node, carrier):
        """A BatchNormalization node; a bias before it becomes part of its running mean."""
        scale, shift, mean, variance = (self.graph.parameter(node, position) for position in (1, 2, 3, 4))
        if carrier is not None and carrier.bias is not None:
            mean = mean - carrier.bias  # BN(x + b) with mean m is BN(x) with mean m - b
        self._keep(prefix, node, weight=scale, bias=shift, running_mean=mean, running_var=variance)
        self._locate(plsc_layer, node, prefix, node.output[0])
        self.num_kept += 1

    def _folded_bn(self, plsc_layer, prefix, carrier):
        """A BN folded into the conv / FC `carrier`: an identity BN adding the carrier's bias."""
        bias = carrier.bias if carrier.bias is not None else np.zeros(carrier.channels, np.float32)
        self._keep(prefix, carrier.node, **identity_bn(bias))
        self._locate(plsc_layer, carrier.node, f"{carrier.prefix} + folded {prefix}", carrier.output)
        self.num_folded += 1

    def finish(self):
        extra = next(self.layer_nodes, None)
        if extra is not None:
            raise PlscError(f"{self.where}: node {self.graph.label(extra)} ({extra.op_type}) has no place in "
                            f"{self.arch_label}: is the architecture right?")


def read_folded_graph(graph, name_map, arch_label):
    """A model-zoo OnnxGraph -> SourceReading with arcface_torch-named tensors, by graph order."""
    reader = _FoldedReader(graph, arch_label)
    for plsc_layer, prefix, kind in name_map:
        reader.read(plsc_layer, prefix, kind)
    reader.finish()
    layout = (f"model-zoo layout: {reader.num_folded} of {reader.num_folded + reader.num_kept} BatchNorms "
              f"folded into the conv / FC before them")
    return SourceReading(reader.tensors, graph.model, reader.located, reader.origins, layout)
