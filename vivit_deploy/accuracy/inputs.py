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

    A clip may be seen through several temporal views (``views``, ``compare --clips N``): ``pixel_values`` then holds
    each clip's views one after the other, and a model's answer for the clip is its logits averaged over them, as the
    ViViT paper evaluates. Saved as ``.npz`` so that two machines compare on identical tensors.
    """

    pixel_values: np.ndarray  # (N * views, T, C, H, W) float32
    labels: np.ndarray  # (N,) int64, UNLABELLED where unknown
    names: tuple[str, ...]
    source: str = ""  # how the inputs were made, for the report
    views: int = 1  # temporal views per clip, consecutive in pixel_values

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.pixel_values.ndim != 5 or len(self.pixel_values) == 0:
            raise InputShapeError(f"compare inputs must be a non-empty (N, T, C, H, W) array, got shape {self.pixel_values.shape}")
        if self.views < 1 or len(self.pixel_values) != n * self.views or self.labels.shape != (n,) or len(self.names) != n:
            raise InputShapeError(f"{len(self.pixel_values)} clip views ({self.views} per clip) but {self.labels.shape} "
                                  f"labels and {len(self.names)} names")

    def __len__(self) -> int:
        return len(self.labels)

    def per_clip(self, logits: np.ndarray) -> np.ndarray:
        """A model's logits for the clips: its logits for every view (N * views, L) averaged over each clip's views."""
        if self.views == 1:
            return logits
        return logits.reshape(len(self.labels), self.views, -1).mean(axis=1)

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
                    names=np.array(self.names, dtype=str), source=np.array(self.source), views=np.array(self.views),
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
                views = int(data["views"]) if "views" in data else 1
                clips = len(pixel_values) // max(views, 1)
                labels = data["labels"] if "labels" in data else np.full(clips, UNLABELLED)
                names = tuple(str(s) for s in data["names"]) if "names" in data else tuple(f"clip{i}" for i in range(clips))
                source = str(data["source"]) if "source" in data else str(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputShapeError(f"{path}: not an inputs file saved by `compare --save-inputs` ({exc})") from exc
        return cls(pixel_values.astype(np.float32, copy=False), labels.astype(np.int64), names, source, views)


def random_inputs(config, count: int, seed: int = 0, views: int = 1) -> CompareInputs:
    """Unlabelled clips drawn from N(0, 1), about the range a normalised video has (``views`` independent draws each)."""
    if count < 1:
        raise ConfigError(f"the number of random samples must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    pixel_values = rng.standard_normal((count * views, *config.input_shape), dtype=np.float32)
    return CompareInputs(pixel_values, np.full(count, UNLABELLED, dtype=np.int64),
                         tuple(f"random{i}" for i in range(count)), f"{count} random clips (seed {seed})", views)


def synthetic_inputs(config, preprocessor, count: int, seed: int | None = None, views: int = 1) -> CompareInputs:
    """Labelled clips of the motion task the demo model learned (by default its held-out set's seed), so
    accuracy per backend and precision is measured on hundreds of clips, not 12 videos; ``views`` temporal views of
    each rendered video."""
    from vivit_deploy.demo.motion import HELDOUT_SEED, LABELS, labelled_clips

    if count < 1:
        raise ConfigError(f"the number of synthetic clips must be at least 1, got {count}")
    if [config.id2label.get(i) for i in range(len(LABELS))] != list(LABELS) or config.num_labels != len(LABELS):
        raise ConfigError("synthetic clips are labelled with the demo task's classes "
                          f"({', '.join(LABELS)}); this model's labels are others")
    seed = HELDOUT_SEED if seed is None else seed
    pixel_values, labels = labelled_clips(count, seed, config.num_frames, preprocessor, views=views)
    return CompareInputs(pixel_values, labels, tuple(f"synthetic{i}" for i in range(count)),
                         f"{count} synthetic motion clips (seed {seed})", views)


def video_inputs(
    videos: Sequence[tuple[Path, str | None]], config, preprocessor, source: str,
    progress: Callable[[str], None] | None = None, views: int = 1,
) -> CompareInputs:
    """Decode and preprocess each video: one clip sampled over the whole video, or ``views`` clips, each sampled over
    its own equal part of it (temporal views); labels are matched to the model's id2label by name, and a label the
    model does not have is an error (its clips could never be right)."""
    from vivit_deploy.video.reading import read_clips

    if not videos:
        raise ConfigError(f"no videos to compare on in {source}")
    label2id = {label: i for i, label in config.id2label.items()}
    unknown = sorted({label for _, label in videos if label is not None and label not in label2id})
    if unknown:
        raise ConfigError(f"{source}: labels the model does not have: {', '.join(map(repr, unknown[:5]))}"
                          f"{' ...' if len(unknown) > 5 else ''} (its labels: {', '.join(config.id2label.values())})")
    clips, labels = [], []
    for i, (path, label) in enumerate(videos, 1):
        if progress:
            progress(f"preprocessing video {i}/{len(videos)}: {Path(path).name}")
        clips.append(read_clips(path, config.num_frames, num_clips=views, sampling="uniform",
                                transform=preprocessor.frame))
        labels.append(label2id[label] if label is not None else UNLABELLED)
    names = tuple(Path(p).name for p, _ in videos)
    if len(set(names)) < len(names):  # videos of a manifest may share a file name in different directories
        names = tuple(str(p) for p, _ in videos)
    views_note = f", {views} temporal views each" if views > 1 else ""
    return CompareInputs(np.concatenate(clips), np.array(labels, dtype=np.int64), names, f"{source}{views_note}", views)


def videos_in(directory: str | os.PathLike) -> list[tuple[Path, str | None]]:
    """The videos of a directory, with labels from its ``labels.json`` ({file name: label}) when present: then every
    video must have one (a video without is named), and every name in it must be a video there."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory of videos")
    from vivit_deploy.video.reading import VIDEO_SUFFIXES

    videos = [p for p in sorted(directory.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
    labels_file = directory / "labels.json"
    if not labels_file.is_file():
        return [(p, None) for p in videos]
    try:
        labels = json.loads(labels_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{labels_file}: not a JSON object of file name -> label ({exc})") from exc
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError(f"{labels_file}: expected a JSON object of file name -> label (a string)")
    names = {p.name for p in videos}
    missing = [p.name for p in videos if p.name not in labels]
    stray = sorted(set(labels) - names)
    if missing:
        raise ConfigError(f"{labels_file}: no label for {len(missing)} of the {len(videos)} videos ({', '.join(missing[:3])}"
                          f"{' ...' if len(missing) > 3 else ''}); label every video, or move the others out")
    if stray:
        raise ConfigError(f"{labels_file}: labels {len(stray)} file(s) that are not videos in {directory} "
                          f"({', '.join(stray[:3])}{' ...' if len(stray) > 3 else ''})")
    return [(p, labels[p.name]) for p in videos]


def manifest_videos(manifest: str | os.PathLike) -> list[tuple[Path, str | None]]:
    """The videos a manifest (.csv or .parquet with ``path`` and ``label`` columns; .txt: paths only) names, with their
    labels; relative paths are relative to the manifest. A row without a label leaves that clip unlabelled, and an
    unlabelled clip leaves the comparison without accuracy figures."""
    from vivit_deploy.video.manifests import manifest_path, read_manifest

    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no such manifest")
    rows = read_manifest(manifest, ("label",))
    videos = [(manifest_path(manifest, row["path"]), row["label"]) for row in rows]
    absent = [str(p) for p, _ in videos if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{manifest}: {len(absent)} of its {len(videos)} videos do not exist ({absent[0]}"
                                f"{' ...' if len(absent) > 1 else ''})")
    return videos
