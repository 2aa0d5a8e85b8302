"""The shared preprocessor: uint8 video frames in, the model's float32 (B, T, C, H, W) out.

It reads transformers' ``preprocessor_config.json`` for ViViT and reproduces ``VivitImageProcessor``
(resize with Pillow's filter, center crop, rescale with optional offset, normalise) to within float32
rounding (measured max abs difference 0: see tests/video/test_preprocessing.py). Every backend is fed by it.

Importing this module imports numpy only: no torch, no Pillow, no numba until the first call that
needs them.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from vivit_deploy.errors import ConfigError, InputShapeError
from vivit_deploy.model.hf_layout import PREPROCESSOR_NAME, VIDEO_PREPROCESSOR_NAME
from vivit_deploy.video.inputs import LEVELS, UNIT, Frames, as_videos
from vivit_deploy.video.resample import RESAMPLE_NAMES, crop_window, resize_crop_to_float



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


# The processors whose preprocessor_config.json this reads, each with the defaults its fields take when a file leaves
# them out (a key missing from the file means that class's default, not ViViT's). VideoMAE's processor (which
# TimeSformer's checkpoints use too) rescales by 1/255 with no offset and resizes the short side to 224; transformers 5
# names its Pillow form VideoMAEImageProcessorPil (the same numbers as the torchvision form up to the resize).
VIVIT_PROCESSOR = "VivitImageProcessor"
_VIDEOMAE_DEFAULTS = {"size": {"shortest_edge": 224}, "rescale_factor": 1 / 255, "offset": False}
PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    VIVIT_PROCESSOR: {},
    "VivitImageProcessorPil": {},
    "VideoMAEImageProcessor": _VIDEOMAE_DEFAULTS,
    "VideoMAEImageProcessorPil": _VIDEOMAE_DEFAULTS,
}
# the classes that have no offset step: what their defaults say
_WITHOUT_OFFSET = tuple(kind for kind, defaults in PROCESSOR_DEFAULTS.items() if defaults.get("offset") is False)
# transformers 5's video processors (video_preprocessor_config.json), each read as the image processor that computes its
# numbers, with the defaults that differ: ViViT's always subtracts 1 after rescaling (an offset with no field), and
# TimeSformer's normalises with ImageNet's statistics. They resize with torchvision, where the image processors (and
# this package) resize with Pillow's filters: docs/transformers.md says why that distance is not measured here.
IMAGENET_DEFAULT = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
VIDEO_PROCESSORS: dict[str, tuple[str, dict[str, Any]]] = {
    "VivitVideoProcessor": (VIVIT_PROCESSOR, {}),
    "VideoMAEVideoProcessor": ("VideoMAEImageProcessor", {}),
    "TimesformerVideoProcessor": ("VideoMAEImageProcessor",
                                  {"image_mean": IMAGENET_DEFAULT[0], "image_std": IMAGENET_DEFAULT[1]}),
    "VJEPA2VideoProcessor": ("VideoMAEImageProcessor",
                             {"image_mean": IMAGENET_DEFAULT[0], "image_std": IMAGENET_DEFAULT[1],
                              "crop_size": {"height": 256, "width": 256}}),
}


def _vjepa2_size(data: dict[str, Any]) -> dict[str, Any]:
    """V-JEPA 2's video processor resizes the short side to crop x 256 / 224 whatever its file's ``size`` says (its
    constructor computes it from ``crop_size``, an integer or a dict with a height)."""
    crop = data.get("crop_size", 256)
    height = crop.get("height") if isinstance(crop, dict) else crop
    if isinstance(height, bool) or not isinstance(height, int) or height < 1:
        raise ConfigError(f"VJEPA2VideoProcessor's crop_size must be a positive integer or have a 'height', got {crop!r}")
    return {**data, "crop_size": {"height": height, "width": height}, "size": {"shortest_edge": int(height * 256 / 224)}}


@dataclass(frozen=True)
class PreprocessorConfig:
    """Every field of transformers' ``VivitImageProcessor`` (VideoMAE's processor has the same steps without the
    offset); defaults are ViViT's, and ``from_dict`` gives a file's missing fields its own class's defaults."""

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
    processor_type: str = VIVIT_PROCESSOR  # the transformers class the file names (PROCESSOR_DEFAULTS)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # other keys, written back verbatim

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _size_dict(self.size, "size", crop=False))
        object.__setattr__(self, "crop_size", _size_dict(self.crop_size, "crop_size", crop=True))
        object.__setattr__(self, "image_mean", _per_channel(self.image_mean, "image_mean"))
        object.__setattr__(self, "image_std", _per_channel(self.image_std, "image_std"))
        if self.resample not in RESAMPLE_NAMES:
            raise ConfigError(f"resample must be a PIL resampling filter {RESAMPLE_NAMES}, got {self.resample!r}")
        if self.processor_type not in PROCESSOR_DEFAULTS:
            raise ConfigError(f"processor_type= {self.processor_type!r} is not a processor vivit_deploy reads "
                              f"({', '.join(PROCESSOR_DEFAULTS)}): its fields may mean other steps")
        if self.offset and self.processor_type in _WITHOUT_OFFSET:
            raise ConfigError(f"offset= True: {self.processor_type} has no offset step")
        if self.offset and not self.do_rescale:
            raise ConfigError("offset requires do_rescale (as in transformers' VivitImageProcessor)")
        if self.do_normalize and any(s == 0 for s in self.image_std):
            raise ConfigError(f"image_std must not contain 0, got {self.image_std}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessorConfig":
        """From a ``preprocessor_config.json``'s object: its ``image_processor_type`` (ViViT's when absent, as files
        this package wrote before it recorded one) decides what a missing field means; a processor class this does
        not read is refused in one line rather than read with ViViT's meaning."""
        if not isinstance(data, dict):
            raise ConfigError(f"a preprocessor config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        video = data.pop("video_processor_type", None)
        if video is not None and "image_processor_type" not in data:  # a video_preprocessor_config.json
            if video not in VIDEO_PROCESSORS:
                raise ConfigError(f"video_preprocessor_config.json's video_processor_type {video!r} is not a processor "
                                  f"vivit_deploy reads ({', '.join(VIDEO_PROCESSORS)})")
            image, defaults = VIDEO_PROCESSORS[video]
            data = {**defaults, **data, "image_processor_type": image}
            if video == "VJEPA2VideoProcessor":
                data = _vjepa2_size(data)
            if image == VIVIT_PROCESSOR and data.get("do_rescale", True):
                data["offset"] = True  # ViViT's video processor subtracts 1 after rescaling, always
        kind = data.pop("image_processor_type", None) or data.pop("processor_type", None) or VIVIT_PROCESSOR
        if kind not in PROCESSOR_DEFAULTS:
            raise ConfigError(f"preprocessor_config.json's image_processor_type {kind!r} is not a processor vivit_deploy "
                              f"reads ({', '.join(PROCESSOR_DEFAULTS)}): reading its fields as ViViT's could preprocess "
                              "wrongly")
        names = {f.name for f in fields(cls)} - {"extra", "processor_type"}
        kwargs = {**PROCESSOR_DEFAULTS[kind], **{k: v for k, v in data.items() if k in names}}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**kwargs, processor_type=kind, extra=extra)

    @classmethod
    def for_input_size(cls, height: int, width: int) -> "PreprocessorConfig":
        """transformers' defaults scaled to a model input: short side resized by 256/224, crop of the input size.

        What a checkpoint without ``preprocessor_config.json`` gets when a file must record one.
        """
        return cls(size={"shortest_edge": round(min(height, width) * 256 / 224)}, crop_size={"height": height, "width": width})

    def at_size(self, height: int, width: int) -> "PreprocessorConfig":
        """This preprocessing for a model input of ``height`` x ``width`` (a checkpoint deployed at another
        resolution): the crop becomes the input size and the resize target scales with it, so the crop keeps the
        same share of the frame."""
        from dataclasses import replace

        old_h, old_w = (self.crop_size["height"], self.crop_size["width"]) if self.do_center_crop else (height, width)
        if "shortest_edge" in self.size:
            size = {"shortest_edge": max(1, round(self.size["shortest_edge"] * min(height, width) / min(old_h, old_w)))}
        else:
            size = {"height": max(1, round(self.size["height"] * height / old_h)),
                    "width": max(1, round(self.size["width"] * width / old_w))}
        if not self.do_center_crop and not self.do_resize:
            raise ConfigError("a preprocessor that neither resizes nor crops cannot make frames of another size")
        if not self.do_center_crop:
            size = {"height": height, "width": width}
        return replace(self, size=size, crop_size={"height": height, "width": width})

    def to_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        """What a model saw, back as uint8 RGB: (..., 3, H, W) preprocessed values to (..., H, W, 3), the
        normalisation and rescaling undone (for pictures of clips in reports; the resize and crop stay)."""
        x = np.moveaxis(np.asarray(pixel_values, dtype=np.float32), -3, -1)
        if self.do_normalize:
            x = x * np.asarray(self.image_std, np.float32) + np.asarray(self.image_mean, np.float32)
        if self.offset:
            x = x + 1.0
        if self.do_rescale:
            x = x / self.rescale_factor
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        out = {"image_processor_type": self.processor_type, **self.extra}
        for f in fields(self):
            if f.name in ("extra", "processor_type") or (f.name == "offset" and self.processor_type in _WITHOUT_OFFSET):
                continue
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

    def lookup_table(self, unit: bool = False) -> np.ndarray:
        """(3, 256) float32: what rescale + offset + normalise make of each uint8 value, per channel.

        Computed with exactly the operations and dtypes transformers uses (float64 multiply, cast to
        float32, float32 offset and normalisation), so the table entries are bit-identical to its output.
        ``unit``: for frames given as floats in [0, 1], which transformers resizes as levels and divides by 255
        again before rescaling (its PIL round trip), so a level v stands for float32(v / 255).
        """
        values = np.arange(256, dtype=np.uint8)[:, None].repeat(3, axis=1)  # (256, 3), channels last
        x: np.ndarray = values
        if unit:
            x = (values.astype(np.float64) * (1 / 255)).astype(np.float32)
        return np.ascontiguousarray(self.rescale_and_normalize(x).astype(np.float32).T)

    def rescale_and_normalize(self, x: np.ndarray) -> np.ndarray:
        """transformers' rescale (with offset) and normalisation of an array of values, its dtypes kept: float64
        multiply cast to float32, then float arithmetic in the array's own float type."""
        if self.do_rescale:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
            if self.offset:
                x = x - 1
        if self.do_normalize:
            x = x.astype(np.float32) if not np.issubdtype(x.dtype, np.floating) else x
            x = (x - np.array(self.image_mean, dtype=x.dtype)) / np.array(self.image_std, dtype=x.dtype)
        return x


def preprocessor_config_in(directory: str | os.PathLike) -> PreprocessorConfig | None:
    """The ``preprocessor_config.json`` of a checkpoint directory, else its ``video_preprocessor_config.json``
    (transformers 5's video processors: read as the image processor that computes the same steps), or None when it
    has neither."""
    for name in (PREPROCESSOR_NAME, VIDEO_PREPROCESSOR_NAME):
        path = Path(directory) / name
        if path.is_file():
            return VideoPreprocessor.from_json_file(path).config
    return None


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
            raise ConfigError(f"{source}: no {PREPROCESSOR_NAME} or {VIDEO_PREPROCESSOR_NAME}; pass a VideoPreprocessor "
                              "built by hand instead")
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
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[-1] == 3):
            raise InputShapeError(f"a decoded frame must be uint8 (height, width, 3), got {getattr(rgb, 'dtype', type(rgb))} "
                                  f"{getattr(rgb, 'shape', '')}")
        clip = np.ascontiguousarray(rgb)[None]
        cfg = self.config
        h, w = clip.shape[1:3]
        oh, ow = cfg.output_hw(h, w)
        out = np.empty((1, 3, oh, ow), np.float32)
        crop = (cfg.crop_size["height"], cfg.crop_size["width"]) if cfg.do_center_crop else None
        resize_crop_to_float(clip, cfg.resized_hw(h, w), crop, cfg.resample, self._lut, out=out)
        return out[0]

    def __call__(self, videos: Any, *, input_data_format: str | None = None, **overrides: Any) -> np.ndarray:
        """The model's input (B, T, 3, H', W') float32 for one video or a batch: arrays (T, H, W, 3) or (B, T, H, W, 3),
        lists of frames (numpy, torch or PIL), channels last or first (``input_data_format``), uint8 or float, as
        transformers' processor takes them (``vivit_deploy.video.inputs``). ``overrides``: any config field for this
        call only (``do_resize=False``, ``size=...``), as transformers' per-call options."""
        if overrides:
            return VideoPreprocessor(self.config, **overrides)(videos, input_data_format=input_data_format)
        if isinstance(videos, np.ndarray) and videos.dtype == np.uint8 and videos.ndim in (4, 5) and videos.shape[-1] == 3:
            clips = [Frames(c, (LEVELS,) * len(c)) for c in (videos if videos.ndim == 5 else videos[None])]
            if not all(len(c.array) and min(c.array.shape[1:3]) for c in clips):
                raise InputShapeError(f"no frames (or empty ones) in an array of shape {videos.shape}")
        else:
            clips = as_videos(videos, input_data_format)
        cfg = self.config
        shapes = {clip.array.shape[1:3] for clip in clips}
        out_hw = {cfg.output_hw(h, w) for h, w in shapes}
        if len(out_hw) > 1:
            raise InputShapeError(
                f"clips of sizes {sorted(shapes)} give frames of different sizes {sorted(out_hw)} without a "
                "center crop; process them separately or set a crop_size"
            )
        frame_counts = {len(clip.array) for clip in clips}
        if len(frame_counts) > 1:
            raise InputShapeError(f"every clip in a batch must have the same number of frames, got {sorted(frame_counts)}")
        (oh, ow), t = out_hw.pop(), frame_counts.pop()
        out = np.empty((len(clips), t, 3, oh, ow), np.float32)
        for clip, clip_out in zip(clips, out):  # each call writes straight into its slice: no copies
            self._into(clip, clip_out)
        return out

    def _into(self, clip: Frames, out: np.ndarray) -> None:
        """One video's frames into ``out`` (T, 3, H', W'), by what their values are."""
        cfg = self.config
        h, w = clip.array.shape[1:3]
        crop = (cfg.crop_size["height"], cfg.crop_size["width"]) if cfg.do_center_crop else None
        if clip.array.dtype == np.uint8:
            resize_crop_to_float(clip.array, cfg.resized_hw(h, w), crop, cfg.resample, self._lut, out=out)
            return
        if not cfg.do_resize:  # transformers computes on the floats themselves when nothing is resized
            out[:] = self._floats(clip.array, crop)
            return
        if UNIT in clip.kinds:
            warnings.warn("frames given as floats in [0, 1] are rescaled again (as transformers' processor does, which "
                          "warns the same): give uint8 frames, or do_rescale=False", UserWarning, stacklevel=3)
        for kind in set(clip.kinds):  # transformers resizes each frame as pixel levels (its PIL round trip)
            which = [i for i, k in enumerate(clip.kinds) if k == kind]
            frames = clip.array[which]
            if kind == UNIT:
                levels = (frames.astype(np.float64) * 255).astype(np.float32).astype(np.uint8)
                lut = self._unit_lut
            else:
                levels, lut = frames.astype(np.uint8), self._lut
            part = np.empty((len(which), *out.shape[1:]), np.float32)
            resize_crop_to_float(np.ascontiguousarray(levels), cfg.resized_hw(h, w), crop, cfg.resample, lut, out=part)
            out[which] = part

    @property
    def _unit_lut(self) -> np.ndarray:
        if not hasattr(self, "_unit_table"):
            self._unit_table = self.config.lookup_table(unit=True)
        return self._unit_table

    def _floats(self, frames: np.ndarray, crop: tuple[int, int] | None) -> np.ndarray:
        """Float frames (T, H, W, 3), not resized: transformers' center crop (zero padding where the crop is larger),
        rescale and normalisation in its dtypes, as (T, 3, H', W') float32."""
        if crop is not None:
            frames = center_crop(frames, crop)
        return self.config.rescale_and_normalize(frames).transpose(0, 3, 1, 2).astype(np.float32)


def center_crop(frames: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """transformers' ``center_crop`` of frames (T, H, W, C): offsets (size - crop) // 2, zeros where the crop is larger."""
    (ch, cw), (h, w) = crop, frames.shape[1:3]
    out = np.zeros((len(frames), ch, cw, frames.shape[3]), frames.dtype)
    top, pad_top = crop_window(h, ch)
    left, pad_left = crop_window(w, cw)
    src = frames[:, max(top, 0): top + ch, max(left, 0): left + cw]
    out[:, pad_top: pad_top + src.shape[1], pad_left: pad_left + src.shape[2]] = src
    return out
