"""The models Triton's python backend runs for a repository from `vivit-deploy triton-repo`.

Each ``model.py`` the repository holds imports one of these as ``TritonPythonModel``:
- :class:`ClassifierModel` (``--platform python``): one of our runtimes (ONNX Runtime, OpenVINO,
  TensorRT, PyTorch) over the file in the version directory, ``pixel_values -> logits``;
- :class:`PreprocessModel`: uint8 RGB frames ``(T, H, W, 3)`` -> ``pixel_values`` with the shared
  ``VideoPreprocessor``, the first step of the frames ensemble.

Triton hands ``execute`` every request its dynamic batcher gathered; both models run them as one
batch and answer each request with its own slice. A request that does not fit (wrong shape or type)
gets an error response naming the problem, and the other requests of the batch are still answered.
Settings come from the config's ``parameters`` (the keys an exported file's metadata uses).
``triton_python_backend_utils`` exists only inside Triton's stub process; it is imported in
``initialize``, so this module imports anywhere.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np


class _BatchedModel(ABC):
    """What both models share: settings from the config, and ``execute`` over a batch of requests."""

    input_name: str
    output_name: str

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        from vivit_deploy.runtimes.triton_runtime import config_parameters

        self.pb = pb_utils
        self.parameters = config_parameters(json.loads(args["model_config"]))
        self.model_dir = Path(args["model_repository"]) / args["model_version"]
        self.setup(args)

    @abstractmethod
    def setup(self, args: dict[str, Any]) -> None:
        """Load what the model needs; sets ``input_name`` and ``output_name``."""

    @abstractmethod
    def compute(self, batch: np.ndarray) -> np.ndarray:
        """The outputs of a batch of inputs that passed ``check``."""

    @abstractmethod
    def check(self, array: np.ndarray) -> str | None:
        """Why one request's input cannot be computed, or None."""

    def execute(self, requests: list) -> list:
        pb = self.pb
        arrays, problems = [], []
        for request in requests:
            tensor = pb.get_input_tensor_by_name(request, self.input_name)
            array = None if tensor is None else tensor.as_numpy()
            problem = f"no input {self.input_name!r}" if array is None else self.check(array)
            arrays.append(array)
            problems.append(problem)
        groups: dict[tuple, list[int]] = {}  # requests of one shape run as one batch
        for i, problem in enumerate(problems):
            if problem is None:
                groups.setdefault(arrays[i].shape[1:], []).append(i)
        results: dict[int, np.ndarray] = {}
        for members in groups.values():
            try:
                out = self.compute(np.concatenate([arrays[i] for i in members]))
            except Exception as exc:  # noqa: BLE001  every request of the group gets the reason
                for i in members:
                    problems[i] = f"{type(exc).__name__}: {exc}"
                continue
            bounds = np.cumsum([0] + [len(arrays[i]) for i in members])
            results.update({i: out[a:b] for i, a, b in zip(members, bounds[:-1], bounds[1:])})
        responses = []
        for i in range(len(requests)):
            if i in results:
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(self.output_name, results[i])]))
            else:
                responses.append(pb.InferenceResponse(error=pb.TritonError(problems[i])))
        return responses

    def finalize(self) -> None:
        pass


class ClassifierModel(_BatchedModel):
    """``pixel_values`` float32 (B, T, C, H, W) -> ``logits`` float32 (B, num_labels), through a vivit_deploy runtime."""

    def setup(self, args: dict[str, Any]) -> None:
        from vivit_deploy.runtimes import load_runtime

        p = self.parameters
        device = p.get("vivit_deploy.runtime.device") or "cpu"
        if device.startswith("cuda") and args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args.get('model_instance_device_id', 0)}"
        self.runtime = load_runtime(self.model_dir / p["vivit_deploy.runtime.file"], p["vivit_deploy.runtime.backend"],
                                    device=device, precision=p.get("vivit_deploy.runtime.precision") or None)
        self.input_name = self.runtime.input_spec.name
        self.output_name = p.get("vivit_deploy.output_name", "logits")

    def check(self, array: np.ndarray) -> str | None:
        from vivit_deploy.errors import InputShapeError

        try:
            self.runtime.input_spec.check(tuple(array.shape), array.dtype.name)
        except InputShapeError as exc:
            return str(exc)
        return None

    def compute(self, batch: np.ndarray) -> np.ndarray:
        spec = self.runtime.input_spec
        return self.runtime.run_batches(batch, spec.max_batch or len(batch))

    def finalize(self) -> None:
        self.runtime.close()


class PreprocessModel(_BatchedModel):
    """``frames`` uint8 (B, T, H, W, 3) -> ``pixel_values`` float32 (B, T, 3, h, w): the shared preprocessor."""

    def setup(self, args: dict[str, Any]) -> None:
        from vivit_deploy.model.registry import config_from_dict
        from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor
        from vivit_deploy.runtimes.triton_runtime import FRAMES_INPUT

        p = self.parameters
        self.config = config_from_dict(json.loads(p["vivit_deploy.config"]))
        self.preprocessor = VideoPreprocessor(PreprocessorConfig.from_dict(json.loads(p["vivit_deploy.preprocessor"])))
        self.input_name = FRAMES_INPUT
        self.output_name = json.loads(p["vivit_deploy.input"])["name"]

    def check(self, array: np.ndarray) -> str | None:
        frames = self.config.num_frames
        if array.dtype != np.uint8:
            return f"frames must be uint8 RGB, got {array.dtype}"
        if array.ndim != 5 or array.shape[1] != frames or array.shape[-1] != 3:
            return f"frames must be (batch, {frames}, height, width, 3), got {tuple(array.shape)}"
        if min(array.shape[2:4]) < 1:
            return f"empty frames {tuple(array.shape)}"
        return None

    def compute(self, batch: np.ndarray) -> np.ndarray:
        pixel_values = self.preprocessor(batch)
        expected = tuple(self.config.input_shape)
        if pixel_values.shape[1:] != expected:
            raise ValueError(f"these frames preprocess to {pixel_values.shape[1:]}, the model takes {expected}")
        return pixel_values
