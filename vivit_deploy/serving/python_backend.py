"""The models Triton's python backend runs for a repository from `vivit-deploy triton-repo`.

Each ``model.py`` the repository holds imports one of these as ``TritonPythonModel``:
- :class:`ClassifierModel` (``--platform python``): one of our runtimes (ONNX Runtime, OpenVINO,
  TensorRT, PyTorch) over the file in the version directory, ``pixel_values -> logits``;
- :class:`PreprocessModel`: uint8 RGB frames ``(T, H, W, 3)`` -> ``pixel_values`` with the shared
  ``VideoPreprocessor``, the first step of the frames ensemble;
- :class:`VideoModel` (``--video``): an encoded video file (one ``TYPE_BYTES`` element) -> the video's logits: read
  from memory by the reader every other path uses, preprocessed as it is decoded, and run by the repository's model
  through business-logic scripting (so that model keeps its backend and its dynamic batching).

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


class _PythonModel(ABC):
    """What every model here shares: the settings from its config, read once in ``initialize``."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        from vivit_deploy.runtimes.triton_runtime import config_parameters

        self.pb = pb_utils
        self.parameters = config_parameters(json.loads(args["model_config"]))
        self.model_dir = Path(args["model_repository"]) / args["model_version"]
        self.setup(args)

    @abstractmethod
    def setup(self, args: dict[str, Any]) -> None:
        """Load what the model needs."""

    def finalize(self) -> None:
        pass


class _BatchedModel(_PythonModel):
    """The two array models: ``execute`` over a batch of requests (``setup`` sets ``input_name`` and ``output_name``)."""

    input_name: str
    output_name: str

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


class VideoModel(_PythonModel):
    """``video`` (one ``TYPE_BYTES`` element: an encoded file) -> ``logits`` (num_labels,): the mean logits of the
    video's clips, as ``predict`` ranks them. Optional inputs: ``num_clips``, ``sampling`` ("uniform" or "stride"),
    ``frame_sample_rate``, ``autorotate``. Each request is read on its own: a file that is too large, unreadable,
    damaged beyond use or hostile fails its own request with the reader's one-line reason, and the others go on."""

    def setup(self, args: dict[str, Any]) -> None:
        from vivit_deploy.model.registry import config_from_dict
        from vivit_deploy.video.opening import ReadOptions
        from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor

        p = self.parameters
        self.config = config_from_dict(json.loads(p["vivit_deploy.config"]))
        self.preprocessor = VideoPreprocessor(PreprocessorConfig.from_dict(json.loads(p["vivit_deploy.preprocessor"])))
        spec = json.loads(p["vivit_deploy.input"])
        self.input_name, self.max_batch = spec["name"], int(spec.get("max_batch") or 1)
        self.output_name = p.get("vivit_deploy.output_name", "logits")
        self.model_step = p["vivit_deploy.video.model_step"]
        self.max_bytes = int(p["vivit_deploy.video.max_bytes"])
        self.max_clips = int(p.get("vivit_deploy.video.max_clips", "16"))
        self.threads = int(p.get("vivit_deploy.video.threads", "0"))
        if self.threads == 0:  # FFmpeg's decoding threads: the cores shared among the instances that decode at once
            from vivit_deploy.video.decoding import available_cores

            groups = json.loads(args["model_config"]).get("instance_group") or [{}]
            instances = sum(int(g.get("count", 1)) for g in groups)
            self.threads = max(1, available_cores() // max(1, instances))
        self.max_pixels = int(p["vivit_deploy.video.max_pixels"])
        ReadOptions(max_pixels=self.max_pixels)  # a bad limit fails the model's loading, not each request

    def execute(self, requests: list) -> list:
        from vivit_deploy.runtimes.triton_runtime import DAMAGED_OUTPUT, READ_NOTES_OUTPUT

        pb = self.pb
        responses = []
        for request in requests:
            try:
                logits, read = self.classify(request)
            except Exception as exc:  # noqa: BLE001  this request fails alone, with the reason
                responses.append(pb.InferenceResponse(error=pb.TritonError(_reason(exc))))
                continue
            responses.append(pb.InferenceResponse(output_tensors=[
                pb.Tensor(self.output_name, logits), pb.Tensor(DAMAGED_OUTPUT, np.array([read.replaced], np.int32)),
                pb.Tensor(READ_NOTES_OUTPUT, np.array([read.notes().encode("utf-8")], dtype=np.object_))]))
        return responses

    def _option(self, request, name: str, default):
        tensor = self.pb.get_input_tensor_by_name(request, name)
        if tensor is None:
            return default
        values = tensor.as_numpy().reshape(-1)
        if len(values) != 1:
            raise ValueError(f"{name} must be one value, got {len(values)}")
        value = values[0]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value.item()

    def classify(self, request) -> tuple[np.ndarray, Any]:
        """The video's mean logits and what its reading found (the ``Clips``: frames replaced, truncation, as
        ``predict`` reports them)."""
        from vivit_deploy.errors import ConfigError, InputShapeError
        from vivit_deploy.runtimes.triton_runtime import VIDEO_INPUT
        from vivit_deploy.video.opening import ReadOptions, VideoBytes
        from vivit_deploy.video.reading import SAMPLINGS, decode_clips

        tensor = self.pb.get_input_tensor_by_name(request, VIDEO_INPUT)
        if tensor is None:
            raise InputShapeError(f"no input {VIDEO_INPUT!r} (the encoded video file, one BYTES element)")
        elements = tensor.as_numpy().reshape(-1)
        if len(elements) != 1:
            raise InputShapeError(f"{VIDEO_INPUT!r} must hold one file, got {len(elements)} elements")
        data = elements[0]
        if not isinstance(data, bytes):
            raise InputShapeError(f"{VIDEO_INPUT!r} must be BYTES (the file's contents), got {type(data).__name__}")
        # how errors name the file: the id the client gave the request (our clients give the file's name)
        request_id = request.request_id() or f"the video sent ({len(data):,} bytes)"
        if len(data) > self.max_bytes:  # refused before anything reads it
            raise ConfigError(f"{request_id}: the video is {len(data):,} bytes, over this model's limit of "
                              f"{self.max_bytes:,} (the repository's max_video_bytes=)")
        num_clips = int(self._option(request, "num_clips", 1))
        if not 1 <= num_clips <= self.max_clips:
            raise ConfigError(f"num_clips must be 1..{self.max_clips}, got {num_clips}")
        sampling = self._option(request, "sampling", "uniform")
        if sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        rate = int(self._option(request, "frame_sample_rate", 4))
        if rate < 1:
            raise ConfigError(f"frame_sample_rate must be at least 1, got {rate}")
        options = ReadOptions(autorotate=bool(self._option(request, "autorotate", True)), max_pixels=self.max_pixels)
        # each frame preprocessed as it is decoded: memory follows the clips, not the file's resolution or length
        read = decode_clips(VideoBytes(data, request_id), self.config.num_frames, num_clips=num_clips,
                            sampling=sampling, frame_sample_rate=rate, threads=self.threads, options=options,
                            transform=self.preprocessor.frame)
        del data, elements, tensor
        clips = read.array
        logits = np.concatenate([self._run(clips[i:i + self.max_batch]) for i in range(0, len(clips), self.max_batch)])
        return logits.mean(axis=0).astype(np.float32), read

    def _run(self, pixel_values: np.ndarray) -> np.ndarray:
        """The repository's model on a batch of clips, through business-logic scripting."""
        pb = self.pb
        request = pb.InferenceRequest(model_name=self.model_step, requested_output_names=[self.output_name],
                                      inputs=[pb.Tensor(self.input_name, np.ascontiguousarray(pixel_values))])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"the model step {self.model_step!r} failed: {response.error().message()}")
        return pb.get_output_tensor_by_name(response, self.output_name).as_numpy()


def _reason(exc: BaseException) -> str:
    """One line for a failed request: our errors as they are (they name the file and the reason), others typed."""
    from vivit_deploy.errors import VivitDeployError

    text = " ".join(str(exc).split())
    return text if isinstance(exc, VivitDeployError) and text else f"{type(exc).__name__}: {text}"
