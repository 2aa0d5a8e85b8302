"""A model served by Triton Inference Server, as one more runtime: ``load_runtime("triton://host:port/vivit")``.

The runtime reads the model's configuration from the server: labels, preprocessing and batch range come
from the ``parameters`` that `vivit-deploy triton-repo` writes (the same keys as an exported file's
metadata), and the served input and output are checked against them. ``run`` sends preprocessed
float32 clips over HTTP (binary tensors); when the repository has the uint8-frames ensemble,
``run_frames`` sends uint8 frames instead and the server preprocesses them with the same
preprocessor (``VideoClassifier`` uses it). Every error the server or the connection raises becomes a
:class:`TritonError` naming the server and the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from vivit_deploy.errors import BackendUnavailableError, ModelFileError, VivitDeployError
from vivit_deploy.artifacts.metadata import DeployMetadata
from vivit_deploy.runtimes.base import ReadVideo, Runtime, SourceInfo, distribution_versions, register_backend

SCHEME = "triton"
# Binary tensors must say so: a Triton 2.51 server crashed on binary requests of another content type.
BINARY = {"Content-Type": "application/octet-stream"}


class TritonError(VivitDeployError, RuntimeError):
    """The server refused or failed a request, or could not be reached."""


FRAMES_INPUT = "frames"  # the frames ensemble's input (triton-repo writes it): uint8 RGB frames (T, H, W, 3), any size
# the video model's tensors (triton-repo --video): the encoded file, optional settings of its reading, and what the
# reading found besides the logits ("" for a clean file, else frames replaced and truncation)
VIDEO_INPUT = "video"
VIDEO_OPTIONS = {"num_clips": "INT32", "sampling": "BYTES", "frame_sample_rate": "INT32", "autorotate": "BOOL"}
DAMAGED_OUTPUT, READ_NOTES_OUTPUT = "damaged_frames", "read_notes"


def config_parameters(config: dict[str, Any]) -> dict[str, str]:
    """The ``parameters`` of a model configuration as Triton returns it in JSON (to a client, or to a python
    backend model's ``initialize``): key -> string value."""
    return {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


def import_tritonclient():
    try:
        import tritonclient.http as http
        from tritonclient.utils import InferenceServerException
    except ImportError:
        raise BackendUnavailableError("a triton:// model needs tritonclient: pip install 'vivit-deploy[triton]'") from None
    return http, InferenceServerException


def parse_url(url: str) -> tuple[str, str, str]:
    """``triton://host:port/model[/version]`` -> (host:port, model, version or "")."""
    parts = urlsplit(str(url))
    path = [p for p in parts.path.split("/") if p]
    if parts.scheme != SCHEME or not parts.netloc or not 1 <= len(path) <= 2:
        raise ModelFileError(f"{url}: a Triton model is triton://host:port/MODEL[/VERSION]")
    return parts.netloc, path[0], path[1] if len(path) == 2 else ""


@register_backend("triton", schemes=(SCHEME,))
class TritonRuntime(Runtime):
    """A model on a Triton server over HTTP; one client connection per thread.

    ``timeout``: seconds for connecting and for each request. ``frames``: use the uint8-frames ensemble
    for ``VideoClassifier`` when the server has it (default True); ``files``: send video files themselves to the
    video model, which decodes them on the server, when it has one (default True; it comes before the frames).
    """

    thread_safe = True
    artifact = "url"
    precisions = ("fp32", "fp16", "bf16", "int8", "int8-bf16", "fp8")  # whatever the server's model runs

    @classmethod
    def unavailable(cls, device: str = "cpu", precision: str | None = None) -> str | None:
        why = super().unavailable(device, precision)
        if why is None and importlib.util.find_spec("tritonclient") is None:
            why = "tritonclient is not installed (pip install 'vivit-deploy[triton]')"
        return why

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        return distribution_versions("tritonclient")

    @property
    def takes_frames(self) -> bool:
        return self.frames_model is not None

    @classmethod
    def describe_source(cls, source, **hub_options: Any) -> SourceInfo:
        """From the server: a few HTTP calls (configuration and readiness); the fingerprint is the one `triton-repo`
        recorded, else one of the model's parameters."""
        with cls(str(source)) as served:
            sha = served.parameters.get("vivit_deploy.model_sha256") or hashlib.sha256(
                json.dumps(served.parameters, sort_keys=True).encode()).hexdigest()
            return SourceInfo(served.config, served.preprocessor, sha, served.precision, served.takes_frames,
                              served.takes_files)

    def __init__(self, url: str, *, device: str = "auto", precision: str | None = None, timeout: float = 60.0,
                 frames: bool = True, files: bool = True):
        http, self._error_type = import_tritonclient()
        self._http = http
        self.server, self.model, self.version = parse_url(url)
        self.url = str(url)
        self.timeout = timeout
        self._local = threading.local()
        client = self._client()
        try:
            live = client.is_server_live()
        except Exception as exc:  # noqa: BLE001  socket errors, timeouts, HTTP errors: all mean "not reachable"
            raise TritonError(f"{self.url}: no Triton server answers at {self.server} ({_message(exc)})") from exc
        if not live:
            raise TritonError(f"{self.url}: the Triton server at {self.server} is not live")
        config = self._call(lambda c: c.get_model_config(self.model, self.version), "reading the model configuration")
        if not self._call(lambda c: c.is_model_ready(self.model, self.version), "asking whether the model is ready"):
            raise TritonError(f"{self.url}: model {self.model!r} is not ready on {self.server}")
        parameters = config_parameters(config)
        self.parameters = parameters
        metadata = DeployMetadata.from_props(parameters, source=f"{self.url} (its model configuration)")
        _check_served(config, metadata, self.url)
        served = parameters.get("vivit_deploy.served_precision") or metadata.precision  # --platform python's runtime
        if precision is not None and precision != served:
            raise ModelFileError(f"{self.url} serves a {served} model, not {precision}")
        self.metadata = metadata
        self.frames_model = None
        ensemble = parameters.get("vivit_deploy.frames_model")
        if frames and ensemble:
            try:
                if client.is_model_ready(ensemble):
                    self.frames_model = ensemble
            except Exception:  # noqa: BLE001  no ensemble: clients preprocess themselves
                self.frames_model = None
        self.video_model, self.max_video_bytes, self.max_clips = None, None, None
        video = parameters.get("vivit_deploy.video_model")
        if files and video:
            try:
                if client.is_model_ready(video):
                    limits = config_parameters(client.get_model_config(video))
                    limit, clips = (limits.get(f"vivit_deploy.video.{k}", "") for k in ("max_bytes", "max_clips"))
                    self.video_model = video
                    self.max_video_bytes = int(limit) if limit.isdigit() else None
                    self.max_clips = int(clips) if clips.isdigit() else None
            except Exception:  # noqa: BLE001  no video model: clients decode themselves
                self.video_model = None
        super().__init__(
            config=metadata.config, preprocessor=metadata.preprocessor, input_spec=metadata.input,
            precision=served, device=f"triton {self.server}", source=self.url,
        )
        self.merge_tokens = metadata.merge_tokens

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._http.InferenceServerClient(
                self.server, connection_timeout=self.timeout, network_timeout=self.timeout)
        return client

    def _call(self, fn, doing: str):
        try:
            return fn(self._client())
        except self._error_type as exc:
            raise TritonError(f"{self.url}: the server refused {doing}: {_message(exc)}") from exc
        except Exception as exc:  # noqa: BLE001  connection reset, timeout
            raise TritonError(f"{self.url}: {doing} failed: {_message(exc)}") from exc

    def _infer(self, model: str, name: str, array: np.ndarray, datatype: str, output: str) -> np.ndarray:
        http = self._http
        tensor = http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        wanted = [http.InferRequestedOutput(output, binary_data=True)]
        result = self._call(lambda c: c.infer(model, [tensor], outputs=wanted, headers=BINARY,
                                              model_version=self.version if model == self.model else ""),
                            f"an inference on {model!r}")
        out = result.as_numpy(output)
        if out is None:
            raise TritonError(f"{self.url}: {model!r} answered without {output!r}")
        return out

    def _run(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._infer(self.model, self.input_spec.name, pixel_values, "FP32", self.metadata.output_name)

    def run_frames(self, clips: np.ndarray) -> np.ndarray:
        """Logits (N, num_labels) for uint8 RGB clips (N, T, H, W, 3), preprocessed by the server's ensemble."""
        from vivit_deploy.errors import InputShapeError

        self._ensure_open()
        if self.frames_model is None:
            raise TritonError(f"{self.url}: the server has no frames ensemble for {self.model!r}")
        clips = np.ascontiguousarray(clips)
        frames = self.config.num_frames
        if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[1] != frames or clips.shape[-1] != 3:
            raise InputShapeError(f"frames must be uint8 (N, {frames}, height, width, 3), got {clips.dtype} {clips.shape}")
        top = self.input_spec.max_batch or len(clips)
        out = [self._infer(self.frames_model, FRAMES_INPUT, clips[i:i + top], "UINT8", self.metadata.output_name)
               for i in range(0, len(clips), top)]
        return np.concatenate(out).astype(np.float32, copy=False)

    @property
    def takes_files(self) -> bool:
        return self.video_model is not None

    def run_video(self, path, *, num_clips: int = 1, sampling: str = "uniform", frame_sample_rate: int = 4,
                  autorotate: bool = True) -> ReadVideo:
        """The file itself to the server's video model: its mean logits over ``num_clips`` clips and what the
        server's reading found. Nothing is decoded here; a file over the server's limit is refused before it is sent.
        A file the server cannot read is a :class:`VideoReadError` with its reason, as reading it here would be."""
        from vivit_deploy.errors import ConfigError, VideoReadError
        from vivit_deploy.video.opening import VideoBytes, as_source, check_path
        from vivit_deploy.video.reading import SAMPLINGS

        self._ensure_open()
        if self.video_model is None:
            raise TritonError(f"{self.url}: the server has no video model for {self.model!r}")
        if sampling not in SAMPLINGS or num_clips < 1 or frame_sample_rate < 1:
            raise ConfigError(f"sampling must be one of {SAMPLINGS} and num_clips, frame_sample_rate at least 1, got "
                              f"{sampling!r}, {num_clips}, {frame_sample_rate}")
        if self.max_clips is not None and num_clips > self.max_clips:
            raise ConfigError(f"num_clips={num_clips}: {self.video_model!r} on {self.server} reads at most "
                              f"{self.max_clips} clips of a video")
        source = as_source(path)
        check_path(source)
        size = len(source.data) if isinstance(source, VideoBytes) else source.stat().st_size
        if self.max_video_bytes is not None and size > self.max_video_bytes:
            raise VideoReadError(f"{source}: the video is {size:,} bytes, over the server's limit of "
                                 f"{self.max_video_bytes:,} for {self.video_model!r}")
        data = source.data if isinstance(source, VideoBytes) else source.read_bytes()
        http = self._http
        values = {"num_clips": np.array([num_clips], np.int32), "sampling": np.array([sampling.encode()], np.object_),
                  "frame_sample_rate": np.array([frame_sample_rate], np.int32),
                  "autorotate": np.array([bool(autorotate)], np.bool_)}
        tensors = []
        for name, array in [(VIDEO_INPUT, np.array([bytes(data)], np.object_)), *values.items()]:
            datatype = VIDEO_OPTIONS.get(name, "BYTES")
            tensor = http.InferInput(name, [1], datatype)
            tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        output = self.metadata.output_name
        wanted = [http.InferRequestedOutput(name, binary_data=True) for name in (output, DAMAGED_OUTPUT, READ_NOTES_OUTPUT)]
        name = source.name  # the request's id: the file's name (not where it lies here), as the server's errors name it
        try:
            result = self._client().infer(self.video_model, tensors, outputs=wanted, headers=BINARY, request_id=name)
        except self._error_type as exc:
            reason = _message(exc)
            if reason.startswith(f"{name}: "):  # the reader's own one-line reason for this file
                raise VideoReadError(f"{source}: {reason[len(name) + 2:]}") from None
            raise TritonError(f"{self.url}: the server refused {source}: {reason}") from exc
        except Exception as exc:  # noqa: BLE001  connection reset, timeout
            raise TritonError(f"{self.url}: sending {source} failed: {_message(exc)}") from exc
        logits, damaged, notes = (result.as_numpy(n) for n in (output, DAMAGED_OUTPUT, READ_NOTES_OUTPUT))
        if logits is None or damaged is None or notes is None:
            raise TritonError(f"{self.url}: {self.video_model!r} answered without {output!r}, {DAMAGED_OUTPUT!r} and "
                              f"{READ_NOTES_OUTPUT!r}")
        text = notes.reshape(-1)[0]
        return ReadVideo(logits.astype(np.float32, copy=False), int(damaged.reshape(-1)[0]),
                         text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text))

    def _close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
        self._local = threading.local()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "server": self.server, "model": self.model, "frames_model": self.frames_model,
                "video_model": self.video_model}


def _message(exc: BaseException) -> str:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _check_served(config: dict, metadata: DeployMetadata, url: str) -> None:
    """The served tensors must be what the configuration's own vivit_deploy parameters describe."""
    inputs = {i["name"]: i for i in config.get("input", [])}
    outputs = {o["name"]: o for o in config.get("output", [])}
    spec = metadata.input
    problems = []
    if spec.name not in inputs or [int(d) for d in inputs[spec.name].get("dims", [])] != list(spec.frame_shape):
        problems.append(f"input {spec.name!r} {list(spec.frame_shape)}")
    if metadata.output_name not in outputs:
        problems.append(f"output {metadata.output_name!r}")
    if int(config.get("max_batch_size", 0)) != (spec.max_batch or 0):
        problems.append(f"max_batch_size {spec.max_batch}")
    if problems:
        raise ModelFileError(f"{url}: the served model does not match its vivit_deploy parameters ({'; '.join(problems)})")
