"""Which module of the PyTorch model each node of an exported graph came from, and the probe points' names.

``torch.onnx.export(dynamo=True)`` records on every node the module path it was traced in
(``pkg.torch.onnx.name_scopes``: ``['', 'vivit', 'vivit.embeddings', ...]``: the module paths ``model/probes.py`` names),
with the checkpoint's own parameter names. The quantizer reads it to leave modules in float, the
exporter to find each module's output tensor and give it its stable name (``model/probes.py``). A wrapper
the exporter traces around the model (the fp16 graph's float32 boundary, an fp32 island) adds a
prefix or a level, so a module path matches when it ends a recorded scope.
"""

from __future__ import annotations

import ast
from typing import Iterable

from vivit_deploy.model.probes import ProbePoint

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
FLOAT_TYPES = (1, 10, 16)  # float, float16, bfloat16


def scopes_of(node) -> tuple[str, ...]:
    """The module paths a node was traced in, outermost first ('' and the op's own name dropped)."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                names = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ()
            return tuple(n for n in names[:-1] if n)
    return ()


def _matches(scopes: Iterable[str], module: str) -> bool:
    return any(scope == module or scope.endswith("." + module) for scope in scopes)


def in_module(node, module: str) -> bool:
    """Whether ``node`` was traced inside ``module`` (a module path, ``model.probes.part_path``)."""
    return _matches(scopes_of(node), module)


class ScopedGraph:
    """A graph with every node's scopes read once, to find modules' output tensors."""

    def __init__(self, graph):
        self.graph = graph
        self.scopes = [scopes_of(node) for node in graph.node]
        self.types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output, *graph.input]}
        self.readers: dict[str, list[int]] = {}
        for i, node in enumerate(graph.node):
            for name in node.input:
                self.readers.setdefault(name, []).append(i)
        self.outputs = {o.name for o in graph.output}

    def module_output(self, module: str) -> str | None:
        """The tensor ``module`` returns: the last (in topological order) float tensor made by a node inside it and
        read by a node outside it or by the graph's outputs. None when no node is in it."""
        inside = {i for i, scopes in enumerate(self.scopes) if _matches(scopes, module)}
        found = None
        for i in sorted(inside):
            node = self.graph.node[i]
            if node.op_type in ("Constant", "Shape"):
                continue
            for name in node.output:
                if name in self.types and self.types[name] not in FLOAT_TYPES:
                    continue
                if name in self.outputs or any(r not in inside for r in self.readers.get(name, [])):
                    found = name
        return found


def module_output(graph, module: str) -> str | None:
    return ScopedGraph(graph).module_output(module)


def name_probe_points(model, points: list[ProbePoint]) -> list[str]:
    """Rename each point's module output to its stable name (``model/probes.py``); returns the modules not found."""
    scoped = ScopedGraph(model.graph)
    found = {point: scoped.module_output(point.module) for point in points}
    tensors = [t for t in found.values() if t is not None]
    found = {p: (t if tensors.count(t) == 1 else None) for p, t in found.items()}  # one tensor, one name
    renames = {tensor: point.tensor for point, tensor in found.items() if tensor is not None}
    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
    for value in [*graph.value_info, *graph.output]:
        if value.name in renames:
            value.name = renames[value.name]
    return [point.module for point, tensor in found.items() if tensor is None]
