"""TensorRT backend: a serialized engine from ``vivit-deploy build-engine``, run on a CUDA stream.

Device buffers are torch CUDA tensors (torch is already a dependency, so no pycuda): numpy input is
copied in, a torch CUDA tensor is used where it lies (``run_torch``). Written against TensorRT's
documented runtime API (10.x and 11.x): ``Runtime.deserialize_cuda_engine``,
``create_execution_context``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``.
TensorRT cannot be installed where vivit_deploy is developed: this backend has not run there, and
its tests skip unless TensorRT and a GPU are present (the sidecar and input checks run everywhere).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vivit_deploy.errors import ConfigError, InputShapeError, ModelFileError, VivitDeployError
from vivit_deploy.export.trt_build import check_sidecar, gpu_identity, import_tensorrt, read_sidecar
from vivit_deploy.metadata import DeployMetadata
from vivit_deploy.runtimes.base import Runtime, device_index, register_backend, resolve_device


def engine_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], DeployMetadata]:
    """The sidecar of an engine and the model metadata in it (input spec with the engine's batch profile)."""
    sidecar = read_sidecar(path)
    return sidecar, DeployMetadata.from_props(sidecar["metadata"], source=f"{path} sidecar")


@register_backend("tensorrt", suffixes=(".engine", ".plan"))
class TensorRTRuntime(Runtime):
    """One engine, one execution context, one CUDA stream; ``run`` calls are serialised (one context)."""

    thread_safe = False

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", precision: str | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such TensorRT engine")
        sidecar, metadata = engine_metadata(path)
        if precision is not None and precision != sidecar["precision"]:
            raise ConfigError(f"{path} is an {sidecar['precision']} engine; build another for {precision}")
        trt = import_tensorrt()
        import torch

        device = resolve_device("cuda" if device == "auto" else device)
        if device == "cpu":
            raise ConfigError("TensorRT engines run on a CUDA device, not the CPU")
        index = device_index(device)
        name, capability = gpu_identity(index)
        check_sidecar(sidecar, tensorrt_version=trt.__version__, gpu_name=name, compute_capability=capability,
                      engine=str(path))

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(self._logger)
        with torch.cuda.device(index):
            engine = self._trt_runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise ModelFileError(f"{path}: TensorRT {trt.__version__} could not deserialize it (see its log above): "
                                     "corrupt, or built by another TensorRT version or for another GPU")
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
        self.engine, self.context, self.sidecar = engine, context, sidecar
        self._torch_device = torch.device(device if ":" in device else f"cuda:{index}")
        self._output_name = metadata.output_name
        super().__init__(config=metadata.config, preprocessor=metadata.preprocessor, input_spec=spec,
                         precision=sidecar["precision"], device=str(self._torch_device), source=str(path))

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
            raise VivitDeployError(f"TensorRT failed to run {self.source} (see its log above)")
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
        self.context = None
        self.engine = None
        self._trt_runtime = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tensorrt": self.sidecar["tensorrt"], "gpu": self.sidecar["gpu"]}
