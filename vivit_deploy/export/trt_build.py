"""ONNX file -> TensorRT engine, plus the sidecar JSON that lets a runtime trust and describe it.

Written against NVIDIA's documented Python API for TensorRT 10.x and 11.x (Builder, OnnxParser,
IBuilderConfig, IOptimizationProfile, ITimingCache, IProgressMonitor). TensorRT cannot be installed on
the machines this project is developed on, so this module has not run against a real TensorRT; the
parts that do not need it (build plan, profile and sidecar checks) are tested everywhere.

Precision. TensorRT 11 removed ``BuilderFlag.FP16``: networks are always strongly typed, each tensor
keeps the type the ONNX graph gives it, so an fp16 engine is built from the fp16 graph that
``vivit-export --precision fp16`` writes. TensorRT 10.12+ builds that graph the same way (the
``STRONGLY_TYPED`` creation flag); older 10.x builds fp16 with ``BuilderFlag.FP16`` (weak typing).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from vivit_deploy.errors import BackendUnavailableError, ConfigError, ExportError, ModelFileError
from vivit_deploy.io_spec import DEFAULT_MAX_BATCH
from vivit_deploy.files import sha256_of
from vivit_deploy.metadata import PRECISIONS, QUANTIZED_PRECISIONS, DeployMetadata, read_onnx_metadata

SUPPORTED_MAJORS = (10, 11)
STRONGLY_TYPED_FROM = (10, 12)  # first 10.x release where vivit_deploy builds fp16 strongly typed
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = 1

Progress = Callable[[str], None]


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            "TensorRT is not installed: `pip install tensorrt-cu12` (or -cu13) from NVIDIA's index "
            "(https://pypi.nvidia.com); vivit_deploy supports TensorRT 10.x and 11.x"
        ) from exc
    return tensorrt


def parse_version(version: str) -> tuple[int, int]:
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError as exc:
        raise BackendUnavailableError(f"cannot read the TensorRT version {version!r}") from exc
    return major, minor


@dataclass(frozen=True)
class BuildPlan:
    strongly_typed: bool  # network created strongly typed (always so on 11.x)
    fp16_flag: bool  # BuilderFlag.FP16 on a weakly typed 10.x network
    reason: str
    int8_flag: bool = False  # BuilderFlag.INT8 for an int8 Q/DQ graph on a weakly typed 10.x network
    fp8_flag: bool = False  # BuilderFlag.FP8 for an fp8 Q/DQ graph on a weakly typed 10.x network


def plan_build(tensorrt_version: str, engine_precision: str, graph_precision: str) -> BuildPlan:
    """How to build an ``engine_precision`` engine from a ``graph_precision`` ONNX graph on this TensorRT."""
    major, minor = parse_version(tensorrt_version)
    if major not in SUPPORTED_MAJORS:
        raise BackendUnavailableError(
            f"TensorRT {tensorrt_version} is not supported; vivit_deploy builds engines with TensorRT 10.x and 11.x"
        )
    if engine_precision not in PRECISIONS:
        raise ConfigError(f"engine precision must be fp32, fp16, int8 or fp8, got {engine_precision!r}")
    typed = major >= 11 or (major, minor) >= STRONGLY_TYPED_FROM
    if engine_precision in QUANTIZED_PRECISIONS or graph_precision in QUANTIZED_PRECISIONS:
        # Explicit quantization: the Q/DQ nodes say what runs in int8, the rest runs in the graph's float
        # type. NVIDIA: "use explicit quantization with strong typing; precision-control build flags are
        # not required"; before strong typing (10.0-10.11) a Q/DQ network needs BuilderFlag.INT8.
        if engine_precision != graph_precision:
            precision = engine_precision if engine_precision in QUANTIZED_PRECISIONS else graph_precision
            raise ConfigError(f"an {precision} engine is built from the {precision} Q/DQ graph (`vivit-export --precision "
                              f"{precision} --calibration ...`), and that graph only builds an {precision} engine; got a "
                              f"{graph_precision} graph for a {engine_precision} engine")
        if typed:
            return BuildPlan(True, False, f"strongly typed network from the {engine_precision} Q/DQ graph "
                                          f"(TensorRT {major}.{minor}); what is not quantized runs in fp32")
        return BuildPlan(False, False, f"BuilderFlag.{engine_precision.upper()} on a weakly typed network with Q/DQ "
                                       f"(TensorRT {major}.{minor} < 10.12)",
                         int8_flag=engine_precision == "int8", fp8_flag=engine_precision == "fp8")
    if engine_precision == "fp32":
        if graph_precision != "fp32":
            raise ConfigError("an fp32 engine needs the fp32 graph (`vivit-export` without --precision fp16)")
        return BuildPlan(major >= 11, False, "fp32 graph, fp32 engine")
    if typed:
        if graph_precision != "fp16":
            raise ConfigError(
                f"TensorRT {tensorrt_version} builds fp16 engines strongly typed, from an fp16 graph: "
                "export one with `vivit-export SOURCE -o model-fp16.onnx --precision fp16`"
            )
        return BuildPlan(True, False, f"strongly typed network from the fp16 graph (TensorRT {major}.{minor})")
    return BuildPlan(False, True, f"BuilderFlag.FP16 on a weakly typed network (TensorRT {major}.{minor} < 10.12)")


@dataclass(frozen=True)
class Profile:
    min: int
    opt: int
    max: int


def check_profile(min_batch: int, opt_batch: int | None, max_batch: int | None, metadata: DeployMetadata) -> Profile:
    """The batch profile from the flags, inside what the ONNX file allows; defaults: opt = max = the file's max."""
    spec = metadata.input
    top = spec.max_batch if spec.max_batch is not None else DEFAULT_MAX_BATCH
    max_batch = max_batch if max_batch is not None else top
    opt_batch = opt_batch if opt_batch is not None else max(min_batch, min(8, max_batch))
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ConfigError(f"the batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}")
    if min_batch < spec.min_batch or (spec.max_batch is not None and max_batch > spec.max_batch):
        raise ConfigError(
            f"the batch profile {min_batch}..{max_batch} is outside what the ONNX file allows ({spec.batch_range}); "
            "re-export with a larger --max-batch"
        )
    return Profile(min_batch, opt_batch, max_batch)


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def make_sidecar(
    metadata: DeployMetadata, *, tensorrt_version: str, gpu_name: str, compute_capability: str,
    precision: str, profile: Profile, onnx_sha256: str, build: dict[str, Any],
) -> dict[str, Any]:
    """The record written next to an engine: what built it, for which GPU, and the model's metadata."""
    from dataclasses import replace

    spec = replace(metadata.input, min_batch=profile.min, max_batch=profile.max)
    engine_metadata = replace(metadata, input=spec, precision=precision)
    return {
        "format_version": SIDECAR_FORMAT,
        "tensorrt": tensorrt_version,
        "gpu": {"name": gpu_name, "compute_capability": compute_capability},
        "precision": precision,
        "profile": asdict(profile),
        "onnx_sha256": onnx_sha256,
        "build": build,
        "metadata": engine_metadata.to_props(),
    }


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ModelFileError(
            f"{engine_path}: no sidecar {path.name} next to the engine; build engines with "
            "`vivit-deploy build-engine`, which records the TensorRT version, GPU and model metadata there"
        )
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
        if sidecar["format_version"] != SIDECAR_FORMAT:
            raise ValueError(f"format {sidecar['format_version']!r}")
        for key in ("tensorrt", "gpu", "precision", "profile", "metadata"):
            sidecar[key]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: not a vivit_deploy engine sidecar ({exc})") from exc
    return sidecar


def check_sidecar(sidecar: dict[str, Any], *, tensorrt_version: str, gpu_name: str, compute_capability: str, engine: str) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU, before TensorRT tries it."""
    built = sidecar["tensorrt"]
    if built != tensorrt_version:
        raise ModelFileError(
            f"{engine} was built with TensorRT {built}, this is TensorRT {tensorrt_version}: engines are tied to the "
            "TensorRT version that built them; rebuild it with `vivit-deploy build-engine` here"
        )
    gpu = sidecar["gpu"]
    if gpu.get("compute_capability") != compute_capability or gpu.get("name") != gpu_name:
        raise ModelFileError(
            f"{engine} was built for {gpu.get('name')} (compute {gpu.get('compute_capability')}), this GPU is "
            f"{gpu_name} (compute {compute_capability}); rebuild the engine on this GPU"
        )


def gpu_identity(device_index: int = 0) -> tuple[str, str]:
    """(name, "major.minor" compute capability) of a CUDA device, via torch."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("no CUDA GPU is visible (torch.cuda.is_available() is False); TensorRT needs one")
    major, minor = torch.cuda.get_device_capability(device_index)
    return torch.cuda.get_device_name(device_index), f"{major}.{minor}"


@dataclass
class BuildReport:
    engine: Path
    sidecar: Path
    precision: str
    profile: Profile
    plan: BuildPlan
    seconds: float
    size_bytes: int
    timing_cache: Path | None

    def format(self) -> str:
        cache = f", timing cache {self.timing_cache}" if self.timing_cache else ""
        return (f"{self.engine}: {self.size_bytes / 1e6:.1f} MB, {self.precision}, batch {self.profile.min}/"
                f"{self.profile.opt}/{self.profile.max} (min/opt/max), {self.plan.reason}, built in {self.seconds:.0f} s"
                f"{cache}; sidecar {self.sidecar}")


def _format_parser_error(error) -> str:
    """One line per parser error, naming the node that failed (node_name/node_operator exist from 10.0)."""
    where = []
    for attr, label in (("node_name", "node"), ("node_operator", "op")):
        fn = getattr(error, attr, None)
        value = fn() if callable(fn) else None
        if value:
            where.append(f"{label} {value}")
    if not where and hasattr(error, "node"):
        where.append(f"node #{error.node()}")
    return f"{', '.join(where) or 'graph'}: {error.desc()}"


def _progress_monitor(trt, progress: Progress):
    """TensorRT's IProgressMonitor (10.0+) turned into progress lines for the top-level build phases."""

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


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
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
    """Build a TensorRT engine (and its sidecar) from an ONNX file written by ``vivit-export``.

    ``precision`` defaults to the graph's. Nothing is written at ``engine_path`` unless the build succeeds.
    """
    from vivit_deploy.files import atomic_write

    progress = progress or (lambda message: None)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    metadata = read_onnx_metadata(onnx_path)
    precision = precision or metadata.precision
    profile = check_profile(min_batch, opt_batch, max_batch, metadata)
    if workspace_gb is not None and workspace_gb <= 0:
        raise ConfigError(f"--workspace-gb must be positive, got {workspace_gb}")
    if optimization_level is not None and not 0 <= optimization_level <= 5:
        raise ConfigError(f"--optimization-level must be in 0..5, got {optimization_level}")
    if not engine_path.parent.is_dir():
        raise FileNotFoundError(f"{engine_path.parent}: the output directory does not exist")
    trt = import_tensorrt()
    plan = plan_build(trt.__version__, precision, metadata.precision)
    gpu_name, capability = gpu_identity(device_index)

    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed and parse_version(trt.__version__)[0] == 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    progress(f"parsing {onnx_path} with TensorRT {trt.__version__}'s ONNX parser ...")
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_format_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT's ONNX parser rejected {onnx_path}: " + "; ".join(errors or ["no details"]))

    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    if optimization_level is not None:
        config.builder_optimization_level = optimization_level
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if plan.int8_flag:
        config.set_flag(trt.BuilderFlag.INT8)
    if plan.fp8_flag:
        config.set_flag(trt.BuilderFlag.FP8)
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
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt, progress)

    progress(f"building a {precision} engine for {gpu_name} (batch {profile.min}/{profile.opt}/{profile.max}); this takes minutes ...")
    with _Heartbeat(progress, "building"):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path}; its log above says why")
    seconds = time.perf_counter() - started

    if cache_path is not None:
        cache_bytes = bytes(config.get_timing_cache().serialize())
        atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(cache_bytes))
    build = {"plan": asdict(plan), "seconds": round(seconds, 1), "workspace_gb": workspace_gb,
             "optimization_level": optimization_level}
    sidecar = make_sidecar(metadata, tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=capability,
                           precision=precision, profile=profile, onnx_sha256=sha256_of(onnx_path), build=build)
    atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(bytes(serialized)))
    side = sidecar_path(engine_path)
    atomic_write(side, lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8"))
    return BuildReport(engine_path, side, precision, profile, plan, seconds, engine_path.stat().st_size, cache_path)
