"""Where the videos of a corpus job come from: files, directories and manifests, in a stable order.

- a video file: taken as it is, whatever its suffix;
- a directory: searched recursively for files with a video suffix (``video.VIDEO_SUFFIXES``);
- a manifest: ``.txt`` (one path per line; blank lines and ``#`` comments skipped), ``.csv`` or
  ``.parquet`` with a ``path`` column. Relative paths in a manifest are relative to the manifest's
  own directory, so a manifest and its videos can move together.

Every path is made absolute (the row's ``path`` and the key a resumed job matches on), and a video
named twice is classified once. A path in a manifest that does not exist is not an error here: the
job reports it as a row with its error. An input on the command line that does not exist is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from vivit_deploy.errors import ConfigError
from vivit_deploy.video.manifests import MANIFEST_SUFFIXES, manifest_path, read_manifest
from vivit_deploy.video.reading import VIDEO_SUFFIXES


@dataclass(frozen=True)
class TimeWindow:
    """One window of a timeline: its number in the video, its span in seconds, the frames it samples."""

    index: int
    start: float
    end: float
    frames: tuple[int, ...]


@dataclass(frozen=True)
class VideoItem:
    order: int  # position in the job's input, for the order of the final file
    path: str  # absolute
    window: TimeWindow | None = None  # a timeline's window of the video; None: the whole video (or it failed)

    @property
    def key(self) -> str:
        """What identifies its row in the results (the job resumes by it)."""
        return row_key(self.path, None if self.window is None else self.window.index)


def row_key(path: str, window: int | None) -> str:
    return path if window is None else f"{path}#{window}"


def timeline_items(items: list[VideoItem], window: float, hop: float, num_frames: int,
                   progress=None, read_options=None) -> tuple[list[VideoItem], dict[str, str]]:
    """Each video's windows as items (``video.time_windows``, from its frames' timestamps, as a stream of it is cut),
    in order; a video that cannot be probed stays one item, with the reason, to become an error row."""
    from vivit_deploy.errors import VideoReadError
    from vivit_deploy.video.reading import probe, time_windows

    out: list[VideoItem] = []
    failed: dict[str, str] = {}
    for n, item in enumerate(items, 1):
        try:
            info = probe(item.path, read_options)
        except VideoReadError as exc:
            failed[item.path] = str(exc)
            out.append(VideoItem(len(out), item.path))
            continue
        for index, (start, end, frames) in enumerate(time_windows(info.times, info.fps, window, hop, num_frames)):
            out.append(VideoItem(len(out), item.path, TimeWindow(index, start, end, tuple(frames))))
        if progress and n % 100 == 0:
            progress(f"cutting videos into windows: {n}/{len(items)}")
    return out, failed


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[VideoItem]:
    """The videos named by ``inputs``, in the order given (directories sorted), each once."""
    if not inputs:
        raise ConfigError("no inputs: give video files, directories or manifests (.txt, .csv, .parquet)")
    seen: set[str] = set()
    items: list[VideoItem] = []
    for entry in inputs:
        for path in _paths_of(Path(entry)):
            if path not in seen:
                seen.add(path)
                items.append(VideoItem(len(items), path))
    if not items:
        raise ConfigError(f"no videos in {', '.join(map(str, inputs))} (video suffixes: {' '.join(VIDEO_SUFFIXES)})")
    return items


def _paths_of(entry: Path) -> Iterable[str]:
    if entry.is_dir():
        for path in sorted(entry.rglob("*")):
            if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
                yield _absolute(path)
    elif entry.suffix.lower() in MANIFEST_SUFFIXES:
        if not entry.is_file():
            raise FileNotFoundError(f"{entry}: no such manifest")
        for row in read_manifest(entry):
            yield str(manifest_path(entry, row["path"]))
    elif entry.exists():
        yield _absolute(entry)
    else:
        raise FileNotFoundError(f"{entry}: no such video, directory or manifest")


def _absolute(path: Path) -> str:
    return os.path.abspath(path)  # not resolve(): keep the user's symlinks in the names
