"""What an exported graph looks like, judged against what ONNX Runtime and TensorRT run well.

Each check yields a :class:`Finding`; a "blocker" fails the export (and, next, ``check-trt``).
The checks read the graph only (no weights are interpreted), so they run anywhere ``onnx`` installs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal

from vivit_deploy.artifacts.metadata import QUANTIZED_PRECISIONS

Level = Literal["ok", "warning", "blocker"]

MIN_OPSET = 17  # LayerNormalization is an ONNX op from opset 17
# graph precision -> the ONNX element type most of its weights are stored in
WEIGHT_TYPES = {"fp32": "float", "fp16": "float16", "int8": "int8", "fp8": "float8e4m3fn"}


@dataclass(frozen=True)
class Finding:
    level: Level
    check: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def format(self) -> str:
        """One report line, e.g. ``  [FAIL] layernorm: LayerNorm is decomposed ...``."""
        mark = {"ok": "ok  ", "warning": "WARN", "blocker": "FAIL"}[self.level]
        return f"  [{mark}] {self.check}: {self.detail}"


@dataclass(frozen=True)
class GraphSummary:
    ir_version: int
    opset: int  # of the default ("ai.onnx") domain
    op_counts: dict[str, int]
    input_types: dict[str, str]  # name -> element type name
    output_types: dict[str, str]
    weight_types: dict[str, int]  # element type name -> number of initializer elements
    attention_blocks: int  # Softmax nodes between two MatMuls
    prescaled_attention_blocks: int  # of those, with Q (or K) scaled before the first MatMul
    softmax_residue: int  # IsNaN nodes, and Where nodes next to a Softmax or an IsNaN
    masked_attention_blocks: int = 0  # attention blocks with an additive mask before the Softmax (merged tokens' sizes)
    decomposed_norms: int = 0  # ReduceMean nodes whose mean is subtracted from their input (a LayerNorm taken apart);
    #                            a mean pooled over tokens (the factorised variants' "mean" pooling) is not one
    quantized_matmuls: int = 0  # MatMuls fed by DequantizeLinear (int8 / fp8 graphs)
    qdq_on_norm_softmax: int = 0  # LayerNorm / Softmax nodes reading a DequantizeLinear, Softmax feeding a QuantizeLinear
    asymmetric_qdq: int = 0  # Q/DQ nodes whose zero point is not an int8 / float8 zero (TensorRT takes only those)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _type_name(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type).lower()


def summarize(model) -> GraphSummary:
    """Op counts, I/O and weight types, and the attention pattern of an ``onnx.ModelProto``."""
    import numpy as np

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {init.name for init in graph.initializer} | {
        n.output[0] for n in graph.node if n.op_type == "Constant"
    }

    def through_casts(node, downstream: bool):
        """Past the Casts of an fp16 graph and the Q/DQ of a quantized attention product."""
        while node is not None and node.op_type in ("Cast", "QuantizeLinear", "DequantizeLinear"):
            if downstream:
                nexts = consumers.get(node.output[0], [])
                node = nexts[0] if len(nexts) == 1 else None
            else:
                node = producers.get(node.input[0])
        return node

    def is_scale(node) -> bool:
        return node is not None and node.op_type in ("Mul", "Div") and any(i in constants for i in node.input)

    blocks = prescaled = masked = 0
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        first = through_casts(producers.get(node.input[0]), downstream=False)
        if first is not None and first.op_type == "Add":  # an additive mask: merged tokens' proportional attention
            first = next((p for p in (through_casts(producers.get(i), downstream=False) for i in first.input)
                          if p is not None and p.op_type == "MatMul"), None)
            masked += first is not None
        after = consumers.get(node.output[0], [])
        second = through_casts(after[0], downstream=True) if len(after) == 1 else None
        if first is None or second is None or first.op_type != "MatMul" or second.op_type != "MatMul":
            continue
        blocks += 1
        if any(is_scale(producers.get(name)) for name in first.input):
            prescaled += 1

    def touches_softmax(node) -> bool:
        upstream = [producers.get(name) for name in node.input]
        downstream = consumers.get(node.output[0], [])
        return any(n is not None and n.op_type in ("Softmax", "IsNaN") for n in upstream + downstream)

    residue = sum(1 for n in graph.node if n.op_type == "IsNaN" or (n.op_type == "Where" and touches_softmax(n)))
    decomposed = sum(1 for n in graph.node if n.op_type == "ReduceMean" and any(
        c.op_type == "Sub" and n.input[0] in c.input for c in consumers.get(n.output[0], [])))

    def feeds_quantize(node) -> bool:
        return any(c.op_type == "QuantizeLinear" for o in node.output for c in consumers.get(o, []))

    initializers = {init.name: init for init in graph.initializer}

    def symmetric(node) -> bool:
        if len(node.input) < 3 or not node.input[2]:
            return False  # no zero point given: uint8 by the spec
        zero = initializers.get(node.input[2])
        # 3: INT8, 17: FLOAT8E4M3FN (whose zero is the all-zero byte)
        return zero is not None and zero.data_type in (3, 17) and not np.any(np.asarray(_array(zero), np.float32))

    quantized = sum(1 for n in graph.node if n.op_type == "MatMul" and reads_dequantized(n, producers))
    # LayerNorm and Softmax compute in float: neither reads a dequantized int8 tensor, and the attention
    # probabilities are not quantized (a LayerNorm output feeding the Q of the next MatMul's input is fine)
    on_norm = sum(1 for n in graph.node if (n.op_type in ("LayerNormalization", "Softmax") and reads_dequantized(n, producers))
                  or (n.op_type == "Softmax" and feeds_quantize(n)))
    asymmetric = sum(1 for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not symmetric(n))

    weight_types: Counter = Counter()
    for init in graph.initializer:
        weight_types[_type_name(init.data_type)] += int(np.prod(init.dims)) if init.dims else 1
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return GraphSummary(
        ir_version=model.ir_version,
        opset=opset,
        op_counts=dict(Counter(n.op_type for n in graph.node).most_common()),
        input_types={v.name: _type_name(v.type.tensor_type.elem_type) for v in graph.input},
        output_types={v.name: _type_name(v.type.tensor_type.elem_type) for v in graph.output},
        weight_types=dict(weight_types),
        attention_blocks=blocks,
        prescaled_attention_blocks=prescaled,
        masked_attention_blocks=masked,
        softmax_residue=residue,
        decomposed_norms=decomposed,
        quantized_matmuls=quantized,
        qdq_on_norm_softmax=on_norm,
        asymmetric_qdq=asymmetric,
    )


def reads_dequantized(node, producers: dict) -> bool:
    """Whether one of ``node``'s inputs comes from a DequantizeLinear (``producers``: tensor name -> node)."""
    return any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)


def count_reading_dequantized(graph, op_types: tuple[str, ...]) -> Counter:
    """Op type -> how many nodes of ``op_types`` read a DequantizeLinear: the quantized ones of a Q/DQ graph."""
    producers = {out: node for node in graph.node for out in node.output}
    return Counter(n.op_type for n in graph.node if n.op_type in op_types and reads_dequantized(n, producers))


def _array(tensor):
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def check_graph(summary: GraphSummary, *, precision: str, config=None,
                kept_fp32: tuple[str, ...] = (), attention_products: int = 0) -> list[Finding]:
    """The hygiene an exported ViViT graph must have for ONNX Runtime and TensorRT (``config``: the model's
    ``VivitConfig``, for how many attention blocks and weight MatMuls it has; ``kept_fp32``: the units a
    low-precision graph keeps in fp32, ``export/fp32_fallback.py``)."""
    num_layers = None if config is None else config.attention_blocks
    findings: list[Finding] = []

    def add(ok: bool, check: str, good: str, bad: str, level: Level = "blocker") -> None:
        findings.append(Finding("ok" if ok else level, check, good if ok else bad))

    ops = summary.op_counts
    add(summary.opset >= MIN_OPSET, "opset", f"opset {summary.opset}",
        f"opset {summary.opset} < {MIN_OPSET}: no LayerNormalization op")
    add(ops.get("LayerNormalization", 0) > 0 and summary.decomposed_norms == 0, "layernorm",
        f"{ops.get('LayerNormalization', 0)} LayerNormalization ops, none decomposed",
        "LayerNorm is decomposed into ReduceMean/Pow/Sqrt (overflows in fp16, slower everywhere)")
    add(summary.softmax_residue == 0, "softmax residue", "no IsNaN/Where around the Softmax",
        f"{summary.softmax_residue} IsNaN/Where nodes of a safe-softmax decomposition around the Softmax")
    expected = num_layers if num_layers is not None else summary.attention_blocks
    add(summary.attention_blocks == expected and expected > 0, "attention pattern",
        f"{summary.attention_blocks} MatMul -> Softmax -> MatMul blocks",
        f"{summary.attention_blocks} MatMul -> Softmax -> MatMul blocks, expected {expected} (the model's)")
    add(0 < summary.prescaled_attention_blocks == summary.attention_blocks, "attention scale",
        "Q scaled before Q @ K^T in every block (fusable by TensorRT)",
        f"only {summary.prescaled_attention_blocks} of {summary.attention_blocks} blocks scale Q before Q @ K^T",
        level="warning")
    io_types = {**summary.input_types, **summary.output_types}
    add(all(t == "float" for t in io_types.values()), "io types", "float32 inputs and outputs",
        f"inputs/outputs must be float32, got {io_types}")
    add("double" not in summary.weight_types, "double", "no float64 weights",
        f"{summary.weight_types.get('double')} float64 weight elements")
    stored = {t: n for t, n in summary.weight_types.items() if t in ("float", "float16", "bfloat16", "int8", "float8e4m3fn")}
    main = max(stored, key=stored.get) if stored else None
    want = WEIGHT_TYPES[precision]
    if kept_fp32:  # a mixed graph: its own type and fp32 for the units kept
        add(stored.get(want, 0) > 0, "precision",
            f"{stored.get(want, 0):,} {want} and {stored.get('float', 0):,} float weight elements ({', '.join(kept_fp32)} "
            "kept in fp32)", f"a {precision} graph with {', '.join(kept_fp32)} in fp32 holds no {want} weights: {stored}")
    else:
        add(main == want, "precision", f"weights are mostly {want} ({stored.get(want, 0):,} elements)",
            f"a {precision} graph should hold mostly {want} weights, found {stored}")
    if precision in QUANTIZED_PRECISIONS:
        # per layer: the fused Q/K/V projection, the attention output, the two MLP products; fewer where kept in fp32
        expected = (weight_matmuls(config) - kept_matmuls(kept_fp32, config) + attention_products
                    if config is not None else None)
        add(summary.quantized_matmuls > 0 and expected in (None, summary.quantized_matmuls), "quantized matmuls",
            f"{summary.quantized_matmuls - attention_products} weight MatMuls"
            + (f" and {attention_products} attention products" if attention_products else "") + f" read {precision} Q/DQ",
            f"{summary.quantized_matmuls} MatMuls read Q/DQ, expected {expected} (4 per layer, 2 per layer without MLP"
            + (f", less those of {', '.join(kept_fp32)}" if kept_fp32 else "")
            + (f", and {attention_products} attention products" if attention_products else "") + ")")
        add(summary.qdq_on_norm_softmax == 0 or attention_products > 0, "float islands",
            "LayerNorm and Softmax stay in float" + (" (Softmax's output quantized for P @ V, as asked)"
                                                     if summary.qdq_on_norm_softmax else ""),
            f"{summary.qdq_on_norm_softmax} LayerNorm/Softmax nodes read or feed Q/DQ")
        add(summary.asymmetric_qdq == 0, "symmetric", f"every Q/DQ is {precision} with zero point 0 (what TensorRT takes)",
            f"{summary.asymmetric_qdq} Q/DQ nodes are not {precision} with zero point 0")
    return findings


def _layer_matmuls(config, layer: int) -> int:
    """A layer's weight MatMuls (``config.layer_weight_products``; ViViT's 4 without a config)."""
    return 4 if config is None else config.layer_weight_products(layer)


def weight_matmuls(config) -> int:
    """The weight MatMuls a Q/DQ graph of ``config``'s model quantizes (the tubelet projection and the head, an attentive
    probe's included, stay float)."""
    return sum(_layer_matmuls(config, layer) for layer in range(config.num_layers))


def kept_matmuls(units: tuple[str, ...], config=None) -> int:
    """How many weight MatMuls of a Q/DQ graph the fp32 units leave unquantized: a layer's (4, or 2 without MLP), 2 its
    attention (the fused Q/K/V and the output projection), 2 its MLP; none outside the layers."""
    total = 0
    for unit in units:
        layer, _, kind = unit.partition(".")
        if not layer.isdigit():
            continue
        total += _layer_matmuls(config, int(layer)) if not kind else 2 if kind in ("attention", "mlp") else 0
    return total
