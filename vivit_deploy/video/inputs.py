"""What the preprocessor takes: every form of frames transformers' ``VivitImageProcessor`` takes, as clips of frames.

A video is a list of frames or an array of them; a batch is a list of videos or a 5-D array. A frame is a PIL
image, a numpy array or a torch tensor, channels last (H, W, 3) or first (3, H, W) (inferred as transformers infers
it, or given: ``input_data_format``), uint8, or float as transformers reads floats: integer values in [0, 255] are
pixel levels, values in [0, 1] are levels / 255 (turned into levels for the resize, as its PIL conversion does).
Numpy only: torch is never imported here (a tensor is recognised by its type and read with ``.numpy()``), Pillow
only to read a PIL image handed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vivit_deploy.errors import InputShapeError

CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"
# What a frame's values are: pixel levels (uint8), levels / 255 (float in [0, 1]), or floats to compute on as they are
LEVELS, UNIT, FLOAT = "levels", "unit", "float"


@dataclass
class Frames:
    """One video's frames, channels last: ``array`` (T, H, W, 3) and what its values are (``kind`` per frame)."""

    array: np.ndarray
    kinds: tuple[str, ...]


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "numpy")


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "mode")


def _is_frame_like(x: Any) -> bool:
    return _is_pil(x) or _is_tensor(x) or isinstance(x, np.ndarray)


def _numpy(x: Any) -> np.ndarray:
    if _is_tensor(x):
        return x.detach().cpu().numpy()
    if _is_pil(x):
        return np.asarray(x)
    return np.asarray(x)


def channel_order(shape: tuple[int, ...], given: str | None) -> str:
    """transformers' inference of where the channels are in a frame: first when the first axis holds 1 or 3, else last."""
    if given is not None:
        value = getattr(given, "value", given)
        if value in ("channels_first", "first"):
            return CHANNELS_FIRST
        if value in ("channels_last", "last"):
            return CHANNELS_LAST
        raise InputShapeError(f"input_data_format must be 'channels_first' or 'channels_last', got {given!r}")
    if shape[0] in (1, 3):
        return CHANNELS_FIRST
    if shape[-1] in (1, 3):
        return CHANNELS_LAST
    raise InputShapeError(f"cannot tell where the channels are in a frame of shape {shape}: give frames with 3 channels "
                          "first or last, or input_data_format='channels_first'/'channels_last'")


def _kind(frame: np.ndarray) -> str:
    """What transformers makes of a frame's values before resizing it (``_rescale_for_pil_conversion``)."""
    if frame.dtype == np.uint8:
        return LEVELS
    if not np.issubdtype(frame.dtype, np.floating) and not np.issubdtype(frame.dtype, np.integer):
        raise InputShapeError(f"frames must be uint8, integer or float, got {frame.dtype}")
    if np.allclose(frame, frame.astype(int)):
        if frame.min() >= 0 and frame.max() <= 255:
            return LEVELS
        raise InputShapeError(f"frames hold values outside [0, 255] ({frame.min()}..{frame.max()}): give pixel levels "
                              "(0..255) or floats in [0, 1]")
    if frame.min() >= 0 and frame.max() <= 1:
        return UNIT
    raise InputShapeError(f"float frames hold values outside [0, 1] ({frame.min()}..{frame.max()}): give pixel levels "
                          "(0..255) or floats in [0, 1]")


def _video(frames: Sequence[Any] | np.ndarray, order: str | None, index: int) -> Frames:
    """One video: its frames stacked channels last, each frame's kind."""
    arrays = [_numpy(f) for f in frames] if not isinstance(frames, np.ndarray) else list(frames)
    if not arrays:
        raise InputShapeError(f"video {index}: no frames")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputShapeError(f"video {index}: its frames have different shapes {sorted(shapes)}")
    (shape,) = shapes
    if len(shape) == 2:
        raise InputShapeError(f"video {index}: frames of shape {shape} have no channels; give RGB frames "
                              "(for a PIL image: image.convert('RGB'))")
    if len(shape) != 3:
        raise InputShapeError(f"video {index}: a frame must be (height, width, 3) or (3, height, width), got {shape}")
    where = channel_order(shape, order)
    stack = np.stack(arrays)
    if where == CHANNELS_FIRST:
        stack = stack.transpose(0, 2, 3, 1)
    if stack.shape[-1] != 3:
        raise InputShapeError(f"video {index}: frames have {stack.shape[-1]} channels; the preprocessor takes RGB "
                              "(3 channels), as ViViT checkpoints do")
    if min(stack.shape[1:3]) < 1:
        raise InputShapeError(f"video {index}: empty frames of shape {stack.shape[1:]}")
    if stack.dtype == np.uint8:
        return Frames(np.ascontiguousarray(stack), (LEVELS,) * len(stack))
    return Frames(stack, tuple(_kind(f) for f in stack))


def as_videos(videos: Any, input_data_format: str | None = None) -> list[Frames]:
    """Every form transformers' processor takes (one video or a batch of them), as a list of videos."""
    if _is_tensor(videos) or isinstance(videos, np.ndarray):
        array = _numpy(videos)
        if array.ndim == 4:
            return [_video(array, input_data_format, 0)]
        if array.ndim == 5:
            return [_video(clip, input_data_format, i) for i, clip in enumerate(array)]
        if array.ndim == 3:
            return [_video(array[None], input_data_format, 0)]
        raise InputShapeError(f"expected a video (frames, height, width, 3), a batch (videos, frames, height, width, "
                              f"3), or lists of frames; got an array of shape {array.shape}")
    if _is_pil(videos):
        return [_video([videos], input_data_format, 0)]
    if isinstance(videos, (list, tuple)):
        if not videos:
            raise InputShapeError("expected at least one video, got an empty list")
        first = videos[0]
        if isinstance(first, (list, tuple)) or (_is_frame_like(first) and _numpy_ndim(first) == 4):
            return [_video(v, input_data_format, i) for i, v in enumerate(videos)]  # a batch of videos
        if _is_frame_like(first):
            return [_video(videos, input_data_format, 0)]  # one video, a list of frames
    raise InputShapeError(f"expected frames as numpy arrays, torch tensors or PIL images (one video, or a batch of "
                          f"them), got {type(videos).__name__}")


def _numpy_ndim(x: Any) -> int:
    return len(x.shape) if hasattr(x, "shape") else 3
