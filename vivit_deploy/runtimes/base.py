"""The one contract every backend implements, and the registry that finds them.

A runtime takes preprocessed float32 clips (batch, T, C, H, W) and returns float32 logits
(batch, num_labels), whatever it computes in. ``Runtime.run`` validates the input against the
runtime's :class:`InputSpec` before the backend sees it and checks what comes back, so every backend
fails the same way on bad input. Backends implement ``_run`` (and ``_close`` if they hold resources).

Building (export, engine build) lives elsewhere; a runtime only loads and runs.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Callable

import numpy as np

from vivit_deploy.model.config import VivitConfig
from vivit_deploy.errors import ConfigError, InputRangeWarning, InputShapeError, ModelFileError, VivitDeployError
from vivit_deploy.model.io_spec import InputSpec
from vivit_deploy.video.preprocessing import PreprocessorConfig


@dataclass(frozen=True)
class SourceInfo:
    """What a model source says about itself before any backend loads it (``Runtime.describe_source``)."""

    config: VivitConfig
    preprocessor: PreprocessorConfig
    sha256: str  # of the model file, or of a checkpoint's config and weight files together
    precision: str | None  # fixed by an exported file or engine; None where the runtime chooses (PyTorch)
    frames: bool = False  # the runtime preprocesses uint8 frames itself (a Triton model with its frames ensemble)
    files: bool = False  # the runtime reads encoded video files itself (a Triton model with its video model)


@dataclass(frozen=True)
class ReadVideo:
    """A video file classified where it was read (``Runtime.run_video``): the mean logits of its clips (num_labels,),
    the sampled frames that were damaged and replaced, and the reading's notes in words ("" for a clean file)."""

    logits: np.ndarray
    damaged_frames: int
    notes: str


class RuntimeClosedError(VivitDeployError, RuntimeError):
    """``run`` on a runtime after ``close()``."""


def file_probe_names(graph_proto, path) -> tuple[str, ...]:
    """The probe points (``model/probes.py``) an exported ONNX graph names, in graph order; a file without any (not
    written by this vivit-export) is a :class:`ModelFileError`."""
    from vivit_deploy.model.probes import is_probe_name

    names = tuple(o for node in graph_proto.graph.node for o in node.output if is_probe_name(o))
    if not names:
        raise ModelFileError(f"{path} names no hidden states (<module>:output); re-export it with this vivit-export "
                             "to compare it layer by layer")
    return names


class Runtime(ABC):
    """Base class of every backend: validated ``run``, labels and preprocessing, ``close`` and ``with``.

    Subclasses set ``backend`` (the registry name) and ``thread_safe``; when a backend cannot run
    concurrently (one TensorRT execution context, say), the base class serialises ``run`` calls with a
    lock, so concurrent callers always get the results serial calls would.
    """

    backend: ClassVar[str]
    thread_safe: ClassVar[bool] = True

    # ---- what the toolkit knows about this backend without loading anything: compare's matrix, bench's plan, the
    # corpus job, serving and reports read these instead of a backend's name
    title: ClassVar[str] = ""  # how reports name it ("pytorch", "onnxruntime", ...); default: the registry name
    artifact: ClassVar[str] = "checkpoint"  # what it loads: "checkpoint", "onnx", "engine" or "url"
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)  # what it runs (``precision`` values, as reported)
    timed_precisions: ClassVar[tuple[str, ...] | None] = None  # those whose speed is real (None: all of precisions)

    @classmethod
    def unavailable(cls, device: str = "cpu", precision: str | None = None) -> str | None:
        """Why this backend cannot run ``precision`` (default: its first) on ``device`` here, in one line the user
        can act on; None when it can. Cheap: finds libraries without importing the heavy ones where it can."""
        if precision is not None and precision not in cls.precisions:
            return f"runs {'/'.join(cls.precisions)}, not {precision}"
        return None

    @classmethod
    def file_precision(cls, precision: str) -> str:
        """The precision of the file it loads to run in ``precision`` (OpenVINO runs bf16 from an fp32 file)."""
        return precision

    @classmethod
    def load_precision(cls, precision: str) -> str | None:
        """The ``precision=`` argument that makes it run in ``precision`` (None: the file's own)."""
        return None if cls.artifact in ("onnx", "engine") else precision

    @classmethod
    def reported_precision(cls, file_precision: str | None, asked: str | None) -> str:
        """The precision a runtime of this backend will report for a file of ``file_precision`` (None: a checkpoint)
        loaded with ``precision=asked``, without loading it: what a corpus job's rows and a Triton config name."""
        return asked or file_precision or "fp32"

    @classmethod
    def compare_variants(cls, device: str) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
        """What compare's matrix runs of this backend when the reference runs on ``device``: (label, precision,
        device) triples, and label -> why not for those that cannot run here."""
        return [], {}

    @classmethod
    def describe_source(cls, source, **hub_options: Any) -> SourceInfo:
        """Config, preprocessing, fingerprint and precision of ``source`` as this backend would load it, reading its
        metadata only (no weights into a framework): what a corpus job's driver needs on a machine without the
        model's device. ``hub_options``: a checkpoint's Hub options (revision, local_files_only, ...)."""
        from vivit_deploy.files import sha256_of

        path = Path(source)
        if cls.artifact == "onnx":
            from vivit_deploy.artifacts.metadata import read_onnx_metadata

            metadata = read_onnx_metadata(path)
            return SourceInfo(metadata.config, metadata.preprocessor, sha256_of(path), metadata.precision)
        if cls.artifact == "engine":
            from vivit_deploy.artifacts.engines import engine_metadata

            sidecar, metadata = engine_metadata(path)
            return SourceInfo(metadata.config, metadata.preprocessor, sha256_of(path), sidecar["precision"])
        if cls.artifact != "checkpoint":
            raise NotImplementedError(f"the {cls.backend} backend does not say how to describe {source}")
        from vivit_deploy.model.checkpoint import load_config
        from vivit_deploy.model.hf_layout import resolve_source
        from vivit_deploy.video.preprocessing import preprocessor_config_in

        directory = resolve_source(source, **{k: v for k, v in hub_options.items() if v is not None})
        config = load_config(directory)
        preprocessor = preprocessor_config_in(directory) or PreprocessorConfig.for_input_size(
            config.image_height, config.image_width)
        weights = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
        return SourceInfo(config, preprocessor, sha256_of(*weights), None)

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        """The versions of the libraries it runs on, for reports (empty where none is installed)."""
        return {}

    @property
    def takes_frames(self) -> bool:
        """Whether it takes uint8 RGB clips and preprocesses them itself (``run_frames``): a Triton model served with
        its frames ensemble. Callers then send frames, not preprocessed clips."""
        return False

    def run_frames(self, clips: np.ndarray) -> np.ndarray:
        """Logits (N, num_labels) for uint8 RGB clips (N, T, H, W, 3), where ``takes_frames``."""
        raise ConfigError(f"the {self.backend} runtime for {self.source} takes preprocessed clips, not frames")

    @property
    def takes_files(self) -> bool:
        """Whether it reads encoded video files itself (``run_video``): a Triton model served with its video model,
        which decodes on the server. Callers then send the file, not frames."""
        return False

    def run_video(self, path, *, num_clips: int = 1, sampling: str = "uniform", frame_sample_rate: int = 4,
                  autorotate: bool = True) -> ReadVideo:
        """A video file's mean logits over its clips and what its reading found, where ``takes_files``."""
        raise ConfigError(f"the {self.backend} runtime for {self.source} takes clips, not video files")

    def run_torch(self, pixel_values):
        """Logits as a float32 torch tensor for a float32 torch tensor of clips: a backend whose buffers live on a GPU
        (TensorRT) takes one already on its device and returns one there, without copies; every other backend goes
        through ``run`` (what a benchmark times on the device where the data already lies)."""
        import torch

        return torch.from_numpy(self.run(pixel_values.detach().cpu().numpy()))

    def with_probes(self) -> "Runtime | None":
        """The same backend, file, device and precision with its probe points exposed (``run_probes``), for per-layer
        drift; None where this backend cannot expose them."""
        return None

    def device_memory_mb(self) -> float | None:
        """What the backend holds on its device beyond the model's own weights, where it can say (a TensorRT engine's
        activation memory); None elsewhere."""
        return None

    def __init__(
        self,
        *,
        config: VivitConfig,
        preprocessor: PreprocessorConfig | None,
        input_spec: InputSpec,
        precision: str,
        device: str,
        source: str,
    ):
        self.config = config
        self.preprocessor = preprocessor  # None when the source has no preprocessor config
        self.input_spec = input_spec
        self.precision = precision
        self.device = device
        self.source = source
        self._closed = False
        self._lock = None if self.thread_safe else threading.Lock()
        self.calibrated_range: tuple[float, float] | None = None  # set by backends running a calibrated int8/fp8 file
        self.merge_tokens: tuple[int, ...] = ()  # token merging's r per layer, set by backends whose model merges
        self._range_warned = False

    @property
    def id2label(self) -> dict[int, str]:
        return dict(self.config.id2label)

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """Logits (batch, num_labels) float32 for preprocessed clips (batch, T, C, H, W) float32."""
        self._ensure_open()
        pixel_values = self.input_spec.validate(pixel_values)
        if self.calibrated_range is not None and not self._range_warned:
            self._check_range(pixel_values)
        if self._lock is None:
            logits = self._run(pixel_values)
        else:
            with self._lock:
                logits = self._run(pixel_values)
        logits = np.asarray(logits, dtype=np.float32)
        expected = (pixel_values.shape[0], self.num_labels)
        if logits.shape != expected:
            raise VivitDeployError(
                f"{self.backend} returned logits of shape {logits.shape}, expected {expected}: "
                f"the model file does not match its own metadata ({self.source})"
            )
        return logits

    def _check_range(self, pixel_values: np.ndarray) -> None:
        """Warn once when inputs leave the range the file was calibrated on (its int8/fp8 scales fit only inside)."""
        import warnings

        low, high = self.calibrated_range
        outside = int(np.count_nonzero(pixel_values < low)) + int(np.count_nonzero(pixel_values > high))
        if outside:
            self._range_warned = True
            share = outside / pixel_values.size
            warnings.warn(
                f"{self.source}: {share:.2%} of the input values lie outside the range its {self.precision} scales were "
                f"calibrated on ({low:.3g}..{high:.3g}); its accuracy is measured only inside it: recalibrate on clips "
                "like these (vivit-export --calibration)", InputRangeWarning, stacklevel=3)

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeClosedError(f"{self.backend} runtime for {self.source} is closed")

    def run_batches(self, pixel_values: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Logits for any number of clips, run in batches this runtime accepts.

        A batch smaller than the runtime's minimum (a file exported with a fixed batch, an engine
        profile starting above 1) is filled with copies of its last clip, whose logits are dropped.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        spec = self.input_spec
        if spec.static_batch is not None:
            batch_size = spec.static_batch
        elif spec.max_batch is not None:
            batch_size = min(batch_size, spec.max_batch)
        outputs = []
        for start in range(0, len(pixel_values), batch_size):
            chunk = pixel_values[start:start + batch_size]
            pad = max(0, spec.min_batch - len(chunk))  # a fixed batch, or a profile that starts above 1
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outputs.append(self.run(chunk)[: len(chunk) - pad])
        if not outputs:
            raise ConfigError("no clips to run")
        return np.concatenate(outputs)

    probe_names: tuple[str, ...] = ()  # hidden states this runtime exposes (``model/probes.py``); set by backends that can

    def run_probes(self, pixel_values: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits and the hidden states at the file's probe points (``vivit_deploy/model/probes.py``), float32, for
        per-layer drift. Backends that can expose them (ONNX Runtime, OpenVINO) do when loaded with
        ``probes=True``."""
        self._ensure_open()
        if not self.probe_names:
            raise ConfigError(f"the {self.backend} runtime for {self.source} exposes no hidden states; per-layer drift "
                              "runs on ONNX files with ONNX Runtime or OpenVINO, loaded with probes=True")
        pixel_values = self.input_spec.validate(pixel_values)
        if self._lock is None:
            logits, hidden = self._run_probes(pixel_values)
        else:
            with self._lock:
                logits, hidden = self._run_probes(pixel_values)
        return np.asarray(logits, np.float32), {k: np.asarray(v, np.float32) for k, v in hidden.items()}

    def _run_probes(self, pixel_values: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError

    def step_parts(self) -> "StepParts | None":
        """Model 2 with separate positions (``artifacts.step_parts.reuses_steps``): its step encoder and window
        classifier, so a caller (a stream) encodes each time step once for every window that holds it. None where the
        model cannot (Models 1 and 3, per-step positions) or this backend or file has no parts."""
        return None

    def set_threads(self, threads: int) -> int | None:
        """Change the backend's intra-op CPU threads while it runs; returns the previous count, or None
        where the backend fixes them when it loads (ONNX Runtime's ``threads`` option) or runs on a GPU."""
        return None

    @abstractmethod
    def _run(self, pixel_values: np.ndarray) -> np.ndarray:
        """Backend work on an already validated, C-contiguous float32 array."""

    def _close(self) -> None:
        """Release backend resources; called once."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What runs where, for reports: backend, device, precision, batch range, source."""
        return {
            "backend": self.backend, "device": self.device, "precision": self.precision,
            "batch": self.input_spec.batch_range, "source": self.source,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.source} on {self.device}, {self.precision}, batch {self.input_spec.batch_range}>"


# ---- registry -------------------------------------------------------------------------------------

BACKENDS: dict[str, type[Runtime]] = {}
SUFFIXES: dict[str, str] = {}  # file suffix -> backend name
SCHEMES: dict[str, str] = {}  # URL scheme (triton://...) -> backend name


class StepParts(ABC):
    """Model 2 in two calls: ``encode`` the frames of S time steps (S, t, C, H, W) float32 into their tokens (S, D),
    ``classify`` the tokens of B windows (B, F, D) into logits (B, num_labels); ``classify(encode(steps of a clip))``
    is the clip's logits. Batches above the backend's limits are split here."""

    def __init__(self, config: VivitConfig, max_windows: int | None):
        self.config = config
        self.step_frames = config.tubelet_size[0]
        self.steps_per_window = config.grid[0]
        self.max_windows = max_windows or 64
        self.max_steps = self.max_windows * self.steps_per_window

    def encode(self, steps: np.ndarray) -> np.ndarray:
        steps = np.ascontiguousarray(steps, dtype=np.float32)
        want = (self.step_frames, *self.config.input_shape[1:])
        if steps.ndim != 5 or steps.shape[1:] != want or len(steps) == 0:
            raise InputShapeError(f"time steps must be (S, {', '.join(map(str, want))}) float32, got {steps.shape}")
        return np.concatenate([np.asarray(self._encode(steps[i:i + self.max_steps]), np.float32)
                               for i in range(0, len(steps), self.max_steps)])

    def classify(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        want = (self.steps_per_window, self.config.hidden_size)
        if tokens.ndim != 3 or tokens.shape[1:] != want or len(tokens) == 0:
            raise InputShapeError(f"window tokens must be (B, {', '.join(map(str, want))}) float32, got {tokens.shape}")
        return np.concatenate([np.asarray(self._classify(tokens[i:i + self.max_windows]), np.float32)
                               for i in range(0, len(tokens), self.max_windows)])

    @abstractmethod
    def _encode(self, steps: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _classify(self, tokens: np.ndarray) -> np.ndarray: ...


def register_backend(name: str, suffixes: tuple[str, ...] = (), schemes: tuple[str, ...] = ()) -> Callable[[type[Runtime]], type[Runtime]]:
    """Class decorator: make a runtime loadable by ``name`` (and by file suffix or URL scheme); duplicates are refused."""

    def decorate(cls: type[Runtime]) -> type[Runtime]:
        if name in BACKENDS:
            raise ConfigError(f"backend {name!r} is already registered by {BACKENDS[name].__qualname__}")
        for key, claimed in [(s, SUFFIXES) for s in suffixes] + [(s, SCHEMES) for s in schemes]:
            if key in claimed:
                raise ConfigError(f"{key!r} is already claimed by backend {claimed[key]!r}")
        cls.backend = name
        cls.title = cls.__dict__.get("title") or name
        BACKENDS[name] = cls
        SUFFIXES.update({suffix: name for suffix in suffixes})
        SCHEMES.update({scheme: name for scheme in schemes})
        return cls

    return decorate


def distribution_versions(*names: str) -> dict[str, str]:
    """Installed versions of the first of ``names`` (distribution names) that is installed, without importing it."""
    from importlib import metadata

    for name in names:
        try:
            return {name: metadata.version(name)}
        except metadata.PackageNotFoundError:
            continue
    return {}


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; "cuda" / "cuda:N" / "cpu" are checked and kept."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def device_index(device: str) -> int:
    return int(device[5:]) if device.startswith("cuda:") else 0
