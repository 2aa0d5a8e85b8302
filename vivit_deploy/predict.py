"""From a video file (or decoded frames) to top-k labels: reader, shared preprocessor, model, softmax."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vivit_deploy.errors import ConfigError
from vivit_deploy.preprocessing import VideoPreprocessor
from vivit_deploy.video import SAMPLINGS, read_clips


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    index: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class VideoClassifier:
    """Joins a model, its preprocessor and its labels: video in, top-k (label, probability) out.

    With ``num_clips > 1`` the video is read as that many temporal clips and their logits are
    averaged before the softmax, as the ViViT paper evaluates.
    """

    def __init__(self, model, preprocessor: VideoPreprocessor, id2label: dict[int, str] | None = None):
        self.model = model
        self.preprocessor = preprocessor
        config = model.config
        self.id2label = id2label if id2label is not None else dict(config.id2label)
        self.num_frames = config.num_frames

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **load_kwargs: Any) -> "VideoClassifier":
        from vivit_deploy.checkpoint import load_model

        model = load_model(source, head="classification", **load_kwargs)
        preprocessor = VideoPreprocessor.from_pretrained(model.checkpoint_dir)
        return cls(model, preprocessor)

    def logits(self, clips: np.ndarray) -> np.ndarray:
        """Logits (num_clips, num_labels) float32 for uint8 clips (num_clips, T, H, W, 3)."""
        import torch

        pixel_values = torch.from_numpy(self.preprocessor(clips))
        with torch.inference_mode():
            return self.model(pixel_values).float().cpu().numpy()

    def classify(
        self,
        video: str | os.PathLike | np.ndarray,
        *,
        top_k: int = 5,
        num_clips: int = 1,
        sampling: str = "uniform",
        frame_sample_rate: int = 4,
    ) -> list[Prediction]:
        """Top-k predictions for a video file, or for decoded frames (T, H, W, 3) / clips (N, T, H, W, 3)."""
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {top_k}")
        if sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if isinstance(video, (str, os.PathLike)):
            clips = read_clips(
                Path(video), self.num_frames, num_clips=num_clips, sampling=sampling, frame_sample_rate=frame_sample_rate
            )
        else:
            clips = video if video.ndim == 5 else video[None]
        probabilities = softmax(self.logits(clips).mean(axis=0))
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        return [Prediction(self.id2label.get(int(i), f"LABEL_{int(i)}"), float(probabilities[i]), int(i)) for i in order]
