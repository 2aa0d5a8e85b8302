"""ONNX file -> TensorRT engine, with NVIDIA's build report and the sidecar that lets a runtime trust it.

One builder for both editions of TensorRT (``artifacts.engines.EDITIONS``): TensorRT 10.x/11.x, which builds
on the GPU it will run on, and TensorRT for RTX 1.x, which builds ahead of time with no GPU for named
compute capabilities. What differs (typing, flags, timing cache, targets) is read from the edition's
data into a :class:`BuildPlan`; the steps are the same: parse with NVIDIA's ONNX parser, one batch
profile, build, then read what the builder logged (its fused layers with their inputs and outputs,
the weights and activation memory) into the report, which is printed, saved in the sidecar and in
``--json``. A build that fails leaves nothing at the output path and raises one line with NVIDIA's
reason.

What has run: TensorRT for RTX 1.7 parses and builds every precision of our exports on a CPU-only
machine in the default test run (``tests/export/test_trt_build.py``). TensorRT 10/11 have never been
installable where vivit_deploy is developed: their path is the same code with the other edition's
data, written against NVIDIA's documented API, and has not run.

Precision. Both editions build strongly typed networks (TensorRT from 11, and from 10.12 with the
``STRONGLY_TYPED`` flag; TensorRT for RTX always): each tensor keeps the type the ONNX graph gives it,
so an fp16 engine comes from the fp16 graph ``vivit-export --precision fp16`` writes and an int8 or fp8
engine from the Q/DQ graph. TensorRT 10.0-10.11 take ``BuilderFlag.FP16/INT8/FP8`` instead.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from vivit_deploy.artifacts.engines import (
    EDITIONS, Profile, check_version, choose_edition, compute_capability_enum, gpu_identity, import_edition,
    make_sidecar, parse_targets, sidecar_path,
)
from vivit_deploy.errors import ConfigError, ExportError
from vivit_deploy.export.graph_checks import summarize
from vivit_deploy.files import sha256_of
from vivit_deploy.model.io_spec import DEFAULT_MAX_BATCH
from vivit_deploy.artifacts.metadata import PRECISIONS, QUANTIZED_PRECISIONS, DeployMetadata, load_onnx_graph, read_onnx_metadata

Progress = Callable[[str], None]

__all__ = ["BuildPlan", "BuildReport", "Profile", "build_engine", "check_profile", "plan_build"]


@dataclass(frozen=True)
class BuildPlan:
    """How one edition and version of TensorRT builds an engine of one precision from one graph."""

    edition: str
    strongly_typed: bool  # each tensor keeps the graph's type
    creation_flag: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (TensorRT 10.12-10.x)
    builder_flags: tuple[str, ...]  # BuilderFlag names (FP16/INT8/FP8 on weakly typed 10.0-10.11)
    timing_cache: bool  # the edition takes an ITimingCache
    targets: tuple[str, ...]  # compute capabilities built ahead of time (TensorRT for RTX); () = the GPU here
    reason: str

    @property
    def fp16_flag(self) -> bool:
        return "FP16" in self.builder_flags

    @property
    def int8_flag(self) -> bool:
        return "INT8" in self.builder_flags

    @property
    def fp8_flag(self) -> bool:
        return "FP8" in self.builder_flags


def plan_build(version: str, engine_precision: str, graph_precision: str, *, edition: str = "tensorrt",
               targets: tuple[str, ...] = ()) -> BuildPlan:
    """How to build an ``engine_precision`` engine from a ``graph_precision`` ONNX graph with this edition/version."""
    ed = EDITIONS[edition]
    major, minor = check_version(ed, version)
    if engine_precision not in PRECISIONS:
        raise ConfigError(f"engine precision must be fp32, fp16, int8 or fp8, got {engine_precision!r}")
    typed = ed.strongly_typed_from is None or (major, minor) >= ed.strongly_typed_from
    creation_flag = ed.creation_flag_from is not None and typed and major == ed.creation_flag_from[0]
    where = f"{ed.title} {major}.{minor}"

    def plan(flags: tuple[str, ...], reason: str) -> BuildPlan:
        return BuildPlan(ed.name, typed, creation_flag, flags, ed.timing_cache, targets, reason)

    if engine_precision in QUANTIZED_PRECISIONS or graph_precision in QUANTIZED_PRECISIONS:
        # Explicit quantization: the Q/DQ nodes say what runs in int8/fp8, the rest in the graph's float type.
        # NVIDIA: "use explicit quantization with strong typing; precision-control build flags are not
        # required"; before strong typing (10.0-10.11) a Q/DQ network needs BuilderFlag.INT8 / FP8.
        if engine_precision != graph_precision:
            precision = engine_precision if engine_precision in QUANTIZED_PRECISIONS else graph_precision
            raise ConfigError(f"an {precision} engine is built from the {precision} Q/DQ graph (`vivit-export --precision "
                              f"{precision} --calibration ...`), and that graph only builds an {precision} engine; got a "
                              f"{graph_precision} graph for a {engine_precision} engine")
        if typed:
            return plan((), f"strongly typed network from the {engine_precision} Q/DQ graph ({where}); "
                            "what is not quantized runs in the graph's float type")
        return plan((engine_precision.upper(),), f"BuilderFlag.{engine_precision.upper()} on a weakly typed network "
                                                 f"with Q/DQ ({where} < 10.12)")
    if engine_precision == "fp32":
        if graph_precision != "fp32":
            raise ConfigError("an fp32 engine needs the fp32 graph (an export with precision=fp32)")
        return plan((), f"fp32 graph, fp32 engine ({where})")
    if typed:
        if graph_precision != "fp16":
            raise ConfigError(
                f"{ed.title} {version} builds fp16 engines strongly typed, from an fp16 graph: "
                "export one with `vivit-export SOURCE -o model-fp16.onnx --precision fp16`"
            )
        return plan((), f"strongly typed network from the fp16 graph ({where})")
    return plan(("FP16",), f"BuilderFlag.FP16 on a weakly typed network ({where} < 10.12)")


def check_profile(min_batch: int, opt_batch: int | None, max_batch: int | None, metadata: DeployMetadata) -> Profile:
    """The batch profile from the flags, inside what the ONNX file allows; defaults: opt = min(8, max), max = the file's."""
    spec = metadata.input
    top = spec.max_batch if spec.max_batch is not None else DEFAULT_MAX_BATCH
    max_batch = max_batch if max_batch is not None else top
    opt_batch = opt_batch if opt_batch is not None else max(min_batch, min(8, max_batch))
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ConfigError(f"the batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}")
    if min_batch < spec.min_batch or (spec.max_batch is not None and max_batch > spec.max_batch):
        raise ConfigError(
            f"the batch profile {min_batch}..{max_batch} is outside what the ONNX file allows ({spec.batch_range}); "
            "re-export with a larger max_batch="
        )
    return Profile(min_batch, opt_batch, max_batch)


# ---- what the builder says -----------------------------------------------------------------------

def _capturing_logger(trt, progress: Progress):
    """An ILogger that keeps every message (VERBOSE included: the layer list and memory figures are only
    logged) and passes warnings and errors on as progress lines."""

    class CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []
            self.errors: list[str] = []

        def log(self, severity, msg):
            self.messages.append((severity, msg))
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            elif severity == trt.ILogger.Severity.WARNING:
                progress(f"TensorRT warning: {msg.strip().splitlines()[0]}")

    return CapturingLogger()


_MEMORY = {
    "activation_memory_bytes": re.compile(r"Total Activation Memory: (\d+)"),
    "weights_memory_bytes": re.compile(r"Total Weights Memory: (\d+)"),
}
_DETAILED_LAYER = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[\w-]+), Inputs: \[(?P<inputs>.*?)\], "
                             r"Constants: \[.*?\], Outputs: \[(?P<outputs>.*?)\], TacticName: .*?Metadata: ?(?P<meta>.*)$")
_DETAILED_TENSOR = re.compile(r"\{ Name: (?P<name>[^,]+), Dimensions: \[(?P<dims>[^\]]*)\].*?Datatype: (?P<dtype>\w+)")
_CLASSIC_LAYER = re.compile(r"^Layer\((?P<type>[^)]*)\): (?P<name>.*?), Tactic: \S+, (?P<inputs>.*?) -> (?P<outputs>.*)$")
_CLASSIC_TENSOR = re.compile(r"(?P<name>[^\s,]+) \((?P<dtype>\w+)\[(?P<dims>[^\]]*)\]\)")
_ONNX_NODE = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_IO_TENSOR = re.compile(r"^Name: (?P<name>[^,]+), IOMode: (?P<mode>\w+), DataType: (?P<dtype>\w+), "
                        r"Dimensions: \[(?P<dims>[^\]]*)\]")


def _tensors(text: str, pattern: re.Pattern) -> list[dict[str, Any]]:
    return [{"name": m["name"].strip(), "shape": [int(d) for d in m["dims"].split(",") if d.strip()],
             "dtype": m["dtype"].lower()} for m in pattern.finditer(text)]


def parse_layers(messages: list[str]) -> list[dict[str, Any]]:
    """The engine's layers as the builder logged them: with ``ProfilingVerbosity.DETAILED``, a "Layers:" block
    of ``Name: ..., LayerType: ..., Inputs: [...], Outputs: [...], Metadata: [ONNX Layer: ...]`` lines (what
    TensorRT for RTX 1.7 prints); otherwise TensorRT's classic ``Layer(Type): name, Tactic: t, in -> out`` lines."""
    detailed: list[dict[str, Any]] = []
    classic: list[dict[str, Any]] = []
    for message in messages:
        lines = message.splitlines()
        if lines and lines[0].strip() == "Layers:":
            for line in lines[1:]:
                m = _DETAILED_LAYER.match(line.strip())
                if m:
                    detailed.append({"name": m["name"], "type": m["type"], "inputs": _tensors(m["inputs"], _DETAILED_TENSOR),
                                     "outputs": _tensors(m["outputs"], _DETAILED_TENSOR),
                                     "onnx_nodes": _ONNX_NODE.findall(m["meta"])})
        for line in lines:
            m = _CLASSIC_LAYER.match(line.strip())
            if m:
                classic.append({"name": m["name"], "type": m["type"], "inputs": _tensors(m["inputs"], _CLASSIC_TENSOR),
                                "outputs": _tensors(m["outputs"], _CLASSIC_TENSOR), "onnx_nodes": []})
    return detailed or classic


def parse_io_tensors(messages: list[str]) -> list[dict[str, Any]]:
    """The engine's inputs and outputs from the "I/O Tensors:" part of the detailed layer log."""
    found = []
    for message in messages:
        if message.startswith("Layers:"):
            for line in message.splitlines():
                m = _IO_TENSOR.match(line.strip())
                if m:
                    found.append({"name": m["name"], "mode": m["mode"].lower(), "dtype": m["dtype"].lower(),
                                  "shape": [int(d) for d in m["dims"].split(",") if d.strip()]})
    return found


def fused_attention(layers: list[dict[str, Any]], op_types: dict[str, str]) -> list[str]:
    """The engine layers that each run a whole attention block (both products and the Softmax between them),
    from the ONNX nodes each layer's metadata names (``op_types``: ONNX node name -> op type)."""
    fused = []
    for layer in layers:
        ops = [op_types.get(n) for n in layer.get("onnx_nodes", [])]
        if ops.count("Softmax") >= 1 and ops.count("MatMul") >= 2:
            fused.append(layer["name"])
    return fused


def _kernel(layer_name: str) -> str:
    """``_gemm_mha_v2_myl0_8`` -> ``_gemm_mha_v2``: the kernel family without Myelin's numbering."""
    return re.sub(r"_myl\d+_\d+$", "", layer_name)


def parse_memory(messages: list[str]) -> dict[str, int | None]:
    found: dict[str, int | None] = {key: None for key in _MEMORY}
    for message in messages:
        for key, pattern in _MEMORY.items():
            m = pattern.search(message)
            if m:
                found[key] = int(m.group(1))
    return found


def nvidia_reason(errors: list[str]) -> str:
    """NVIDIA's reason for a failed build in one line: the innermost message of the last error, without the
    source location ("In compileGraph at /_src/...") that means nothing to a user."""
    if not errors:
        return "no reason given (the builder logged no error)"
    text = " ".join(errors[-1].split())
    m = re.search(r"\[[^\]]*?\] (?P<inner>.*?)(?: In \w+ at \S+)?\)?$", text)
    inner = m["inner"] if m else text
    head = re.match(r"(?P<where>\S+): Error Code (?P<code>\d+): (?P<component>\w+)", text)
    return f"{inner} ({head['where']}, error code {head['code']}, {head['component']})" if head and m else inner


def format_parser_error(error) -> str:
    """The parser's own diagnosis, e.g. ``In node 0 with name: X and operator: Det (checkDet): UNSUPPORTED_NODE: ...``."""
    text = str(error)
    if text and not text.startswith("<"):
        return " ".join(text.split())
    where = [f"{label} {fn()}" for attr, label in (("node_name", "node"), ("node_operator", "op"))
             if callable(fn := getattr(error, attr, None)) and fn()]
    return f"{', '.join(where) or 'graph'}: {error.code()}: {error.desc()}"


def parser_errors(parser) -> list[dict[str, Any]]:
    """Every error of an ``OnnxParser`` as data: node index, name and op, NVIDIA's error code and its text."""
    out = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)

        def field_of(name: str):
            fn = getattr(error, name, None)
            try:
                return fn() if callable(fn) else None
            except Exception:  # noqa: BLE001  older bindings lack some accessors
                return None

        code = field_of("code")
        out.append({"node": field_of("node"), "node_name": field_of("node_name") or None,
                    "op": field_of("node_operator") or None, "code": getattr(code, "name", str(code)),
                    "message": format_parser_error(error)})
    return out


def _progress_monitor(trt, progress: Progress):
    """TensorRT's IProgressMonitor turned into progress lines for the top-level build phases."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.parents: dict[str, str | None] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.parents[phase_name] = parent_phase
            if parent_phase is None:
                progress(f"TensorRT: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # keep building

        def phase_finish(self, phase_name):
            if self.parents.get(phase_name) is None:
                progress(f"TensorRT: {phase_name} done")

    return Monitor()


class _Heartbeat:
    """Elapsed-time lines every ``every`` seconds while a step without its own progress runs."""

    def __init__(self, progress: Progress, what: str, every: float = 15.0):
        self.progress, self.what, self.every = progress, what, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        started = time.perf_counter()
        while not self.stop.wait(self.every):
            self.progress(f"{self.what}: {time.perf_counter() - started:.0f} s")

    def __enter__(self) -> "_Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()


# ---- the report ----------------------------------------------------------------------------------

@dataclass
class BuildReport:
    engine: Path
    sidecar: Path
    edition: str  # "tensorrt" or "rtx"
    version: str
    gpu: str | None  # the GPU it was built on (TensorRT); None for an ahead-of-time build
    targets: tuple[str, ...]  # compute capabilities
    precision: str
    profile: Profile
    plan: BuildPlan
    seconds: float
    size_bytes: int
    weights_memory_bytes: int | None  # as the builder logged it
    activation_memory_bytes: int | None  # at the profile's max batch, as the builder logged it
    layers: list[dict[str, Any]] = field(default_factory=list)  # fused layers: name, type, inputs, outputs, ONNX nodes
    io_tensors: list[dict[str, Any]] = field(default_factory=list)
    attention_blocks: int = 0  # MatMul -> Softmax -> MatMul blocks in the ONNX graph
    fused_attention: list[str] = field(default_factory=list)  # engine layers that run a whole block (one kernel each)
    timing_cache: Path | None = None

    @property
    def title(self) -> str:
        return EDITIONS[self.edition].title

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("engine", "sidecar", "timing_cache"):
            out[key] = None if out[key] is None else str(out[key])
        out["targets"] = list(self.targets)
        out["layer_types"] = self.layer_types()
        return out

    def layer_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer["type"]] = counts.get(layer["type"], 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def format(self) -> str:
        def mb(value: int | None) -> str:
            return "not logged" if value is None else f"{value / 1e6:.1f} MB"

        where = self.gpu or f"compute capability {', '.join(self.targets)} (ahead of time, no GPU needed)"
        kinds = ", ".join(f"{k} {v}" for k, v in self.layer_types().items())
        cache = f"; timing cache {self.timing_cache}" if self.timing_cache else ""
        return "\n".join([
            f"{self.engine}: {self.size_bytes / 1e6:.1f} MB, {self.precision}, batch {self.profile.min}/{self.profile.opt}/"
            f"{self.profile.max} (min/opt/max), built in {self.seconds:.1f} s",
            f"  {self.title} {self.version} for {where}; {self.plan.reason}",
            f"  memory: weights {mb(self.weights_memory_bytes)}, activations {mb(self.activation_memory_bytes)} "
            f"at batch {self.profile.max}",
            f"  layers: {len(self.layers)}" + (f" ({kinds})" if kinds else " (the builder logged none)"),
            "  io: " + (", ".join(f"{t['name']} {t['mode']} {t['dtype']}{t['shape']}" for t in self.io_tensors)
                        or "not logged"),
            f"  attention: {len(self.fused_attention)} of {self.attention_blocks} blocks fused into one kernel"
            + (f" ({', '.join(sorted({_kernel(n) for n in self.fused_attention}))})" if self.fused_attention else ""),
            f"  sidecar {self.sidecar}{cache}",
        ])


# ---- building ------------------------------------------------------------------------------------

def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    trt: str = "auto",
    compute_capabilities: str | None = None,
    precision: str | None = None,
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gb: float | None = None,
    timing_cache: str | os.PathLike | None = None,
    optimization_level: int | None = None,
    device_index: int = 0,
    progress: Progress | None = None,
) -> BuildReport:
    """Build an engine (and its sidecar) from an ONNX file written by ``vivit-export``.

    ``trt``: "auto" (TensorRT 10/11 where it imports, else TensorRT for RTX), "tensorrt" or "rtx".
    ``compute_capabilities`` ("8.6,8.9"; TensorRT for RTX only) defaults to the edition's own targets, for
    an fp8 graph those with fp8 kernels. ``precision`` defaults to the graph's. Nothing is written at
    ``engine_path`` unless the build succeeds.
    """
    from vivit_deploy.files import atomic_write

    progress = progress or (lambda message: None)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    metadata = read_onnx_metadata(onnx_path)
    precision = precision or metadata.precision
    profile = check_profile(min_batch, opt_batch, max_batch, metadata)
    if workspace_gb is not None and workspace_gb <= 0:
        raise ConfigError(f"workspace_gb= must be positive, got {workspace_gb}")
    if optimization_level is not None and not 0 <= optimization_level <= 5:
        raise ConfigError(f"optimization_level= must be in 0..5, got {optimization_level}")
    if not engine_path.parent.is_dir():
        raise FileNotFoundError(f"{engine_path.parent}: the output directory does not exist")
    ed = choose_edition(trt)
    targets = parse_targets(compute_capabilities, ed, metadata.precision)
    if timing_cache is not None and not ed.timing_cache:
        raise ConfigError(f"{ed.title} takes no timing cache (setting one makes its build look for a GPU); its kernels "
                          "are compiled when the engine loads, kept in the runtime's cache next to the engine")
    module = import_edition(ed.name)
    version = module.__version__
    plan = plan_build(version, precision, metadata.precision, edition=ed.name, targets=targets)
    gpu_name = capability = None
    if not ed.builds_without_gpu:
        gpu_name, capability = gpu_identity(device_index, f"{ed.title} builds engines on the GPU they run on; it")

    started = time.perf_counter()
    logger = _capturing_logger(module, progress)
    builder = module.Builder(logger)
    flags = 1 << int(module.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.creation_flag else 0
    network = builder.create_network(flags)
    parser = module.OnnxParser(network, logger)
    progress(f"parsing {onnx_path} with {ed.title} {version}'s ONNX parser ...")
    if not parser.parse_from_file(str(onnx_path)):
        errors = [e["message"] for e in parser_errors(parser)]
        raise ExportError(f"{ed.title} {version}'s ONNX parser rejected {onnx_path}: " + "; ".join(errors or ["no details"]))

    config = builder.create_builder_config()
    config.profiling_verbosity = module.ProfilingVerbosity.DETAILED  # the layer list in the log
    if workspace_gb is not None:
        config.set_memory_pool_limit(module.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    if optimization_level is not None:
        config.builder_optimization_level = optimization_level
    for flag in plan.builder_flags:
        config.set_flag(getattr(module.BuilderFlag, flag))
    if targets:
        config.num_compute_capabilities = len(targets)
        for i, cc in enumerate(targets):
            config.set_compute_capability(compute_capability_enum(module, cc), i)
    spec = metadata.input
    shape = lambda batch: (batch, *spec.frame_shape)  # noqa: E731
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(spec.name, shape(profile.min), shape(profile.opt), shape(profile.max))
    config.add_optimization_profile(trt_profile)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None:
        cached = cache_path.read_bytes() if cache_path.is_file() else b""
        progress(f"timing cache {cache_path}: {'reusing ' + str(len(cached)) + ' bytes' if cached else 'new'}")
        config.set_timing_cache(config.create_timing_cache(cached), False)
    if hasattr(module, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(module, progress)

    where = gpu_name or f"compute capability {', '.join(targets)}"
    progress(f"building an {precision} engine with {ed.title} {version} for {where} "
             f"(batch {profile.min}/{profile.opt}/{profile.max}) ...")
    with _Heartbeat(progress, "building"):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{ed.title} {version} could not build {onnx_path} for {where}: {nvidia_reason(logger.errors)}")
    seconds = time.perf_counter() - started
    messages = [m for _, m in logger.messages]
    memory = parse_memory(messages)
    layers = parse_layers(messages)
    graph_proto = load_onnx_graph(onnx_path)
    op_types = {node.name: node.op_type for node in graph_proto.graph.node}
    attention_blocks = summarize(graph_proto).attention_blocks
    engine_bytes = bytes(serialized)

    if cache_path is not None:
        cache_bytes = bytes(config.get_timing_cache().serialize())
        atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(cache_bytes))
    side = sidecar_path(engine_path)
    report = BuildReport(
        engine=engine_path, sidecar=side, edition=ed.name, version=version, gpu=gpu_name,
        targets=targets or ((capability,) if capability else ()), precision=precision, profile=profile, plan=plan,
        seconds=seconds, size_bytes=len(engine_bytes), layers=layers, io_tensors=parse_io_tensors(messages),
        attention_blocks=attention_blocks, fused_attention=fused_attention(layers, op_types), timing_cache=cache_path,
        **memory,
    )
    build = {k: v for k, v in report.to_dict().items() if k not in ("engine", "sidecar", "timing_cache")}
    build.update(workspace_gb=workspace_gb, optimization_level=optimization_level)
    sidecar = make_sidecar(metadata, edition_name=ed.name, tensorrt_version=version, gpu_name=gpu_name,
                           compute_capability=capability, targets=report.targets, precision=precision, profile=profile,
                           onnx_sha256=sha256_of(onnx_path), build=build)
    atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(engine_bytes))
    atomic_write(side, lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8"))
    return report



