"""OpenVINO backend: a ``vivit-export`` file (fp32, fp16 or int8 Q/DQ) on the CPU, in an explicit precision.

OpenVINO reads the ONNX file itself (no conversion step). Its CPU plugin computes in bf16 by default
on CPUs that have bf16 units (AMX, AVX512-BF16), silently; this runtime always sets
``INFERENCE_PRECISION_HINT``, so what runs is what was asked for: ``precision="fp32"`` (the default)
or ``"bf16"``. An int8 file runs its Q/DQ products in int8 and the rest in that precision; its
``precision`` reads "int8" (rest in fp32) or "int8-bf16". Labels, preprocessing and the batch range come
from the file's metadata, as for ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vivit_deploy.errors import BackendUnavailableError, ConfigError, ModelFileError, first_line
from vivit_deploy.artifacts.metadata import QUANTIZED_PRECISIONS, read_onnx_metadata
from vivit_deploy.runtimes.base import Runtime, StepParts, distribution_versions, file_probe_names, register_backend

HINTS = {"fp32": "f32", "bf16": "bf16"}  # our compute precision -> OpenVINO's INFERENCE_PRECISION_HINT


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError("OpenVINO is not installed: pip install 'vivit-deploy[openvino]'") from None
    return openvino


def openvino_precision(file_precision: str, compute: str) -> str:
    """What a file of ``file_precision`` computes in with OpenVINO set to ``compute`` (fp32 or bf16)."""
    if file_precision in QUANTIZED_PRECISIONS:  # Q/DQ products in the file's type, the rest in fp32 or bf16
        return file_precision if compute == "fp32" else f"{file_precision}-bf16"
    if file_precision == "fp16" and compute == "fp32":
        return "fp16"  # fp16 weights and casts, computed in fp32
    return compute


@register_backend("openvino")
class OpenVinoRuntime(Runtime):
    """An OpenVINO ``CompiledModel`` on the CPU; each thread gets its own infer request.

    ``precision``: "fp32" (default) or "bf16" for what is not int8 (the whole graph for fp32/fp16
    files); also accepted: the name this runtime reports for a file ("int8", "int8-bf16", "fp16").
    ``threads``: OpenVINO's inference threads (0: its choice). ``cache_dir``: OpenVINO's compiled-model
    cache (faster loads next time).
    """

    thread_safe = True  # one compiled model, one infer request per thread
    artifact = "onnx"
    precisions = ("fp32", "bf16", "int8", "int8-bf16")  # int8-bf16: an int8 file with the rest in bf16

    @classmethod
    def unavailable(cls, device: str = "cpu", precision: str | None = None) -> str | None:
        why = super().unavailable(device, precision)
        if why is None and importlib.util.find_spec("openvino") is None:
            why = "OpenVINO is not installed (pip install 'vivit-deploy[openvino]')"
        if why is None and device != "cpu":
            why = f"runs on the CPU, not {device}"
        if why is None and (precision or "").endswith("bf16"):
            from vivit_deploy.runtimes.cpu import cpu_has_bf16

            if not cpu_has_bf16():
                why = "this CPU has no bf16 units (AVX512-BF16 or AMX)"
        return why

    @classmethod
    def file_precision(cls, precision: str) -> str:
        return "int8" if precision.startswith("int8") else "fp32"  # OpenVINO computes an fp32 file in bf16 itself

    @classmethod
    def load_precision(cls, precision: str) -> str | None:
        return "bf16" if precision.endswith("bf16") else "fp32"

    @classmethod
    def reported_precision(cls, file_precision: str | None, asked: str | None) -> str:
        return reported_precision(file_precision or "fp32", asked)

    @classmethod
    def compare_variants(cls, device: str) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
        why = cls.unavailable("cpu")
        if why:
            return [], {cls.backend: why}
        run = [(f"{cls.title} {p}", p, "cpu") for p in ("fp32", "int8")]
        why = cls.unavailable("cpu", "bf16")
        if why:
            return run, {f"{cls.title} bf16": why}
        return run + [(f"{cls.title} {p}", p, "cpu") for p in ("bf16", "int8-bf16")], {}

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        return distribution_versions("openvino")

    def with_probes(self) -> "OpenVinoRuntime":
        return OpenVinoRuntime(self.source, precision=self.compute_precision, probes=True)

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        precision: str | None = None,
        threads: int = 0,
        cache_dir: str | os.PathLike | None = None,
        probes: bool = False,
    ):
        ov = import_openvino()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        if device not in ("auto", "cpu"):
            raise ConfigError(f"the openvino backend runs on the CPU here, not {device!r}")
        metadata = read_onnx_metadata(path)
        compute = _compute_precision(precision, metadata.precision, path)
        core = ov.Core()
        if compute == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise BackendUnavailableError(
                f"this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no bf16 support in OpenVINO "
                "(it needs AVX512-BF16 or AMX); use precision fp32"
            )
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[compute], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        probe_names: tuple[str, ...] = ()
        try:
            model = core.read_model(str(path))
            if probes:
                probe_names = _add_probe_outputs(model, path)
            compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            message = first_line(exc)
            raise ModelFileError(f"{path}: OpenVINO cannot load it ({message})") from exc
        got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if got != HINTS[compute]:  # never run another precision than the one asked for
            raise BackendUnavailableError(f"OpenVINO compiled {path} for {got}, not the {compute} asked for")
        _check_io(compiled, metadata, path)
        self.compiled = compiled
        self._compile_setup = (core, config)
        self._parts: StepParts | None = None
        self.metadata = metadata
        self.compute_precision = compute
        self._input = metadata.input.name
        self._output = compiled.output(metadata.output_name)
        self.probe_names = probe_names
        self._probe_outputs = [compiled.output(name) for name in probe_names]
        self._local = threading.local()
        self.version = ov.__version__
        super().__init__(
            config=metadata.config, preprocessor=metadata.preprocessor, input_spec=metadata.input,
            precision=openvino_precision(metadata.precision, compute), device="cpu", source=str(path),
        )
        self.calibrated_range = metadata.calibrated_range
        self.merge_tokens = metadata.merge_tokens

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def _run(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._request().infer({self._input: pixel_values})[self._output]

    def _run_probes(self, pixel_values: np.ndarray):
        results = self._request().infer({self._input: pixel_values})
        return results[self._output], {name: results[port] for name, port in zip(self.probe_names, self._probe_outputs)}

    def _close(self) -> None:
        self.compiled = None
        self._parts = None
        self._local = threading.local()

    def step_parts(self) -> StepParts | None:
        """Model 2's ``model.steps.onnx`` and ``model.windows.onnx`` beside this file, compiled as this one (same
        precision hint and threads); None where there are none or the model cannot reuse its steps."""
        from vivit_deploy.artifacts.step_parts import reuses_steps

        self._ensure_open()
        if self._parts is None and reuses_steps(self.config):
            self._parts = _OpenVinoStepParts.load(self)
        return self._parts

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "openvino": self.version, "inference_precision": self.compute_precision}


def reported_precision(file_precision: str, asked: str | None, where: str = "the file") -> str:
    """The precision this runtime reports for a file of ``file_precision`` loaded with ``precision=asked``,
    without loading it (an unknown ``asked`` is the same ConfigError the runtime raises)."""
    return openvino_precision(file_precision, _compute_precision(asked, file_precision, where))


def _compute_precision(asked: str | None, file_precision: str, path: Path | str) -> str:
    if asked is None:
        return "fp32"
    if asked in HINTS:
        return asked
    for compute in HINTS:  # the reported name of a file/precision pair, e.g. "int8-bf16"
        if openvino_precision(file_precision, compute) == asked:
            return compute
    raise ConfigError(f"{path} is an {file_precision} graph; OpenVINO runs it in fp32 or bf16"
                      f" ({', '.join(sorted({openvino_precision(file_precision, c) for c in HINTS}))}), not {asked!r}")


def _check_io(compiled, metadata, path: Path) -> None:
    inputs = [sorted(i.get_names()) for i in compiled.inputs]  # a tensor can carry several names (an fp16 graph's
    outputs = [sorted(o.get_names()) for o in compiled.outputs]  # input is also its first Cast's)
    if len(inputs) != 1 or metadata.input.name not in inputs[0] or not any(metadata.output_name in o for o in outputs):
        raise ModelFileError(f"{path}: graph inputs {inputs} / outputs {outputs} do not match its metadata "
                             f"({metadata.input.name!r} -> {metadata.output_name!r})")
    shape = compiled.input(0).get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in shape]
    if len(dims) != 5 or tuple(dims[1:]) != metadata.input.frame_shape:
        raise ModelFileError(f"{path}: graph input shape {dims} does not match its metadata (batch, {metadata.input.frame_shape})")


def _add_probe_outputs(model, path: Path) -> tuple[str, ...]:
    """Add the file's probe points (``vivit_deploy/model/probes.py``) to an OpenVINO model's outputs; their names."""
    from vivit_deploy.artifacts.metadata import load_onnx_graph

    names = file_probe_names(load_onnx_graph(path), path)
    model.add_outputs(list(names))
    return names


class _OpenVinoStepParts(StepParts):
    """The part files compiled with the whole model's settings; an infer request per thread, as the runtime."""

    def __init__(self, config, max_windows, steps_model, windows_model):
        super().__init__(config, max_windows)
        self.models = {"steps": steps_model, "windows": windows_model}
        self._local = threading.local()

    @classmethod
    def load(cls, runtime: OpenVinoRuntime) -> "_OpenVinoStepParts | None":
        from vivit_deploy.artifacts.step_parts import OWNER_KEY, load_parts

        core, config = runtime._compile_setup

        def open_part(path: Path):
            try:
                model = core.read_model(str(path))
                # OpenVINO keeps an ONNX file's metadata_props under rt_info "framework"
                owner = model.get_rt_info(["framework", OWNER_KEY]).astype(str) \
                    if model.has_rt_info(["framework", OWNER_KEY]) else None
                return core.compile_model(model, "CPU", config), owner
            except RuntimeError as exc:
                message = first_line(exc)
                raise ModelFileError(f"{path}: OpenVINO cannot load it ({message})") from exc

        compiled = load_parts(runtime.source, open_part)
        return None if compiled is None else cls(runtime.config, runtime.input_spec.max_batch, *compiled)

    def _infer(self, part: str, values: np.ndarray) -> np.ndarray:
        requests = self._local.__dict__.setdefault("requests", {})
        if part not in requests:
            requests[part] = self.models[part].create_infer_request()
        return requests[part].infer({0: values})[0]

    def _encode(self, steps: np.ndarray) -> np.ndarray:
        return self._infer("steps", steps)

    def _classify(self, tokens: np.ndarray) -> np.ndarray:
        return self._infer("windows", tokens)
