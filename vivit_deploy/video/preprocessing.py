"""The shared preprocessor: uint8 video frames in, the model's float32 (B, T, C, H, W) out.

It reads transformers' ``preprocessor_config.json`` for ViViT and reproduces ``VivitImageProcessor``
(resize with Pillow's filter, center crop, rescale with optional offset, normalise) to within float32
rounding (measured max abs difference 0: see tests/test_preprocessing.py). Every backend is fed by it.

Importing this module imports numpy only: no torch, no Pillow, no numba until the first call that
needs them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vivit_deploy.errors import ConfigError, InputShapeError
from vivit_deploy.model.hf_layout import PREPROCESSOR_NAME
from vivit_deploy.video.resample import RESAMPLE_NAMES, resize_crop_to_float



def _size_dict(value: Any, name: str, crop: bool) -> dict[str, int]:
    """transformers' ``get_size_dict``: an int is a shortest edge (size) or a square (crop_size)."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer or a dict, got {value!r}")
    if isinstance(value, int):
        out = {"height": value, "width": value} if crop else {"shortest_edge": value}
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        out = {"height": value[0], "width": value[1]}
    elif isinstance(value, dict):
        keys = set(value)
        if keys == {"shortest_edge"} and not crop:
            out = {"shortest_edge": value["shortest_edge"]}
        elif keys == {"height", "width"}:
            out = {"height": value["height"], "width": value["width"]}
        else:
            allowed = "{'height', 'width'}" if crop else "{'shortest_edge'} or {'height', 'width'}"
            raise ConfigError(f"{name} must have the keys {allowed}, got {sorted(keys)}")
    else:
        raise ConfigError(f"{name} must be an integer, [height, width] or a dict, got {value!r}")
    for k, v in out.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name}[{k!r}] must be a positive integer, got {v!r}")
    return out


def _per_channel(value: Any, name: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number or a list of numbers, got {value!r}") from exc
    if len(out) not in (1, 3):
        raise ConfigError(f"{name} must have 1 or 3 values (one per RGB channel), got {len(out)}")
    return out * 3 if len(out) == 1 else out


@dataclass(frozen=True)
class PreprocessorConfig:
    """Every field of transformers' ``VivitImageProcessor``; defaults are that class's defaults."""

    do_resize: bool = True  # resize before cropping
    size: dict[str, int] = field(default_factory=lambda: {"shortest_edge": 256})  # shortest_edge, or height+width
    resample: int = 2  # PIL.Image.Resampling value; 2 is BILINEAR
    do_center_crop: bool = True  # crop the center after resizing
    crop_size: dict[str, int] = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True  # multiply by rescale_factor
    rescale_factor: float = 1 / 127.5
    offset: bool = True  # subtract 1 after rescaling (so 1/127.5 gives [-1, 1])
    do_normalize: bool = True  # (x - mean) / std per channel
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # other keys, written back verbatim

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _size_dict(self.size, "size", crop=False))
        object.__setattr__(self, "crop_size", _size_dict(self.crop_size, "crop_size", crop=True))
        object.__setattr__(self, "image_mean", _per_channel(self.image_mean, "image_mean"))
        object.__setattr__(self, "image_std", _per_channel(self.image_std, "image_std"))
        if self.resample not in RESAMPLE_NAMES:
            raise ConfigError(f"resample must be a PIL resampling filter {RESAMPLE_NAMES}, got {self.resample!r}")
        if self.offset and not self.do_rescale:
            raise ConfigError("offset requires do_rescale (as in transformers' VivitImageProcessor)")
        if self.do_normalize and any(s == 0 for s in self.image_std):
            raise ConfigError(f"image_std must not contain 0, got {self.image_std}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessorConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a preprocessor config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**kwargs, extra=extra)

    @classmethod
    def for_input_size(cls, height: int, width: int) -> "PreprocessorConfig":
        """transformers' defaults scaled to a model input: short side resized by 256/224, crop of the input size.

        What a checkpoint without ``preprocessor_config.json`` gets when a file must record one.
        """
        return cls(size={"shortest_edge": round(min(height, width) * 256 / 224)}, crop_size={"height": height, "width": width})

    def to_dict(self) -> dict[str, Any]:
        out = {"image_processor_type": "VivitImageProcessor", **self.extra}
        for f in fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """Frame size after resize and crop, for an input frame of ``height`` x ``width``."""
        h, w = self.resized_hw(height, width) or (height, width)
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        return h, w

    def resized_hw(self, height: int, width: int) -> tuple[int, int] | None:
        """transformers' resize target (``get_resize_output_image_size``), or None without a resize."""
        if not self.do_resize:
            return None
        if "shortest_edge" in self.size:
            short_target = self.size["shortest_edge"]
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(short_target * long / short)
            return (new_long, short_target) if width <= height else (short_target, new_long)
        return self.size["height"], self.size["width"]

    def lookup_table(self) -> np.ndarray:
        """(3, 256) float32: what rescale + offset + normalise make of each uint8 value, per channel.

        Computed with exactly the operations and dtypes transformers uses (float64 multiply, cast to
        float32, float32 offset and normalisation), so the table entries are bit-identical to its output.
        """
        values = np.arange(256, dtype=np.uint8)[:, None].repeat(3, axis=1)  # (256, 3), channels last
        x: np.ndarray = values
        if self.do_rescale:
            x = (values.astype(np.float64) * self.rescale_factor).astype(np.float32)
            if self.offset:
                x = x - 1
        if self.do_normalize:
            x = x.astype(np.float32) if not np.issubdtype(x.dtype, np.floating) else x
            x = (x - np.array(self.image_mean, dtype=x.dtype)) / np.array(self.image_std, dtype=x.dtype)
        return np.ascontiguousarray(x.astype(np.float32).T)


def preprocessor_config_in(directory: str | os.PathLike) -> PreprocessorConfig | None:
    """The ``preprocessor_config.json`` of a checkpoint directory, or None when it has none."""
    path = Path(directory) / PREPROCESSOR_NAME
    return VideoPreprocessor.from_json_file(path).config if path.is_file() else None


class VideoPreprocessor:
    """Turns uint8 RGB clips into the model's input, as transformers' ``VivitImageProcessor`` does.

    Call it with one clip (T, H, W, 3), a batch (B, T, H, W, 3) or a list of clips; it returns a
    contiguous float32 array (B, T, 3, H', W').
    """

    def __init__(self, config: PreprocessorConfig | None = None, **overrides: Any):
        base = config.to_dict() if config is not None else {}
        base.update(overrides)
        self.config = PreprocessorConfig.from_dict(base) if (overrides or config is None) else config
        self._lut = self.config.lookup_table()

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **hub_kwargs: Any) -> "VideoPreprocessor":
        """Read ``preprocessor_config.json`` from a checkpoint directory or Hub id (same sources as ``load_model``)."""
        from vivit_deploy.model.hf_layout import resolve_source

        config = preprocessor_config_in(resolve_source(source, **hub_kwargs))
        if config is None:
            raise ConfigError(f"{source}: no {PREPROCESSOR_NAME}; pass a VideoPreprocessor built by hand instead")
        return cls(config)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "VideoPreprocessor":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable JSON preprocessor config ({exc})") from exc
        try:
            return cls(PreprocessorConfig.from_dict(data))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        from vivit_deploy.files import atomic_write

        path = Path(directory) / PREPROCESSOR_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.config.to_dict(), indent=2) + "\n"
        atomic_write(path, lambda p: Path(p).write_text(text))
        return path

    def __repr__(self) -> str:
        return f"VideoPreprocessor({self.config})"

    def frame(self, rgb: np.ndarray) -> np.ndarray:
        """One uint8 RGB frame (H, W, 3) to float32 (3, H', W'): what a call does to each frame of a clip, for a
        reader that preprocesses every frame as it is decoded (``read_clips(..., transform=preprocessor.frame)``),
        so a clip costs its output plus a few full-resolution frames. The same numbers as a call on the clip."""
        (clip,) = _as_clips([rgb[None]] if isinstance(rgb, np.ndarray) and rgb.ndim == 3 else [rgb])
        cfg = self.config
        h, w = clip.shape[1:3]
        oh, ow = cfg.output_hw(h, w)
        out = np.empty((1, 3, oh, ow), np.float32)
        crop = (cfg.crop_size["height"], cfg.crop_size["width"]) if cfg.do_center_crop else None
        resize_crop_to_float(clip, cfg.resized_hw(h, w), crop, cfg.resample, self._lut, out=out)
        return out[0]

    def __call__(self, videos: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        clips = _as_clips(videos)
        cfg = self.config
        shapes = {clip.shape[1:3] for clip in clips}
        out_hw = {cfg.output_hw(h, w) for h, w in shapes}
        if len(out_hw) > 1:
            raise InputShapeError(
                f"clips of sizes {sorted(shapes)} give frames of different sizes {sorted(out_hw)} without a "
                "center crop; process them separately or set a crop_size"
            )
        frame_counts = {clip.shape[0] for clip in clips}
        if len(frame_counts) > 1:
            raise InputShapeError(f"every clip in a batch must have the same number of frames, got {sorted(frame_counts)}")
        (oh, ow), t = out_hw.pop(), frame_counts.pop()
        out = np.empty((len(clips), t, 3, oh, ow), np.float32)
        crop = (cfg.crop_size["height"], cfg.crop_size["width"]) if cfg.do_center_crop else None
        for clip, clip_out in zip(clips, out):  # each call writes straight into its slice: no copies
            h, w = clip.shape[1:3]
            resize_crop_to_float(clip, cfg.resized_hw(h, w), crop, cfg.resample, self._lut, out=clip_out)
        return out


def _as_clips(videos: Any) -> list[np.ndarray]:
    """Validate the input and return a list of (T, H, W, 3) uint8 clips."""
    if isinstance(videos, np.ndarray):
        if videos.ndim == 4:
            clips = [videos]
        elif videos.ndim == 5:
            clips = list(videos)
        else:
            raise InputShapeError(
                f"expected one clip (frames, height, width, 3) or a batch (batch, frames, height, width, 3), "
                f"got an array of shape {videos.shape}"
            )
    elif isinstance(videos, (list, tuple)):
        if not videos:
            raise InputShapeError("expected at least one clip, got an empty list")
        clips = list(videos)
    else:
        raise InputShapeError(f"expected a numpy uint8 array or a list of them, got {type(videos).__name__}")
    for i, clip in enumerate(clips):
        if not isinstance(clip, np.ndarray):
            raise InputShapeError(f"clip {i}: expected a numpy array, got {type(clip).__name__}")
        if clip.dtype != np.uint8:
            raise InputShapeError(f"clip {i}: expected uint8 RGB frames (0..255), got dtype {clip.dtype}")
        if clip.ndim != 4 or clip.shape[-1] != 3:
            raise InputShapeError(f"clip {i}: expected shape (frames, height, width, 3) in RGB, got {clip.shape}")
        if min(clip.shape[:3]) < 1:
            raise InputShapeError(f"clip {i}: empty clip of shape {clip.shape}")
    return clips
