"""TensorRT backend: an engine from ``vivit-deploy build-engine``, run on a CUDA stream, by the edition that built it.

The sidecar says which edition (TensorRT 10/11 or TensorRT for RTX, ``artifacts.engines.EDITIONS``) and
version built the engine and for which GPU or compute capabilities; it is read and checked before the
engine bytes are handed to that edition, so an engine never reaches the wrong library, version or GPU.
TensorRT for RTX also answers ``Runtime.get_engine_validity`` first, so an unsupported GPU, another
version or an old driver is one error naming NVIDIA's reason; its kernels are compiled on the GPU when
the execution context is created, kept in a runtime cache file next to the engine (``runtime_cache``)
so that the next load skips the compilation, and ``cuda_graphs=True`` captures each shape's launches
as one CUDA graph (``CudaGraphStrategy.WHOLE_GRAPH_CAPTURE``).

Device buffers are torch CUDA tensors (torch is already a dependency, so no pycuda): numpy input is
copied in, a torch CUDA tensor is used where it lies (``run_torch``). Written against NVIDIA's
documented runtime API (``deserialize_cuda_engine``, ``create_execution_context``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``; ``IRuntimeConfig`` for TensorRT for RTX). No GPU that
either edition runs on has been available where vivit_deploy is developed: this backend has not run
an engine. What runs everywhere: the sidecar checks, and with TensorRT for RTX installed and no GPU,
the refusal that says a CUDA GPU is needed (``tests/runtimes/test_trt_runtime.py``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vivit_deploy.artifacts.engines import check_sidecar, edition, engine_metadata, gpu_identity, import_edition
from vivit_deploy.errors import ConfigError, InputShapeError, ModelFileError, VivitDeployError
from vivit_deploy.runtimes.base import Runtime, device_index, register_backend, resolve_device

RUNTIME_CACHE_SUFFIX = ".runtime-cache"


def runtime_cache_path(engine: str | os.PathLike) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + RUNTIME_CACHE_SUFFIX)


def validity_reasons(trt, diagnostics: int) -> list[str]:
    """The names of the ``EngineInvalidityDiagnostics`` flags set in ``diagnostics`` (UNSUPPORTED_CC, ...)."""
    members = trt.EngineInvalidityDiagnostics.__members__.values()
    return [m.name for m in members if int(m.value) and diagnostics & int(m.value)]


_VALIDITY_HINTS = {
    "UNSUPPORTED_CC": "this GPU's compute capability is not one the engine was built for",
    "VERSION_MISMATCH": "another TensorRT for RTX version built it: rebuild it with this one",
    "OLD_CUDA_DRIVER": "the NVIDIA driver is older than this TensorRT for RTX needs: update it",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is older than this TensorRT for RTX needs",
    "INSUFFICIENT_GPU_MEMORY": "the GPU has not enough free memory for it",
    "MALFORMED_ENGINE": "the file is not a whole engine",
    "CUDA_ERROR": "CUDA reported an error while checking it",
}


@register_backend("tensorrt", suffixes=(".engine", ".plan"))
class TensorRTRuntime(Runtime):
    """One engine, one execution context, one CUDA stream; ``run`` calls are serialised (one context).

    ``runtime_cache`` (TensorRT for RTX): True keeps the kernels compiled at load in
    ``ENGINE.runtime-cache`` next to the engine, a path puts them there, False keeps none; the cache is
    valid for the same GPU model, TensorRT for RTX version and driver. ``cuda_graphs`` (TensorRT for RTX):
    capture each input shape's kernel launches as one CUDA graph, replayed on the next call.
    """

    thread_safe = False
    artifact = "engine"
    precisions = ("fp32", "fp16", "int8", "fp8")

    @classmethod
    def unavailable(cls, device: str = "cpu", precision: str | None = None) -> str | None:
        """Whether an engine can be built and run for ``device`` here: TensorRT 10/11 on any CUDA GPU, or TensorRT for
        RTX on a GPU it targets."""
        from vivit_deploy.artifacts.engines import EDITIONS, installed

        why = super().unavailable(device, precision)
        if why is not None:
            return why
        if not device.startswith("cuda"):
            return "needs a CUDA GPU (device cuda)"
        if installed("tensorrt"):
            return None
        if not installed("rtx"):
            return "neither tensorrt nor tensorrt_rtx is installed (see docs/tensorrt.md)"
        import torch  # the toolkit's own dependency: which GPU is here

        if not torch.cuda.is_available():
            return "needs a CUDA GPU, and PyTorch sees none here"
        name, capability = gpu_identity(device_index(device))
        if capability not in EDITIONS["rtx"].targets:
            return f"TensorRT 10/11 is not installed, and TensorRT for RTX does not target {name} (compute {capability})"
        return None

    @classmethod
    def compare_variants(cls, device: str) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
        why = cls.unavailable(device)
        if why:
            return [], {cls.backend: why}
        return [(f"{cls.title} {p}", p, device) for p in ("fp16", "int8", "fp8")], {}

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        from vivit_deploy.artifacts.engines import EDITIONS, installed

        return {ed.module: import_edition(ed.name).__version__ for ed in EDITIONS.values() if installed(ed.name)}

    def device_memory_mb(self) -> float | None:
        size = getattr(self.engine, "device_memory_size_v2", None)
        return None if size is None else size / 2**20

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", precision: str | None = None,
                 runtime_cache: bool | str | os.PathLike = True, cuda_graphs: bool = False):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such TensorRT engine")
        sidecar, metadata = engine_metadata(path)
        if precision is not None and precision != sidecar["precision"]:
            raise ConfigError(f"{path} is an {sidecar['precision']} engine; build another for {precision}")
        ed = edition(sidecar["edition"])
        if not ed.builds_without_gpu and (cuda_graphs or runtime_cache not in (True, False)):
            raise ConfigError(f"runtime_cache and cuda_graphs are TensorRT for RTX options; {path} is a {ed.title} engine")
        trt = import_edition(ed.name)
        import torch

        device = resolve_device("cuda" if device == "auto" else device)
        if device == "cpu":
            raise ConfigError(f"{ed.title} engines run on a CUDA GPU, not the CPU")
        index = device_index(device)
        name, capability = gpu_identity(index, f"{path} is a {ed.title} engine: it")
        check_sidecar(sidecar, edition_name=ed.name, tensorrt_version=trt.__version__, gpu_name=name,
                      compute_capability=capability, engine=str(path))

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(self._logger)
        engine_bytes = path.read_bytes()
        self._cache_file: Path | None = None
        self._cache = None
        with torch.cuda.device(index):
            if ed.builds_without_gpu:
                self._check_validity(trt, engine_bytes, path, name, capability)
            engine = self._trt_runtime.deserialize_cuda_engine(engine_bytes)
            if engine is None:
                raise ModelFileError(f"{path}: {ed.title} {trt.__version__} could not deserialize it (see its log above): "
                                     "corrupt, or built by another version or for another GPU")
            if ed.builds_without_gpu:
                context = engine.create_execution_context(self._runtime_config(trt, engine, path, runtime_cache, cuda_graphs))
            else:
                context = engine.create_execution_context()
            self._stream = torch.cuda.Stream(device=index)
        spec = metadata.input
        names = {engine.get_tensor_name(i): engine.get_tensor_mode(engine.get_tensor_name(i)) for i in range(engine.num_io_tensors)}
        if names.get(spec.name) != trt.TensorIOMode.INPUT or names.get(metadata.output_name) != trt.TensorIOMode.OUTPUT:
            raise ModelFileError(f"{path}: engine tensors {sorted(names)} do not match its sidecar "
                                 f"({spec.name!r} in, {metadata.output_name!r} out)")
        lowest, _, highest = engine.get_tensor_profile_shape(spec.name, 0)
        if tuple(lowest)[0] != spec.min_batch or tuple(highest)[0] != spec.max_batch:
            raise ModelFileError(f"{path}: engine profile batch {lowest[0]}..{highest[0]} differs from its sidecar {spec.batch_range}")
        self.engine, self.context, self.sidecar, self.edition = engine, context, sidecar, ed
        self.cuda_graphs = cuda_graphs
        self._torch_device = torch.device(device if ":" in device else f"cuda:{index}")
        self._output_name = metadata.output_name
        super().__init__(config=metadata.config, preprocessor=metadata.preprocessor, input_spec=spec,
                         precision=sidecar["precision"], device=str(self._torch_device), source=str(path))
        self.calibrated_range = metadata.calibrated_range
        self.merge_tokens = metadata.merge_tokens

    def _check_validity(self, trt, engine_bytes: bytes, path: Path, gpu: str, capability: str) -> None:
        """TensorRT for RTX's own verdict on whether this GPU, driver and version can run the engine."""
        validity, diagnostics = self._trt_runtime.get_engine_validity(engine_bytes)
        if validity == trt.EngineValidity.VALID:
            return
        reasons = validity_reasons(trt, int(diagnostics))
        explained = "; ".join(f"{r} ({_VALIDITY_HINTS.get(r, 'see NVIDIA docs')})" for r in reasons) or "no reason given"
        if validity == trt.EngineValidity.SUBOPTIMAL:
            warnings.warn(f"{path} runs on {gpu} (compute {capability}), suboptimally: {explained}", stacklevel=3)
            return
        raise ModelFileError(f"{path} cannot run on {gpu} (compute {capability}): TensorRT for RTX "
                             f"{trt.__version__} says {explained}")

    def _runtime_config(self, trt, engine, path: Path, runtime_cache, cuda_graphs: bool):
        config = engine.create_runtime_config()
        if cuda_graphs:
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        if runtime_cache is not False:
            self._cache_file = runtime_cache_path(path) if runtime_cache is True else Path(runtime_cache)
            self._cache = config.create_runtime_cache()
            if self._cache_file.is_file():
                self._cache.deserialize(self._cache_file.read_bytes())
            config.set_runtime_cache(self._cache)
        return config

    def _execute(self, pixel_values):
        """Run a validated CUDA float32 tensor; returns a CUDA float32 tensor of logits."""
        import torch

        batch = pixel_values.shape[0]
        logits = torch.empty((batch, self.num_labels), dtype=torch.float32, device=self._torch_device)
        self._stream.wait_stream(torch.cuda.current_stream(self._torch_device))  # the copy-in is done
        if not self.context.set_input_shape(self.input_spec.name, tuple(pixel_values.shape)):
            raise InputShapeError(f"TensorRT refused input shape {tuple(pixel_values.shape)}")
        self.context.set_tensor_address(self.input_spec.name, pixel_values.data_ptr())
        self.context.set_tensor_address(self._output_name, logits.data_ptr())
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise VivitDeployError(f"{self.edition.title} failed to run {self.source} (see its log above)")
        self._stream.synchronize()
        return logits

    def _run(self, pixel_values: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(pixel_values).to(self._torch_device)
        return self._execute(x).cpu().numpy()

    def run_torch(self, pixel_values):
        """Zero-copy path: a contiguous float32 CUDA tensor on this device in, a CUDA float32 tensor out."""
        import torch

        self._ensure_open()
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.device != self._torch_device:
            raise InputShapeError(f"run_torch takes a torch tensor on {self._torch_device}")
        self.input_spec.check(tuple(pixel_values.shape), str(pixel_values.dtype).replace("torch.", ""))
        with self._lock:
            return self._execute(pixel_values.contiguous())

    def _close(self) -> None:
        if self._cache is not None and self._cache_file is not None:
            from vivit_deploy.files import atomic_write

            data = bytes(self._cache.serialize())
            if data:
                atomic_write(self._cache_file, lambda tmp: Path(tmp).write_bytes(data))
        self.context = None
        self.engine = None
        self._cache = None
        self._trt_runtime = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "edition": self.edition.name, "tensorrt": self.sidecar["tensorrt"],
                "gpu": self.sidecar["gpu"], "targets": self.sidecar.get("targets"), "cuda_graphs": self.cuda_graphs,
                "runtime_cache": None if self._cache_file is None else str(self._cache_file)}
