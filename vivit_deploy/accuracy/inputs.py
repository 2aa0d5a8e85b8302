"""The clips a comparison runs on: sample videos, a directory of videos, labelled synthetic clips of the demo
task, random clips, or tensors saved by another run, with true labels where they are known.

Saved as ``.npz`` (``--save-inputs``) so that two machines compare on identical tensors; the int8 and fp8
exports calibrate on the same files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vivit_deploy.errors import ConfigError, InputShapeError

UNLABELLED = -1


@dataclass(frozen=True)
class CompareInputs:
    """Preprocessed clips to compare on, with optional true labels (-1 where unknown) and a name per clip.

    Saved as ``.npz`` so that two machines compare on identical tensors.
    """

    pixel_values: np.ndarray  # (N, T, C, H, W) float32
    labels: np.ndarray  # (N,) int64, UNLABELLED where unknown
    names: tuple[str, ...]
    source: str = ""  # how the inputs were made, for the report

    def __post_init__(self) -> None:
        n = len(self.pixel_values)
        if self.pixel_values.ndim != 5 or n == 0:
            raise InputShapeError(f"compare inputs must be a non-empty (N, T, C, H, W) array, got shape {self.pixel_values.shape}")
        if self.labels.shape != (n,) or len(self.names) != n:
            raise InputShapeError(f"{n} clips but {self.labels.shape} labels and {len(self.names)} names")

    @property
    def labelled(self) -> bool:
        return bool((self.labels != UNLABELLED).all())

    def save(self, path: str | os.PathLike) -> Path:
        from vivit_deploy.files import atomic_write

        path = Path(path)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the temporary name
                np.savez_compressed(
                    f, pixel_values=self.pixel_values, labels=self.labels,
                    names=np.array(self.names, dtype=str), source=np.array(self.source),
                )

        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CompareInputs":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such inputs file")
        try:
            with np.load(path, allow_pickle=False) as data:
                pixel_values = data["pixel_values"]
                labels = data["labels"] if "labels" in data else np.full(len(pixel_values), UNLABELLED)
                names = tuple(str(s) for s in data["names"]) if "names" in data else tuple(f"clip{i}" for i in range(len(pixel_values)))
                source = str(data["source"]) if "source" in data else str(path)
        except (OSError, ValueError, KeyError) as exc:
            raise InputShapeError(f"{path}: not an inputs file saved by `compare --save-inputs` ({exc})") from exc
        return cls(pixel_values.astype(np.float32, copy=False), labels.astype(np.int64), names, source)


def random_inputs(config, count: int, seed: int = 0) -> CompareInputs:
    """Unlabelled clips drawn from N(0, 1), about the range a normalised video has."""
    if count < 1:
        raise ConfigError(f"the number of random samples must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    pixel_values = rng.standard_normal((count, *config.input_shape), dtype=np.float32)
    return CompareInputs(pixel_values, np.full(count, UNLABELLED, dtype=np.int64),
                         tuple(f"random{i}" for i in range(count)), f"{count} random clips (seed {seed})")


def synthetic_inputs(config, preprocessor, count: int, seed: int | None = None) -> CompareInputs:
    """Labelled clips of the motion task the demo model learned (by default its held-out set's seed), so
    accuracy per backend and precision is measured on hundreds of clips, not 12 videos."""
    from vivit_deploy.demo.motion import HELDOUT_SEED, LABELS, labelled_clips

    if count < 1:
        raise ConfigError(f"the number of synthetic clips must be at least 1, got {count}")
    if [config.id2label.get(i) for i in range(len(LABELS))] != list(LABELS) or config.num_labels != len(LABELS):
        raise ConfigError("synthetic clips are labelled with the demo task's classes "
                          f"({', '.join(LABELS)}); this model's labels are others")
    seed = HELDOUT_SEED if seed is None else seed
    pixel_values, labels = labelled_clips(count, seed, config.num_frames, preprocessor)
    return CompareInputs(pixel_values, labels, tuple(f"synthetic{i}" for i in range(count)),
                         f"{count} synthetic motion clips (seed {seed})")


def video_inputs(
    videos: Sequence[tuple[Path, str | None]], config, preprocessor, source: str,
    progress: Callable[[str], None] | None = None,
) -> CompareInputs:
    """Decode and preprocess one clip per video; labels are matched to the model's id2label by name."""
    from vivit_deploy.video.reading import read_video

    if not videos:
        raise ConfigError(f"no videos to compare on in {source}")
    label2id = {label: i for i, label in config.id2label.items()}
    clips, labels = [], []
    for i, (path, label) in enumerate(videos, 1):
        if progress:
            progress(f"preprocessing video {i}/{len(videos)}: {Path(path).name}")
        clips.append(preprocessor(read_video(path, config.num_frames)[None])[0])
        labels.append(label2id.get(label, UNLABELLED) if label is not None else UNLABELLED)
    return CompareInputs(np.stack(clips), np.array(labels, dtype=np.int64), tuple(Path(p).name for p, _ in videos), source)


def videos_in(directory: str | os.PathLike) -> list[tuple[Path, str | None]]:
    """The videos of a directory, with labels from its ``labels.json`` ({file name: label}) when present."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory of videos")
    labels: dict[str, str] = {}
    labels_file = directory / "labels.json"
    if labels_file.is_file():
        try:
            labels = json.loads(labels_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{labels_file}: not a JSON object of file name -> label ({exc})") from exc
        if not isinstance(labels, dict):
            raise ConfigError(f"{labels_file}: expected a JSON object of file name -> label")
    from vivit_deploy.video.reading import VIDEO_SUFFIXES

    return [(p, labels.get(p.name)) for p in sorted(directory.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES]
