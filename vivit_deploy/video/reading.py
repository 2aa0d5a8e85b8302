"""Reading clips from video files with PyAV: which frames to take, and decoding only those.

Two samplings, as in transformers' ViViT docs:
- ``"uniform"``: ``num_frames`` frames spread evenly over the whole video (or over each of
  ``num_clips`` equal segments of it).
- ``"stride"``: ``num_frames`` consecutive frames taken every ``frame_sample_rate`` frames, a window
  of ``num_frames * frame_sample_rate`` frames; several clips are windows spaced evenly over the
  video (the paper evaluates 4 such temporal clips and averages their logits).
A video shorter than what the sampling asks for repeats frames instead of failing.

Opening and checking a file is ``opening``'s (every unreadable file is a ``VideoReadError`` with its reason);
decoding the wanted frames, the same whichever way, and the damage policy are ``decoding``'s.
"""

from __future__ import annotations

import os
import threading
import warnings
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from vivit_deploy.errors import DamagedVideoWarning, VideoReadError
from vivit_deploy.video.decoding import VideoFile
from vivit_deploy.video.opening import ReadOptions

Sampling = Literal["uniform", "stride"]
SAMPLINGS = ("uniform", "stride")
# What a directory search takes for a video (a file named on its own is read whatever its suffix).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")


def sample_indices(
    total_frames: int,
    num_frames: int,
    *,
    sampling: Sampling = "uniform",
    frame_sample_rate: int = 4,
    num_clips: int = 1,
) -> np.ndarray:
    """Frame indices to decode: an int array (num_clips, num_frames), each row in increasing order."""
    if total_frames < 1:
        raise ValueError(f"total_frames must be at least 1, got {total_frames}")
    if num_frames < 1 or num_clips < 1:
        raise ValueError(f"num_frames and num_clips must be at least 1, got {num_frames} and {num_clips}")
    if sampling == "uniform":
        # Clip i takes the centres of num_frames equal bins of segment i.
        segment = total_frames / num_clips
        bins = (np.arange(num_frames) + 0.5) * segment / num_frames
        starts = np.arange(num_clips)[:, None] * segment
        indices = np.floor(starts + bins).astype(np.int64)
    elif sampling == "stride":
        if frame_sample_rate < 1:
            raise ValueError(f"frame_sample_rate must be at least 1, got {frame_sample_rate}")
        window = num_frames * frame_sample_rate
        offsets = np.arange(num_frames) * frame_sample_rate
        if num_clips == 1:
            starts = np.array([max(total_frames - window, 0) // 2])  # the centre window
        else:
            starts = np.linspace(0, max(total_frames - window, 0), num_clips).round().astype(np.int64)
        indices = starts[:, None] + offsets[None, :]
    else:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    return np.clip(indices, 0, total_frames - 1)  # a short video repeats its last frames


@dataclass
class Clips:
    """Decoded clips and what the reading found: ``array`` (num_clips, num_frames, ...) holds each sampled frame as
    the ``transform`` made it (uint8 RGB (H, W, 3) without one)."""

    array: np.ndarray
    frames: int  # frames in the video, as numbered (see vivit_deploy.video.decoding)
    replaced: int  # sampled positions whose frame was damaged and replaced by the nearest decodable one
    truncated: str | None = None  # how the file breaks off before the frames its header declares

    def warn(self, path) -> None:
        """One :class:`DamagedVideoWarning` when frames were replaced or the file is truncated."""
        notes = self.notes()
        if notes:
            warnings.warn(f"{path}: {notes}", DamagedVideoWarning, stacklevel=3)

    def notes(self) -> str:
        """What the reading found, in words ("" for a clean file): frames replaced, truncation."""
        notes = []
        if self.replaced:
            notes.append(f"{self.replaced} of {self.array.shape[0] * self.array.shape[1]} sampled frames could not be "
                         "decoded (damaged) and were replaced by the nearest decodable frame")
        if self.truncated:
            notes.append(f"{self.truncated}; sampled from the {self.frames} frames it holds")
        return "; ".join(notes)


def read_video(
    path: str | os.PathLike,
    num_frames: int = 32,
    *,
    sampling: Sampling = "uniform",
    frame_sample_rate: int = 4,
    options: ReadOptions | None = None,
) -> np.ndarray:
    """Decode one clip: uint8 RGB frames (num_frames, height, width, 3), upright (see ``ReadOptions``)."""
    return read_clips(path, num_frames, sampling=sampling, frame_sample_rate=frame_sample_rate, num_clips=1,
                      options=options)[0]


def read_clips(
    path: str | os.PathLike,
    num_frames: int = 32,
    *,
    num_clips: int = 4,
    sampling: Sampling = "stride",
    frame_sample_rate: int = 4,
    threads: int = 0,
    seek: bool = True,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    options: ReadOptions | None = None,
) -> np.ndarray:
    """Decode ``num_clips`` temporal clips: uint8 RGB (num_clips, num_frames, height, width, 3).

    With ``transform`` (a function of one uint8 RGB frame (H, W, 3), such as ``VideoPreprocessor.frame``) each
    frame is transformed as soon as it is decoded and the clips hold what it returns: memory then follows the
    output, not the video's resolution. Damaged frames are replaced and reported (``DamagedVideoWarning``; the
    numbers: ``decode_clips``). See ``decode_clips`` for the rest."""
    clips = decode_clips(path, num_frames, num_clips=num_clips, sampling=sampling, frame_sample_rate=frame_sample_rate,
                         threads=threads, seek=seek, transform=transform, options=options)
    clips.warn(path)
    return clips.array


def decode_clips(
    path: str | os.PathLike,
    num_frames: int = 32,
    *,
    num_clips: int = 4,
    sampling: Sampling = "stride",
    frame_sample_rate: int = 4,
    threads: int = 0,
    seek: bool = True,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    options: ReadOptions | None = None,
) -> Clips:
    """``read_clips`` with what the reading found: the clips, the video's frame count, how many sampled frames were
    damaged and replaced, whether the file is truncated.

    Only the frames the clips use are converted. When they are sparse (gaps of at least ``SEEK_MIN_GAP`` frames)
    the reader seeks to the keyframe before each one instead of decoding everything in between, so the cost
    follows what is sampled rather than the video's length. ``threads`` is FFmpeg's decoding thread count (0:
    its own choice, one per core). Neither changes the frames (``vivit_deploy.video.decoding``)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    video = VideoFile(path, options)
    indices = sample_indices(video.total, num_frames, sampling=sampling, frame_sample_rate=frame_sample_rate,
                             num_clips=num_clips)
    sampled_from = video.total
    array, decoded = _decode_into(video, indices, transform, threads, seek)
    if decoded.total != sampled_from:
        # a file without timestamps holds fewer frames than its header said, or its packets are not one frame each:
        # sample again from the frames the decoder gave
        indices = sample_indices(decoded.total, num_frames, sampling=sampling, frame_sample_rate=frame_sample_rate,
                                 num_clips=num_clips)
        array, decoded = _decode_into(video, indices, transform, threads, seek)
    replaced = int(sum(int(i) in decoded.replaced for i in indices.ravel()))
    return Clips(array, decoded.total, replaced, video.truncated)


def read_frames(path: str | os.PathLike, indices, *, threads: int = 0, seek: bool = True,
                transform: Callable[[np.ndarray], np.ndarray] | None = None,
                options: ReadOptions | None = None) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed): uint8 RGB (len(indices), H, W, 3), or what
    ``transform`` makes of each.

    The same decoding as ``read_clips`` (seeking past long gaps, damaged frames replaced and reported): what a
    window of a long video (``time_windows``) reads."""
    clips = decode_frames(path, indices, threads=threads, seek=seek, transform=transform, options=options)
    clips.warn(path)
    return clips.array[0]


def decode_frames(path: str | os.PathLike, indices, *, threads: int = 0, seek: bool = True,
                  transform: Callable[[np.ndarray], np.ndarray] | None = None,
                  options: ReadOptions | None = None) -> Clips:
    """``read_frames`` with what the reading found, as one clip (1, len(indices), ...)."""
    video = VideoFile(path, options)
    wanted = set(int(i) for i in indices)
    beyond = sorted(i for i in wanted if not 0 <= i < video.total)
    if beyond:
        raise VideoReadError(f"{path}: frame {beyond[0]} is not in the video (it holds {video.total} frames)")
    order = np.asarray([[int(i) for i in indices]])
    array, decoded = _decode_into(video, order, transform, threads, seek)
    return Clips(array, decoded.total, int(sum(int(i) in decoded.replaced for i in order.ravel())), video.truncated)


def _decode_into(video: VideoFile, indices: np.ndarray, transform, threads: int, seek: bool):
    """Decode the frames ``indices`` (an int array) names straight into one output array of ``indices``' shape plus
    a frame's: each frame is written to its places as it is converted, so nothing else holds it (a 4K clip is
    800 MB; a second copy, or stacking, would double that). Returns the array and the ``Decoded``."""
    slots: dict[int, list[tuple[int, ...]]] = {}
    for position, number in np.ndenumerate(indices):
        slots.setdefault(int(number), []).append(position)
    out: list[np.ndarray] = []
    lock = threading.Lock()

    def place(number: int, frame: np.ndarray):
        if number not in slots:
            return frame  # a replacement for a damaged frame, placed below
        with lock:
            if not out:
                out.append(np.empty((*indices.shape, *frame.shape), frame.dtype))
        for position in slots[number]:
            out[0][position] = frame
        return slots[number][0]  # where it is

    decoded = video.decode(set(slots), transform, threads=threads, seek=seek, keep=place)
    missing = sorted(set(slots) - set(decoded.frames))
    if missing:
        raise VideoReadError(f"{video.path}: frame {missing[0]} could not be decoded (the video holds "
                             f"{decoded.total} frames)")
    for number, source in decoded.replaced.items():
        value = decoded.frames[source]
        frame = out[0][value] if isinstance(value, tuple) else value
        if not out:  # every wanted frame was damaged: the first replacement sets the output's shape
            out.append(np.empty((*indices.shape, *frame.shape), frame.dtype))
        for position in slots[number]:
            out[0][position] = frame
    return out[0], decoded


@dataclass(frozen=True)
class VideoInfo:
    """A video's timeline: how many frames, their nominal rate, and when each is shown."""

    frames: int
    fps: float  # the stream's average (else guessed) frame rate
    times: np.ndarray  # seconds from the first frame at which each frame is shown (its timestamps)


def probe(path: str | os.PathLike, options: ReadOptions | None = None) -> VideoInfo:
    """The timeline of a video's first video stream, from its packets' timestamps (one demux, no decoding)."""
    video = VideoFile(path, options)
    times = video.times()
    fps = video.fps or (1 / float(np.median(np.diff(times))) if len(times) > 1 else None)
    if not fps:
        raise VideoReadError(f"{path}: the video stream has no frame rate, so it has no timeline")
    return VideoInfo(video.total, float(fps), times)


def time_windows(times, fps: float, window: float, hop: float, num_frames: int) -> list[tuple[float, float, list[int]]]:
    """The windows of a video: every ``hop`` seconds one of ``window`` seconds, as (start s, end s, frame indices).

    ``times``: when each frame is shown (``VideoInfo.times``; an int is taken as that many frames at ``fps``). Each
    window is sampled at the centres of ``num_frames`` equal bins of its span, the frame showing each time (frame
    i shows from its time to the next frame's; the last one for one frame interval, 1 / ``fps``): the sampling
    ``vivit-deploy stream`` applies to a live stream and ``sample_indices`` to a file's frames. A video shorter than
    one window is one window over all of it."""
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive seconds, got {window} and {hop}")
    times = np.arange(times) / fps if isinstance(times, (int, np.integer)) else np.asarray(times, np.float64)
    total = len(times)
    duration = float(times[-1]) + 1 / fps
    step = window / num_frames
    spans = []
    start = 0.0
    # a window is there when it has begun by the last frame and the last frame still shows at its last sample: what a
    # stream of the file hands over at its end (its last frame shows for one frame interval more)
    while start <= float(times[-1]) + 1e-9 and start + window - step / 2 < duration - 1e-9:
        spans.append((start, start + window))
        start = round(start + hop, 9)
    if not spans:
        spans = [(0.0, duration)]
    out = []
    for begin, end in spans:
        step = (end - begin) / num_frames
        samples = [begin + (i + 0.5) * step for i in range(num_frames)]
        indices = [min(total - 1, max(0, bisect_right(times, t + 1e-9) - 1)) for t in samples]
        out.append((round(begin, 6), round(end, 6), indices))
    return out


def count_frames(path: str | os.PathLike, options: ReadOptions | None = None) -> int:
    """Number of frames in the first video stream, as ``read_clips`` numbers them (its packets; no decoding)."""
    return VideoFile(path, options).total


def write_video(
    path: str | os.PathLike, frames: np.ndarray, fps: int = 8, *, crf: int = 18, keyint: int | None = None,
    bframes: bool = False,
) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) as H.264 mp4 (even height and width, as yuv420p requires).

    ``keyint`` is the largest distance between keyframes (x264's default is 250); ``bframes`` allows
    B-frames, so presentation order differs from decoding order as in most real videos.
    """
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 in yuv420p needs an even frame size, got {h}x{w}")
    path = Path(path)
    options = {"crf": str(crf), "preset": "medium"}
    if not bframes:
        options["tune"] = "zerolatency"
    if keyint is not None:
        options["x264-params"] = f"keyint={keyint}:min-keyint={min(keyint, 25)}"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
