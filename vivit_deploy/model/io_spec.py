"""The model's inputs and outputs, declared once.

The exporter names the ONNX tensors and the dynamic batch axis from here, the runtimes validate what
they are given against it, and (next) the TensorRT builder reads its optimization profile from it.
Numpy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vivit_deploy.errors import ConfigError, InputShapeError

INPUT_NAME = "pixel_values"  # (batch, frames, channels, height, width), float32, preprocessed
OUTPUT_NAME = "logits"  # (batch, num_labels), float32
BATCH_AXIS = "batch"  # name of the dynamic axis in the ONNX graph
DEFAULT_MAX_BATCH = 32  # largest batch an exported file is validated and profiled for


@dataclass(frozen=True)
class InputSpec:
    """What ``Runtime.run`` accepts: one float32 array (batch, T, C, H, W) with batch in [min_batch, max_batch].

    ``max_batch`` None means no upper bound (the PyTorch backend); exported files record their own.
    """

    name: str
    dtype: str  # numpy dtype name
    frame_shape: tuple[int, int, int, int]  # (T, C, H, W)
    min_batch: int = 1
    max_batch: int | None = None

    def __post_init__(self) -> None:
        if self.min_batch < 1 or (self.max_batch is not None and self.max_batch < self.min_batch):
            raise ConfigError(f"invalid batch range [{self.min_batch}, {self.max_batch}] for input {self.name!r}")

    @property
    def batch_range(self) -> str:
        top = "any" if self.max_batch is None else str(self.max_batch)
        return f"{self.min_batch}..{top}"

    @property
    def static_batch(self) -> int | None:
        """The one batch size a file fixed at export time takes, else None."""
        return self.min_batch if self.max_batch == self.min_batch else None

    def shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.frame_shape)

    def validate(self, array: Any) -> np.ndarray:
        """Return ``array`` as a C-contiguous array of this spec, or raise :class:`InputShapeError` saying what is wrong."""
        want = f"({self.batch_range}, {', '.join(map(str, self.frame_shape))}) {self.dtype}"
        if not isinstance(array, np.ndarray):
            raise InputShapeError(f"{self.name} must be a numpy array of shape {want}, got {type(array).__name__}")
        self.check(tuple(array.shape), array.dtype.name)
        return np.ascontiguousarray(array)

    def check(self, shape: tuple[int, ...], dtype: str) -> None:
        """Raise :class:`InputShapeError` unless ``shape`` and ``dtype`` (a numpy-style name) fit this spec."""
        want = f"({self.batch_range}, {', '.join(map(str, self.frame_shape))}) {self.dtype}"
        if dtype != self.dtype:
            hint = "; run the clips through VideoPreprocessor first" if dtype == "uint8" else ""
            raise InputShapeError(f"{self.name} must be {self.dtype}, got {dtype}{hint}")
        if len(shape) != 1 + len(self.frame_shape):
            raise InputShapeError(f"{self.name} must have {1 + len(self.frame_shape)} dimensions {want}, got shape {shape}")
        if tuple(shape[1:]) != self.frame_shape:
            names = ("frames", "channels", "height", "width")
            wrong = ", ".join(
                f"{n} {got} (expected {exp})" for n, got, exp in zip(names, shape[1:], self.frame_shape) if got != exp
            )
            raise InputShapeError(f"{self.name} must have shape {want}, got {shape}: {wrong}")
        batch = shape[0]
        if batch < self.min_batch or (self.max_batch is not None and batch > self.max_batch):
            raise InputShapeError(f"batch {batch} is outside the range this model takes ({self.batch_range})")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["frame_shape"] = list(self.frame_shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputSpec":
        try:
            return cls(
                name=str(data["name"]), dtype=str(data["dtype"]), frame_shape=tuple(int(v) for v in data["frame_shape"]),
                min_batch=int(data["min_batch"]), max_batch=None if data["max_batch"] is None else int(data["max_batch"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not an input spec: {data!r} ({exc})") from exc


def input_spec(config, min_batch: int = 1, max_batch: int | None = None) -> InputSpec:
    """The float32 input spec of a model with this :class:`VivitConfig`."""
    return InputSpec(INPUT_NAME, "float32", tuple(config.input_shape), min_batch, max_batch)
