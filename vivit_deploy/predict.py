"""From a video file (or decoded frames) to top-k labels: reader, shared preprocessor, any runtime, softmax."""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vivit_deploy.accuracy.evaluation import softmax

from vivit_deploy.errors import ConfigError, DamagedVideoWarning
from vivit_deploy.video.opening import ReadOptions, VideoBytes, as_source
from vivit_deploy.video.preprocessing import VideoPreprocessor
from vivit_deploy.video.reading import SAMPLINGS, Clips, decode_clips

if TYPE_CHECKING:
    from vivit_deploy.runtimes.base import Runtime


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    index: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def top_predictions(logits: np.ndarray, id2label: dict[int, str], top_k: int) -> list[Prediction]:
    """Top-k of one video from the logits of its clips (num_clips, num_labels): mean logits, then softmax.

    Shared by ``VideoClassifier.classify`` and the corpus job, so both rank a video the same way.
    """
    return ranked(softmax(logits.mean(axis=0)), id2label, top_k)


def ranked(probabilities: np.ndarray, id2label: dict[int, str], top_k: int) -> list[Prediction]:
    """The ``top_k`` most probable labels of one probability vector, most probable first (ties: lower index)."""
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return [Prediction(label_name(id2label, int(i)), float(probabilities[i]), int(i)) for i in order]


def label_name(id2label: dict[int, str], index: int) -> str:
    """The label of class ``index``; ``LABEL_<index>`` where the checkpoint names none (as transformers does)."""
    return id2label.get(index, f"LABEL_{index}")


def video_logits(runtime: "Runtime", clips: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """The logits (num_clips, num_labels) of each video, its clips run with every other video's in batches of
    ``batch_size``: float32 clips through ``run_batches``, or uint8 frames (for a runtime that preprocesses them
    itself) through ``run_frames``, one call per frame size."""
    counts = [len(c) for c in clips]
    bounds = np.cumsum([0, *counts])
    if clips[0].dtype == np.uint8:
        logits = np.empty((bounds[-1], runtime.num_labels), np.float32)
        sizes: dict[tuple, list[int]] = {}
        for i, c in enumerate(clips):
            sizes.setdefault(c.shape[1:], []).append(i)
        for members in sizes.values():
            out = runtime.run_frames(np.concatenate([clips[i] for i in members]))
            offset = 0
            for i in members:
                logits[bounds[i]:bounds[i + 1]] = out[offset:offset + counts[i]]
                offset += counts[i]
    else:
        logits = runtime.run_batches(np.concatenate(clips), batch_size)
    return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class VideoClassifier:
    """Joins a runtime (any backend), the shared preprocessor and the labels: video in, top-k out.

    The preprocessor and labels default to what the runtime carries (a checkpoint's
    ``preprocessor_config.json``, or an exported file's metadata). With ``num_clips > 1`` the video is
    read as that many temporal clips and their logits are averaged before the softmax, as the ViViT
    paper evaluates. ``read_options``: how frames are read from files (rotation, the frame-size limit).
    """

    def __init__(
        self,
        runtime: "Runtime",
        preprocessor: VideoPreprocessor | None = None,
        id2label: dict[int, str] | None = None,
        read_options: ReadOptions | None = None,
    ):
        if preprocessor is None:
            if runtime.preprocessor is None:
                raise ConfigError(f"{runtime.source} carries no preprocessor config; pass a VideoPreprocessor")
            preprocessor = VideoPreprocessor(runtime.preprocessor)
        self.runtime = runtime
        self.preprocessor = preprocessor
        self.id2label = id2label if id2label is not None else runtime.id2label
        self.num_frames = runtime.config.num_frames
        self.read_options = read_options or ReadOptions()

    @classmethod
    def from_pretrained(
        cls, target: str | os.PathLike, backend: str | None = None, read_options: ReadOptions | None = None,
        **runtime_kwargs: Any
    ) -> "VideoClassifier":
        """Load ``target`` with :func:`vivit_deploy.runtimes.load_runtime` (checkpoint dir, Hub id or .onnx)."""
        from vivit_deploy.runtimes import load_runtime

        return cls(load_runtime(target, backend, **runtime_kwargs), read_options=read_options)

    @property
    def _sends_frames(self) -> bool:
        """A runtime that preprocesses on its side (a Triton model with the uint8-frames ensemble) gets the frames
        themselves, when this classifier uses the runtime's own preprocessing."""
        return self.runtime.takes_frames and self.preprocessor.config == self.runtime.preprocessor

    @property
    def sends_files(self) -> bool:
        """A runtime that reads video files on its side (a Triton model with its video model) gets the file itself,
        when this classifier uses the runtime's own preprocessing: nothing is decoded here (the server's reader applies
        the rotation asked for here, and its own frame-size limit)."""
        return self.runtime.takes_files and self.preprocessor.config == self.runtime.preprocessor

    def read(self, path: str | os.PathLike, *, num_clips: int = 1, sampling: str = "uniform",
             frame_sample_rate: int = 4) -> Clips:
        """The clips of a video file as this classifier runs them: each frame preprocessed as it is decoded (so a
        4K file costs the model's input plus a few frames), or uint8 frames for a runtime that preprocesses; with
        what the reading found (damaged frames replaced, truncation)."""
        if sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        return decode_clips(as_source(path), self.num_frames, num_clips=num_clips, sampling=sampling,
                            frame_sample_rate=frame_sample_rate, options=self.read_options,
                            transform=None if self._sends_frames else self.preprocessor.frame)

    def logits(self, clips: np.ndarray) -> np.ndarray:
        """Logits (num_clips, num_labels) float32 for uint8 clips (num_clips, T, H, W, 3), or clips ``read`` made."""
        clips = np.asarray(clips)
        if self._sends_frames:
            return self.runtime.run_frames(clips)
        return self.runtime.run_batches(clips if clips.dtype == np.float32 else self.preprocessor(clips))

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
        if isinstance(video, (str, os.PathLike, VideoBytes)):
            return self.classify_file(video, top_k=top_k, num_clips=num_clips, sampling=sampling,
                                      frame_sample_rate=frame_sample_rate)[0]
        clips = video if video.ndim == 5 else video[None]
        return top_predictions(self.logits(clips), self.id2label, top_k)

    def classify_file(self, video: str | os.PathLike | VideoBytes, *, top_k: int = 5, num_clips: int = 1,
                      sampling: str = "uniform", frame_sample_rate: int = 4) -> tuple[list[Prediction], int]:
        """Top-k predictions for a video file and how many of its sampled frames were damaged and replaced (each
        reading that found damage warns once, ``DamagedVideoWarning``). A runtime that reads files itself (``sends_files``)
        gets the file; otherwise it is read and preprocessed here."""
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {top_k}")
        if self.sends_files:
            served = self.runtime.run_video(video, num_clips=num_clips, sampling=sampling,
                                            frame_sample_rate=frame_sample_rate, autorotate=self.read_options.autorotate)
            if served.notes:
                warnings.warn(f"{video}: {served.notes}", DamagedVideoWarning, stacklevel=2)
            return top_predictions(served.logits[None], self.id2label, top_k), served.damaged_frames
        read = self.read(video, num_clips=num_clips, sampling=sampling, frame_sample_rate=frame_sample_rate)
        read.warn(video)
        return top_predictions(self.logits(read.array), self.id2label, top_k), read.replaced

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> "VideoClassifier":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
