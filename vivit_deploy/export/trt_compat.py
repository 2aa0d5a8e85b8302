"""Will TensorRT's ONNX parser take this file, and build a good engine from it?

Two answers, side by side. Where an edition of TensorRT imports (TensorRT 10/11, or TensorRT for RTX,
which installs from PyPI and needs no GPU), NVIDIA's own ONNX parser reads the file and its errors are
reported verbatim, per node (name, op, NVIDIA's error code). Everywhere, static checks run without
TensorRT: the parser's operator list is data (``trt_parser_ops.json``, from onnx-tensorrt's own
``docs/operators.md``, with the release it describes). On top of it come the graph checks every export
passes (LayerNormalization as one op, the fusable attention pattern, no IsNaN/Where residue, float32
I/O) and what the engine's precision needs: TensorRT 11 networks are strongly typed, so an fp16 engine
is built from an fp16 graph (``vivit-export --precision fp16``), and an int8 engine from the int8 Q/DQ
graph, which must be int8 with zero points 0 (TensorRT quantizes symmetrically) and keep Q/DQ off
LayerNorm and Softmax.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from vivit_deploy.errors import ConfigError, ModelFileError
from vivit_deploy.export.graph_checks import WEIGHT_TYPES, Finding, GraphSummary, check_graph, summarize
from vivit_deploy.artifacts.metadata import PRECISIONS, QUANTIZED_PRECISIONS, load_onnx_graph

PARSER_OPS = Path(__file__).with_name("trt_parser_ops.json")


@dataclass(frozen=True)
class ParserSupport:
    tensorrt: str  # the TensorRT release the list describes
    source: str
    opset_min: int
    opset_max: int
    supported: frozenset[str]
    unsupported: frozenset[str]
    element_types: frozenset[str]
    limited_element_types: dict[str, str] = field(default_factory=dict)


@lru_cache(maxsize=1)
def parser_support() -> ParserSupport:
    data = json.loads(PARSER_OPS.read_text(encoding="utf-8"))
    return ParserSupport(
        tensorrt=data["tensorrt"], source=data["source"], opset_min=data["opset_min"], opset_max=data["opset_max"],
        supported=frozenset(data["supported"]), unsupported=frozenset(data["unsupported"]),
        element_types=frozenset(data["element_types"]), limited_element_types=dict(data["limited_element_types"]),
    )


@dataclass(frozen=True)
class ParserRun:
    """What NVIDIA's ONNX parser made of the file, or why it did not run."""

    ran: bool
    edition: str | None = None  # "tensorrt" or "rtx"
    title: str | None = None
    version: str | None = None
    errors: tuple[dict[str, Any], ...] = ()  # node, node_name, op, code, message
    reason: str | None = None  # why it did not run

    @property
    def passed(self) -> bool:
        return self.ran and not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"ran": self.ran, "edition": self.edition, "version": self.version, "passed": self.passed,
                "errors": list(self.errors), "reason": self.reason}


def run_parser(path: str | os.PathLike, trt: str = "auto") -> ParserRun:
    """Parse ``path`` with NVIDIA's ONNX parser of the chosen edition (auto: whichever imports)."""
    from vivit_deploy.artifacts.engines import choose_edition, import_edition
    from vivit_deploy.errors import BackendUnavailableError
    from vivit_deploy.export.trt_build import parser_errors

    try:
        ed = choose_edition(trt)
        module = import_edition(ed.name)
    except BackendUnavailableError as exc:
        return ParserRun(False, reason=str(exc))
    logger = module.Logger(module.Logger.INTERNAL_ERROR)  # the errors come back through the parser, not the log
    builder = module.Builder(logger)
    network = builder.create_network(0)
    parser = module.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    errors = () if ok else tuple(parser_errors(parser)) or ({"node": None, "node_name": None, "op": None,
                                                            "code": "UNKNOWN", "message": "the parser failed without an error"},)
    return ParserRun(True, ed.name, ed.title, module.__version__, errors)


@dataclass
class TrtCompatReport:
    path: Path
    precision: str | None  # from the file's metadata; None for a file vivit-export did not write
    summary: GraphSummary
    findings: list[Finding]
    parser: ParserSupport
    parser_run: ParserRun = field(default_factory=lambda: ParserRun(False, reason="not asked for"))

    @property
    def blockers(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "blocker"]

    @property
    def passed(self) -> bool:
        return not self.blockers

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "precision": self.precision, "passed": self.passed,
            "parser_list": {"tensorrt": self.parser.tensorrt, "source": self.parser.source},
            "nvidia_parser": self.parser_run.to_dict(),
            "findings": [f.to_dict() for f in self.findings], "summary": self.summary.to_dict(),
        }

    def format(self) -> str:
        lines = [
            f"{self.path}: opset {self.summary.opset}, {sum(self.summary.op_counts.values())} nodes, "
            f"{self.precision or 'unknown'} graph; operator list of TensorRT {self.parser.tensorrt}'s ONNX parser "
            f"({self.parser.source})",
        ]
        lines += [f.format() for f in self.findings]
        verdict = "no blockers" if self.passed else f"{len(self.blockers)} blocker(s)"
        run = self.parser_run
        proof = (f"{run.title} {run.version}'s parser read the file; only a build (`vivit-deploy build-engine`) proves "
                 "the engine" if run.ran else "the NVIDIA parser was not run, so this is a static check only")
        lines.append(f"{verdict}; {proof}")
        return "\n".join(lines)


def _element_types(model) -> dict[str, int]:
    """Element type name -> how many tensors (I/O, initializers, annotated values) carry it."""
    from collections import Counter

    import onnx

    graph = model.graph
    types: Counter = Counter()
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type"):
            types[onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()] += 1
    for init in graph.initializer:
        types[onnx.TensorProto.DataType.Name(init.data_type).lower()] += 1
    for node in graph.node:
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    types[onnx.TensorProto.DataType.Name(attr.i).lower()] += 1
    types.pop("undefined", None)
    return dict(types)


def check_trt(path: str | os.PathLike, precision: str | None = None, trt: str = "auto") -> TrtCompatReport:
    """Report on ``path`` against TensorRT's ONNX parser and the engine precision it will get: NVIDIA's parser
    where an edition imports (``trt``: auto, tensorrt or rtx), the static checks everywhere.

    ``precision`` defaults to the precision recorded in the file's metadata.
    """
    path = Path(path)
    model = load_onnx_graph(path)
    if not model.graph.node:
        raise ModelFileError(f"{path}: the ONNX file has no graph")
    props = {p.key: p.value for p in model.metadata_props}
    recorded = props.get("vivit_deploy.precision")
    precision = precision or recorded
    parser = parser_support()
    summary = summarize(model)
    findings: list[Finding] = []

    used = set(summary.op_counts)
    foreign = sorted(op for op in used if op not in parser.supported)
    if foreign:
        listed = [op for op in foreign if op in parser.unsupported]
        detail = f"not supported by the parser: {', '.join(foreign)}"
        if len(listed) < len(foreign):
            detail += " (ops absent from the list are custom or from another domain)"
        findings.append(Finding("blocker", "operators", detail))
    else:
        findings.append(Finding("ok", "operators", f"all {len(used)} op types are in the parser's list"))
    other_domains = sorted({o.domain for o in model.opset_import if o.domain not in ("", "ai.onnx")})
    if other_domains:
        findings.append(Finding("warning", "domains", f"opsets from other domains: {other_domains} (need plugins)"))
    in_range = parser.opset_min <= summary.opset <= parser.opset_max
    findings.append(Finding(
        "ok" if in_range else "blocker", "parser opset",
        f"opset {summary.opset} in {parser.opset_min}..{parser.opset_max}" if in_range else
        f"opset {summary.opset} is outside {parser.opset_min}..{parser.opset_max}, the range of TensorRT "
        f"{parser.tensorrt}'s parser; export with --opset 18",
    ))

    types = _element_types(model)
    rejected = sorted(t for t in types if t not in parser.element_types)
    limited = sorted(t for t in types if t in parser.limited_element_types and t not in ("int8", "uint8", "float8e4m3fn"))
    if rejected:
        findings.append(Finding("blocker", "tensor types", f"types TensorRT does not take: {', '.join(rejected)}"))
    elif limited:
        notes = "; ".join(f"{t}: {parser.limited_element_types[t]}" for t in limited)
        findings.append(Finding("warning", "tensor types", notes))
    else:
        findings.append(Finding("ok", "tensor types", f"{', '.join(sorted(types))}"))

    if precision not in PRECISIONS:
        weights = summary.weight_types
        precision = max(WEIGHT_TYPES, key=lambda p: weights.get(WEIGHT_TYPES[p], 0))
        findings.append(Finding("warning", "metadata",
                                f"no vivit_deploy metadata: treating it as an {precision} graph (from its weights)"))
    config = None
    if "vivit_deploy.config" in props:
        from vivit_deploy.model.registry import config_from_dict

        try:
            config = config_from_dict(json.loads(props["vivit_deploy.config"]))
        except (ConfigError, json.JSONDecodeError):
            config = None  # metadata of another version: the counts are then not checked
    kept = tuple(json.loads(props.get("vivit_deploy.kept_fp32", "[]")))
    products = len(json.loads(props.get("vivit_deploy.calibration", "{}")).get("attention_products", []))
    findings += [f for f in check_graph(summary, precision=precision, config=config, kept_fp32=kept,
                                        attention_products=products) if f.check != "opset"]
    if precision == "fp32":
        findings.append(Finding(
            "warning", "engine precision",
            "an fp32 graph builds an fp32 engine on TensorRT 11 (strongly typed); for fp16 export with --precision fp16",
        ))
    if precision in QUANTIZED_PRECISIONS:
        findings.append(Finding(
            "warning", "engine precision",
            f"explicit quantization: the {summary.quantized_matmuls} Q/DQ MatMuls run in {precision}"
            + (f" ({products} of them attention products), the rest of attention" if products else ", attention")
            + ", LayerNorm and Softmax in fp32 (strongly typed: the graph's types decide, no fp16 flag applies)"
            + ("; fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper)" if precision == "fp8" else ""),
        ))
    run = run_parser(path, trt)
    if run.ran and run.passed:
        findings.insert(0, Finding("ok", "nvidia parser", f"{run.title} {run.version}'s ONNX parser took every node"))
    elif run.ran:
        findings[0:0] = [Finding("blocker", "nvidia parser", f"{run.title} {run.version}: {e['message']}") for e in run.errors]
    else:
        findings.insert(0, Finding("warning", "nvidia parser", f"not run: {run.reason}"))
    return TrtCompatReport(path, precision, summary, findings, parser, run)
