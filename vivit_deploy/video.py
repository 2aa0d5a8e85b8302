"""Reading clips from video files with PyAV: which frames to take, and decoding only those.

Two samplings, as in transformers' ViViT docs:
- ``"uniform"``: ``num_frames`` frames spread evenly over the whole video (or over each of
  ``num_clips`` equal segments of it).
- ``"stride"``: ``num_frames`` consecutive frames taken every ``frame_sample_rate`` frames, a window
  of ``num_frames * frame_sample_rate`` frames; several clips are windows spaced evenly over the
  video (the paper evaluates 4 such temporal clips and averages their logits).
A video shorter than what the sampling asks for repeats frames instead of failing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from vivit_deploy.errors import VideoReadError

Sampling = Literal["uniform", "stride"]
SAMPLINGS = ("uniform", "stride")


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


def read_video(
    path: str | os.PathLike,
    num_frames: int = 32,
    *,
    sampling: Sampling = "uniform",
    frame_sample_rate: int = 4,
) -> np.ndarray:
    """Decode one clip: uint8 RGB frames (num_frames, height, width, 3)."""
    return read_clips(path, num_frames, sampling=sampling, frame_sample_rate=frame_sample_rate, num_clips=1)[0]


def read_clips(
    path: str | os.PathLike,
    num_frames: int = 32,
    *,
    num_clips: int = 4,
    sampling: Sampling = "stride",
    frame_sample_rate: int = 4,
) -> np.ndarray:
    """Decode ``num_clips`` temporal clips: uint8 RGB (num_clips, num_frames, height, width, 3).

    The file is decoded once, front to back, keeping only the frames the clips use.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    path = Path(path)
    if not path.exists():
        raise VideoReadError(f"{path}: no such file")
    if not path.is_file():
        raise VideoReadError(f"{path}: not a file")
    total = count_frames(path)
    indices = sample_indices(total, num_frames, sampling=sampling, frame_sample_rate=frame_sample_rate, num_clips=num_clips)
    frames, decoded = _decode(path, set(indices.ravel().tolist()))
    if decoded < total and any(i not in frames for i in indices.ravel().tolist()):
        # The container announced more frames than the stream holds: sample again from what is there.
        if decoded == 0:
            raise VideoReadError(f"{path}: the video stream has no decodable frames")
        indices = sample_indices(decoded, num_frames, sampling=sampling, frame_sample_rate=frame_sample_rate, num_clips=num_clips)
        frames, decoded = _decode(path, set(indices.ravel().tolist()))
    return np.stack([np.stack([frames[i] for i in row]) for row in indices.tolist()])


def _open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"{path}: not a readable video ({_reason(exc)})") from exc
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: has no video stream")
    return container


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames in the first video stream: from the header, else by demuxing (no decoding)."""
    import av

    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        count = 0
        for packet in container.demux(stream):
            if packet.size:
                count += 1
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"{path}: corrupt or truncated video ({_reason(exc)})") from exc
    finally:
        container.close()
    if count == 0:
        raise VideoReadError(f"{path}: the video stream has no frames")
    return count


def _decode(path: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode front to back, keeping the frames whose index is in ``wanted``; also return how many were decoded."""
    import av

    last = max(wanted)
    frames: dict[int, np.ndarray] = {}
    container = _open(path)
    index = -1
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"{path}: corrupt or truncated video, decoding stopped at frame {index + 1} ({_reason(exc)})") from exc
    finally:
        container.close()
    return frames, index + 1


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, *, crf: int = 18) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) as H.264 mp4 (even height and width, as yuv420p requires)."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 in yuv420p needs an even frame size, got {h}x{w}")
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium", "tune": "zerolatency"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
