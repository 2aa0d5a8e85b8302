"""ONNX Runtime backend: a ``vivit-export`` file on the CPU, CUDA or TensorRT execution provider.

Labels, preprocessing and the allowed batch range come from the file's own metadata. The graph's
precision is fixed at export (``--precision fp16`` writes an fp16 graph with float32 inputs and
outputs); the TensorRT provider can additionally build fp16 engines from an fp32 graph.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from vivit_deploy.errors import BackendUnavailableError, ConfigError, ModelFileError, first_line
from vivit_deploy.artifacts.metadata import PRECISIONS, DeployMetadata
from vivit_deploy.runtimes.base import (
    Runtime, StepParts, distribution_versions, device_index, file_probe_names, register_backend, resolve_device,
)

PROVIDERS = ("cpu", "cuda", "tensorrt")
_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_ELEM_FLOAT = "tensor(float)"


def cpu_session(model, *, optimization: str = "all", optimized_path: str | os.PathLike | None = None):
    """A plain ONNX Runtime session on the CPU provider, errors only in its log: what export uses to validate and
    calibrate its own files (``model``: a path, serialized bytes or an ``onnx.ModelProto``). ``optimization``:
    "all" or "basic"; ``optimized_path`` saves the graph the session runs (to see what it fused)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[optimization]
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime is not installed; `pip install onnxruntime-gpu` (it runs on CPU too)"
        ) from exc
    return onnxruntime


@register_backend("onnxruntime", suffixes=(".onnx",))
class OnnxRuntimeRuntime(Runtime):
    """An ``onnxruntime.InferenceSession`` over an exported ViViT graph.

    ``provider`` picks the execution provider: "cpu", "cuda", or "tensorrt" (ONNX Runtime's own
    TensorRT provider, which needs the TensorRT libraries); by default "cuda" when ``device`` resolves
    to a GPU, else "cpu". ``trt_cache_dir`` keeps the TensorRT provider's engines and timing cache
    between sessions (building takes minutes). ``threads`` sets intra-op threads (0: ONNX Runtime's
    choice, one per physical core).
    """

    thread_safe = True  # InferenceSession.run may be called from several threads at once
    artifact = "onnx"
    precisions = PRECISIONS
    # fp8 on the CPU provider is fp8-rounded Q/DQ around fp32 products: its numerics are real, its speed is not
    timed_precisions = ("fp32", "fp16", "int8")

    @classmethod
    def unavailable(cls, device: str = "cpu", precision: str | None = None) -> str | None:
        why = super().unavailable(device, precision)
        if why is None and importlib.util.find_spec("onnxruntime") is None:
            why = "onnxruntime is not installed (pip install onnxruntime-gpu; it runs on the CPU too)"
        if why is None and device.startswith("cuda") and "CUDAExecutionProvider" not in _available_providers():
            why = "this onnxruntime has no CUDA provider (install onnxruntime-gpu with CUDA 13 and cuDNN 9)"
        return why

    @classmethod
    def compare_variants(cls, device: str) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
        why = cls.unavailable("cpu")
        if why:
            return [], {cls.backend: why}
        run = [(f"{cls.title} {p}", p, "cpu") for p in cls.precisions]  # fp8: its numerics (see timed_precisions)
        if not device.startswith("cuda"):
            return run, {}
        why = cls.unavailable(device)
        if why:
            return run, {f"{cls.title} cuda": why}
        return run + [(f"{cls.title} cuda {p}", p, device) for p in ("fp32", "fp16")], {}

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        return distribution_versions("onnxruntime-gpu", "onnxruntime")

    def with_probes(self) -> "OnnxRuntimeRuntime":
        return OnnxRuntimeRuntime(self.source, device=self.device, provider=self.provider, probes=True)

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        precision: str | None = None,
        provider: str | None = None,
        trt_cache_dir: str | os.PathLike | None = None,
        threads: int = 0,
        probes: bool = False,
    ):
        ort = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        if provider is not None and provider not in PROVIDERS:
            raise ConfigError(f"provider must be one of {PROVIDERS}, got {provider!r}")
        if device == "auto" and provider is None:
            device = resolve_device("auto") if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
        else:
            device = resolve_device("cuda" if device == "auto" else device)
        provider = provider or ("cpu" if device == "cpu" else "cuda")
        if (provider == "cpu") != (device == "cpu"):
            raise ConfigError(f"provider {provider!r} does not run on device {device!r}")

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: the CPU fallback warnings are handled below
        providers = self._providers(ort, provider, device_index(device), precision, trt_cache_dir)
        self.optimization = "all"
        source: str | bytes = str(path)
        probe_names: tuple[str, ...] = ()
        if probes:
            source, probe_names = with_probe_outputs(path)
        try:
            try:
                session = ort.InferenceSession(source, options, providers=providers)
            except Exception as exc:
                if "float8" not in str(exc):
                    raise
                # An fp8 Q/DQ graph: ONNX Runtime's (extended) rewrite of DequantizeLinear -> MatMul into
                # MatMulIntegerToFloat also takes float8 inputs, for which it has no kernel (1.31). The basic
                # level leaves the Q/DQ as they are: fp8 rounding, fp32 products, the numerics to check.
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                session = ort.InferenceSession(source, options, providers=providers)
                self.optimization = "basic (float8 Q/DQ)"
        except Exception as exc:  # pybind raises InvalidProtobuf / InvalidGraph / Fail / NoSuchFile, all plain Exceptions
            message = first_line(exc)
            raise ModelFileError(f"{path}: ONNX Runtime cannot load it ({message})") from exc
        active = session.get_providers()[0]
        if active != _PROVIDER_NAMES[provider]:
            raise BackendUnavailableError(
                f"ONNX Runtime could not start the {_PROVIDER_NAMES[provider]} (it fell back to {active}); "
                f"available here: {', '.join(ort.get_available_providers())}"
            )

        metadata = DeployMetadata.from_props(session.get_modelmeta().custom_metadata_map, source=str(path))
        _check_session_matches(session, metadata, path)
        file_precision = metadata.precision
        if precision is not None and precision != file_precision and not (provider == "tensorrt" and precision == "fp16"):
            raise ConfigError(
                f"{path} is an {file_precision} graph; precision {precision!r} needs a file exported with "
                f"precision={precision} (or provider='tensorrt' for fp16 engines)"
            )
        self.session = session
        self._session_setup = (options, providers)
        self._parts: StepParts | None = None
        self.metadata = metadata
        self.provider = provider
        self.probe_names = probe_names
        self._output_name = metadata.output_name
        super().__init__(
            config=metadata.config, preprocessor=metadata.preprocessor, input_spec=metadata.input,
            precision=precision or file_precision, device=device, source=str(path),
        )
        self.calibrated_range = metadata.calibrated_range
        self.merge_tokens = metadata.merge_tokens

    @staticmethod
    def _providers(ort, provider: str, index: int, precision: str | None, trt_cache_dir) -> list:
        if provider == "cpu":
            return ["CPUExecutionProvider"]
        if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels torch brings, if present
            ort.preload_dlls()
        cuda = ("CUDAExecutionProvider", {"device_id": index})
        if provider == "cuda":
            return [cuda, "CPUExecutionProvider"]
        trt_options: dict[str, Any] = {"device_id": index, "trt_fp16_enable": precision == "fp16"}
        if trt_cache_dir is not None:
            Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
            trt_options.update(
                trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir),
                trt_timing_cache_enable=True, trt_timing_cache_path=str(trt_cache_dir),
            )
        return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]

    def _run(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._session_run([self._output_name], pixel_values)[0]

    def _run_probes(self, pixel_values: np.ndarray):
        values = self._session_run([self._output_name, *self.probe_names], pixel_values)
        return values[0], dict(zip(self.probe_names, values[1:]))

    def _session_run(self, outputs: list[str], pixel_values: np.ndarray) -> list:
        """The session's run; a kernel the provider lacks for this file (pybind's plain exceptions) is one line."""
        try:
            return self.session.run(outputs, {self.input_spec.name: pixel_values})
        except Exception as exc:  # noqa: BLE001  onnxruntime raises RuntimeException, Fail, ... all plain Exceptions
            raise ModelFileError(f"{self.source}: ONNX Runtime could not run it ({first_line(exc)})") from exc

    def _close(self) -> None:
        self.session = None
        self._parts = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "provider": self.provider, "graph_optimization": self.optimization}

    def step_parts(self) -> StepParts | None:
        """Model 2's ``model.steps.onnx`` and ``model.windows.onnx`` beside this file (``vivit-export`` writes them
        for Model 2 with separate positions), in sessions like this one's; None where there are none."""
        from vivit_deploy.artifacts.step_parts import reuses_steps

        self._ensure_open()
        if self._parts is None and reuses_steps(self.config):
            self._parts = _OrtStepParts.load(self)
        return self._parts


def _check_session_matches(session, metadata: DeployMetadata, path: Path) -> None:
    """The graph's input and output must be what its metadata says (catches files edited after export)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    spec = metadata.input
    if len(inputs) != 1 or inputs[0].name != spec.name or inputs[0].type != _ELEM_FLOAT:
        got = [(i.name, i.type) for i in inputs]
        raise ModelFileError(f"{path}: graph inputs {got} do not match its metadata ({spec.name!r}, float32)")
    dims = list(inputs[0].shape)
    if len(dims) != 5 or tuple(dims[1:]) != spec.frame_shape:
        raise ModelFileError(f"{path}: graph input shape {dims} does not match its metadata (batch, {spec.frame_shape})")
    names = [o.name for o in outputs]
    if metadata.output_name not in names:
        raise ModelFileError(f"{path}: graph has no output {metadata.output_name!r} (outputs: {names})")


def with_probe_outputs(path: Path) -> tuple[bytes, tuple[str, ...]]:
    """The file's graph with its probe points (``vivit_deploy/model/probes.py``) as extra outputs, serialized, and their
    names in graph order. A file without any (not written by this vivit-export) is a clear error."""
    import onnx

    from vivit_deploy.artifacts.metadata import load_onnx_graph

    model = load_onnx_graph(path)
    names = file_probe_names(model, path)
    known = {v.name: v for v in model.graph.value_info}
    if any(name not in known for name in names):
        known = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for name in names:
        value = onnx.ValueInfoProto()
        if name in known:
            value.CopyFrom(known[name])
        else:
            value = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        model.graph.output.append(value)
    return model.SerializeToString(), names


class _OrtStepParts(StepParts):
    """The part files in ONNX Runtime sessions with the whole model's options and providers."""

    def __init__(self, config, max_windows, steps_session, windows_session):
        super().__init__(config, max_windows)
        self.steps_session, self.windows_session = steps_session, windows_session

    @classmethod
    def load(cls, runtime: OnnxRuntimeRuntime) -> "_OrtStepParts | None":
        from vivit_deploy.artifacts.step_parts import OWNER_KEY, load_parts

        ort = import_onnxruntime()
        options, providers = runtime._session_setup

        def open_part(path: Path):
            try:
                session = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as exc:  # pybind's plain Exceptions, as for the whole model
                message = first_line(exc)
                raise ModelFileError(f"{path}: ONNX Runtime cannot load it ({message})") from exc
            return session, session.get_modelmeta().custom_metadata_map.get(OWNER_KEY)

        sessions = load_parts(runtime.source, open_part)
        return None if sessions is None else cls(runtime.config, runtime.input_spec.max_batch, *sessions)

    def _encode(self, steps: np.ndarray) -> np.ndarray:
        from vivit_deploy.artifacts.step_parts import STEPS_INPUT

        return self.steps_session.run(None, {STEPS_INPUT: steps})[0]

    def _classify(self, tokens: np.ndarray) -> np.ndarray:
        from vivit_deploy.artifacts.step_parts import WINDOWS_INPUT

        return self.windows_session.run(None, {WINDOWS_INPUT: tokens})[0]


def _available_providers() -> list[str]:
    return import_onnxruntime().get_available_providers()


def matmul_session(n: int):
    """A session of one n x n float32 matrix product on the CPU provider: ONNX Runtime's own product, for a
    benchmark's ceiling."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "AB"],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)  # ORT reads IR <= 13
    return cpu_session(model)
