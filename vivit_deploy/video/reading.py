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
    threads: int = 0,
    seek: bool = True,
) -> np.ndarray:
    """Decode ``num_clips`` temporal clips: uint8 RGB (num_clips, num_frames, height, width, 3).

    Only the frames the clips use are converted to RGB. When they are sparse (gaps of at least
    ``SEEK_MIN_GAP`` frames) the reader seeks to the keyframe before each one instead of decoding
    everything in between, so the cost follows what is sampled rather than the video's length; the
    frames are the same as decoding front to back, which is what it falls back to whenever the
    container's timestamps cannot prove that (``seek=False`` forces it). ``threads`` is FFmpeg's
    decoding thread count (0: its own choice, one per core).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    path = Path(path)
    if not path.exists():
        raise VideoReadError(f"{path}: no such file")
    if not path.is_file():
        raise VideoReadError(f"{path}: not a file")
    container = _open(path)  # reused for a front-to-back decode: opening probes the stream, which costs
    try:                     # as much as decoding a few small frames
        stream = container.streams.video[0]
        total = int(stream.frames) if stream.frames else count_frames(path)
        indices = sample_indices(total, num_frames, sampling=sampling, frame_sample_rate=frame_sample_rate, num_clips=num_clips)
        wanted = set(indices.ravel().tolist())
        frames, decoded = _decode_wanted(path, container, wanted, total, threads, seek)
    finally:
        container.close()
    if len(frames) < len(wanted):
        if decoded < total:
            # The container announced more frames than the stream holds: sample again from what is there.
            if decoded == 0:
                raise VideoReadError(f"{path}: the video stream has no decodable frames")
            indices = sample_indices(decoded, num_frames, sampling=sampling, frame_sample_rate=frame_sample_rate, num_clips=num_clips)
            frames, decoded = _decode(path, set(indices.ravel().tolist()), threads)
    return np.stack([np.stack([frames[i] for i in row]) for row in indices.tolist()])


def read_frames(path: str | os.PathLike, indices, *, threads: int = 0, seek: bool = True) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed): uint8 RGB (len(indices), H, W, 3).

    The same decoding as ``read_clips`` (seeking to keyframes past long gaps, identical frames either way):
    what a window of a long video (``time_windows``) reads."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file")
    wanted = set(int(i) for i in indices)
    container = _open(path)
    try:
        total = int(container.streams.video[0].frames) or count_frames(path)
        frames, _ = _decode_wanted(path, container, wanted, total, threads, seek)
    finally:
        container.close()
    missing = sorted(wanted - set(frames))
    if missing:
        raise VideoReadError(f"{path}: frame {missing[0]} could not be decoded (the video holds fewer frames)")
    return np.stack([frames[int(i)] for i in indices])


def probe(path: str | os.PathLike) -> tuple[int, float]:
    """(frames, frames per second) of a video's first video stream, from its header (counted when missing)."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        total = int(stream.frames) if stream.frames else None
    finally:
        container.close()
    if not rate:
        raise VideoReadError(f"{path}: the video stream has no frame rate, so it has no timeline")
    return total or count_frames(path), float(rate)


def time_windows(total_frames: int, fps: float, window: float, hop: float, num_frames: int) -> list[tuple[float, float, list[int]]]:
    """The windows of a video: every ``hop`` seconds one of ``window`` seconds, as (start s, end s, frame indices).

    Each window is sampled at the centres of ``num_frames`` equal bins of its span, the frame showing each time
    (frame i shows [i / fps, (i + 1) / fps)): the sampling ``vivit-deploy stream`` applies to a live stream and
    ``sample_indices`` to a file's frames. A video shorter than one window is one window over all of it."""
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive seconds, got {window} and {hop}")
    duration = total_frames / fps
    spans = []
    start = 0.0
    while start + window <= duration + 1e-6:
        spans.append((start, start + window))
        start = round(start + hop, 9)
    if not spans:
        spans = [(0.0, duration)]
    out = []
    for begin, end in spans:
        step = (end - begin) / num_frames
        indices = [min(total_frames - 1, int((begin + (i + 0.5) * step) * fps + 1e-9)) for i in range(num_frames)]
        out.append((round(begin, 6), round(end, 6), indices))
    return out


def _open(path: Path):
    import av

    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: empty file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"{path}: not a readable video ({error_reason(exc)})") from exc
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: has no video stream")
    return container


def error_reason(exc: BaseException) -> str:
    """FFmpeg's (or the OS's) reason for ``exc`` on one line, for the message of our own error."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


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
        raise VideoReadError(f"{path}: corrupt or truncated video ({error_reason(exc)})") from exc
    finally:
        container.close()
    if count == 0:
        raise VideoReadError(f"{path}: the video stream has no frames")
    return count


def _set_threads(stream, threads: int) -> None:
    stream.thread_type = "AUTO"  # frame and slice threads
    stream.codec_context.thread_count = threads


def _decode(path: Path, wanted: set[int], threads: int = 0, container=None) -> tuple[dict[int, np.ndarray], int]:
    """Decode front to back, keeping the frames whose index is in ``wanted``; also return how many were decoded.

    ``container``: one just opened on ``path`` to use (and close) instead of opening the file again.
    """
    import av

    last = max(wanted)
    frames: dict[int, np.ndarray] = {}
    container = container or _open(path)
    index = -1
    try:
        stream = container.streams.video[0]
        _set_threads(stream, threads)
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"{path}: corrupt or truncated video, decoding stopped at frame {index + 1} ({error_reason(exc)})") from exc
    finally:
        container.close()
    return frames, index + 1


# A seek flushes the decoder (and its frame threads); below this many skipped frames decoding on is cheaper.
SEEK_MIN_GAP = 16


def _sparse(wanted: set[int]) -> bool:
    """Whether some needed frame lies far enough past the previous one that a seek could skip work."""
    ordered = sorted(wanted)
    gaps = np.diff([-1, *ordered])
    return bool(gaps.max() > SEEK_MIN_GAP)


def _decode_wanted(path: Path, container, wanted: set[int], total: int, threads: int,
                   seek: bool) -> tuple[dict[int, np.ndarray], int]:
    """The frames in ``wanted`` and how many frames were decoded (``total`` after a seeking decode): seeking past
    long gaps where the timestamps allow it, else front to back through ``container`` (just opened on ``path``)."""
    frames = _decode_seeking(path, wanted, total, threads) if seek and _sparse(wanted) else None
    if frames is not None:
        return frames, total
    return _decode(path, wanted, threads, container)


def _decode_seeking(path: Path, wanted: set[int], total: int, threads: int = 0) -> dict[int, np.ndarray] | None:
    """The frames in ``wanted``, seeking to the keyframe before each one that lies past a long gap.

    Frame index i is the i-th presentation timestamp among the stream's packets, which is the i-th
    frame a front-to-back decode outputs when every packet holds one frame: that is checked (packet
    count equal to the header's frame count, every timestamp present and distinct, a keyframe first)
    and anything else returns None, as does any frame that does not turn up where its timestamp
    says. The caller then decodes front to back, so results never depend on which path ran.
    """
    import av
    from bisect import bisect_right

    try:
        container = _open(path)
    except VideoReadError:
        return None
    try:
        stream = container.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size and not p.is_discard]
        if len(packets) != total or any(pts is None for pts, _ in packets):
            return None
        order = sorted(pts for pts, _ in packets)
        index_of = {pts: i for i, pts in enumerate(order)}
        keyframes = sorted(pts for pts, key in packets if key)
        if len(index_of) != total or not keyframes or keyframes[0] != order[0]:
            return None
        targets = sorted(order[i] for i in wanted)
        wanted_pts = set(targets)

        def keyframe_before(pts: int) -> int:
            return keyframes[bisect_right(keyframes, pts) - 1]

        _set_threads(stream, threads)
        frames: dict[int, np.ndarray] = {}
        position: int | None = None  # index of the last frame decoded
        t = 0
        while t < len(targets):
            key = keyframe_before(targets[t])
            container.seek(key, stream=stream, backward=True)  # also flushes the decoder
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts not in index_of:
                    return None
                if frame.pts < key:
                    continue  # leading pictures of an open GOP: not decodable from this keyframe
                if frame.pts in wanted_pts:
                    frames[index_of[frame.pts]] = frame.to_ndarray(format="rgb24")
                position = index_of[frame.pts]
                while t < len(targets) and index_of[targets[t]] <= position:
                    if index_of[targets[t]] not in frames:
                        return None  # the seek overshot a frame we need
                    t += 1
                if t == len(targets):
                    break
                if index_of[keyframe_before(targets[t])] - position > SEEK_MIN_GAP:
                    break  # the next needed frame is past a keyframe far ahead: seek there
            else:
                break  # end of stream
        return frames if len(frames) == len(wanted) else None
    except av.error.FFmpegError:
        return None  # the front-to-back decode reports the problem with the frame it stopped at
    finally:
        container.close()


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
