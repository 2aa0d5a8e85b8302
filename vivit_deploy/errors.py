"""Every error vivit_deploy raises on purpose.

All of them derive from :class:`VivitDeployError`, so a caller (and the CLI) can tell a problem with the
user's input apart from a bug. Each also derives from the builtin it refines (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working for code that does not know about us.
"""

from __future__ import annotations


class VivitDeployError(Exception):
    """Base class of the errors raised for bad input, bad files or bad configuration."""


class ConfigError(VivitDeployError, ValueError):
    """A model or preprocessor configuration that cannot describe a working model."""


class InputShapeError(VivitDeployError, ValueError):
    """An array or tensor whose rank, shape or dtype is not what the model or preprocessor takes."""


class CheckpointNotFoundError(VivitDeployError, FileNotFoundError):
    """A checkpoint source that is neither a local directory nor a reachable Hugging Face Hub repository."""


class MetaDeviceError(VivitDeployError, RuntimeError):
    """Loading weights inside ``with torch.device("meta")``, where no tensor holds data: a RuntimeError, as
    transformers raises there."""


class CheckpointError(VivitDeployError, ValueError):
    """A checkpoint whose files exist but do not fit the model: missing, unexpected or mis-shaped weights."""


class VideoReadError(VivitDeployError, ValueError):
    """A video file that cannot be opened or decoded: missing, not a video, corrupt, truncated or empty."""


class ModelFileError(VivitDeployError, ValueError):
    """An exported model file (ONNX graph, TensorRT engine) that is corrupt, foreign, or does not fit."""


class BackendUnavailableError(VivitDeployError, ImportError):
    """A runtime backend whose library (onnxruntime, tensorrt) or device (CUDA) is not present here."""


class ExportError(VivitDeployError, RuntimeError):
    """An export that could not produce a valid file; nothing is left at the output path."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (a library's first line says what went wrong; the rest is its advice and
    traceback text), or its type's name when it has none: what our one-line errors quote."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class InputRangeWarning(UserWarning):
    """Inputs outside the range a quantized (int8/fp8) file was calibrated on: its accuracy holds only inside it."""


class DamagedVideoWarning(UserWarning):
    """A video read best effort: some sampled frames were damaged and replaced, or the file is truncated."""
