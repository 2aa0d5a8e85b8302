"""transformers' ``VivitImageProcessor`` interface on the shared preprocessor, for code written against transformers.

    from vivit_deploy import VivitImageProcessor          # instead of: from transformers import VivitImageProcessor

    processor = VivitImageProcessor.from_pretrained("path/or/hub-id")
    inputs = processor(list_of_frames, return_tensors="pt")   # .pixel_values: (1, T, 3, 224, 224)
    outputs = model(**inputs)

Every input the original takes (a list of PIL images, numpy or torch frames in either channel order, floats, batches
of videos) and its per-call options give its output bit for bit; the arithmetic is ``VideoPreprocessor``'s, so the
model sees exactly what ``predict`` feeds it. Differences: with ``return_tensors`` unset the pixel values are one
numpy array (transformers returns nested lists of per-frame arrays), and frames must have 3 channels (ViViT's).
torch is imported only for ``return_tensors="pt"`` or a tensor handed in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vivit_deploy.errors import ConfigError
from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor

_FIELDS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "offset",
           "do_normalize", "image_mean", "image_std")


class BatchFeature(dict):
    """What transformers' processors return: a dict (``model(**inputs)``) whose keys read as attributes too."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> "BatchFeature":
        """Move every tensor (``.to("cuda")``, ``.to(torch.float16)``); numpy arrays stay as they are."""
        return BatchFeature({k: v.to(*args, **kwargs) if hasattr(v, "to") else v for k, v in self.items()})


class VivitImageProcessor(VideoPreprocessor):
    """``VideoPreprocessor`` with transformers' processor interface: ``__call__``/``preprocess`` return a
    :class:`BatchFeature` with ``pixel_values``; the config's fields read as attributes; ``from_dict``, ``rescale``."""

    def __init__(self, config: PreprocessorConfig | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in _FIELDS:  # transformers' processor keeps its settings as attributes
            return getattr(self.config, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> "VivitImageProcessor":
        """transformers' ``from_dict``: a processor from a config dict, keyword arguments overriding its fields
        (an int ``size`` is a shortest edge, an int ``crop_size`` a square)."""
        return cls(PreprocessorConfig.from_dict({**data, **kwargs}))

    def to_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def __call__(self, videos: Any, return_tensors: str | None = None, input_data_format: str | None = None,
                 data_format: str | None = None, **overrides: Any) -> BatchFeature:
        layout = getattr(data_format, "value", data_format) or "channels_first"
        if layout not in ("channels_first", "channels_last"):
            raise ConfigError(f"data_format {data_format!r}: give 'channels_first' (B, T, 3, H, W), what the model "
                              "takes, or 'channels_last' (B, T, H, W, 3)")
        pixel_values = super().__call__(videos, input_data_format=input_data_format, **overrides)
        if layout == "channels_last":  # as transformers writes it: the channel axis last, values the same
            pixel_values = np.ascontiguousarray(np.moveaxis(pixel_values, -3, -1))
        return BatchFeature(pixel_values=_as_tensors(pixel_values, return_tensors))

    preprocess = __call__

    def rescale(self, image: np.ndarray, scale: float, offset: bool = True, **_ignored: Any) -> np.ndarray:
        """transformers' ``rescale``: ``image * scale`` in float64 cast to float32, minus 1 with ``offset``."""
        out = (np.asarray(image).astype(np.float64) * scale).astype(np.float32)
        return out - 1 if offset else out


def _as_tensors(pixel_values: np.ndarray, return_tensors: str | None) -> Any:
    kind = getattr(return_tensors, "value", return_tensors)
    if kind in (None, "np"):
        return pixel_values
    if kind == "pt":
        import torch

        return torch.from_numpy(pixel_values)
    raise ConfigError(f"return_tensors {return_tensors!r}: give 'pt' (torch), 'np' or None (numpy)")
