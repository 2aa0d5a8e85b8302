"""Opening untrusted video files: the one place FFmpeg's and PyAV's failures become our typed error.

Users point the toolkit at years of camera, phone, broadcast and scraped files. Every path that reads a
file (``predict``, ``classify`` and its timelines, ``stream`` on a file, calibration) opens it here, so
each one gets the same answer: the file opened and checked, or a :class:`VideoReadError` whose one line
names the file and a reason a user can act on:

- not a regular file: a directory, a FIFO, a device or a socket is refused before FFmpeg sees it (a FIFO
  would block the reader forever);
- empty (0 bytes); not a container FFmpeg can read; an image (PNG, JPEG, ... : a still, not a video);
- no video stream (``audio only``); a video stream whose codec FFmpeg has no decoder for (``no decoder for
  codec 'xyz1'``);
- a declared frame size past ``max_pixels`` (a 3 MB file can declare 16000x16000 frames: 768 MB each).

A file can also arrive as bytes (``VideoBytes``: what a server received in a request): it is opened from memory with
the same checks and the same decoding, so it gives the frames the file on disk gives.

Metadata that is not UTF-8 (Latin-1 titles from old cameras and editors) never stops a read: it is read
with the undecodable bytes dropped. ``read_error`` turns any failure of the libraries into the same error.
"""

from __future__ import annotations

import gc
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vivit_deploy.errors import ConfigError, VideoReadError

# The largest frame read by default: 8192 x 8192 (a DCI 8K frame is 8192 x 4320). Decoding keeps a few full
# frames; at this size one RGB frame is 201 MB.
DEFAULT_MAX_PIXELS = 8192 * 8192

def library_errors() -> tuple[type[BaseException], ...]:
    """What PyAV and FFmpeg raise on a file they cannot read (read where an exception is caught, so importing this
    module does not import PyAV): turned into VideoReadError; anything else is a bug of ours and propagates."""
    import av

    return (av.error.FFmpegError, OSError, ValueError, EOFError, MemoryError, UnicodeDecodeError, IndexError,
            RuntimeError)

# FFmpeg's demuxers for still images: "image2" (files by suffix) and the "<codec>_pipe" probes.
_IMAGE_DEMUXER = re.compile(r"^(image2|.*_pipe)$")


@dataclass(frozen=True, eq=False)
class VideoBytes:
    """An encoded video held in memory, read as the file it was: ``name`` is how messages name it (a request's file
    name or id). Every reader that takes a path takes one (``read_video``, ``decode_clips``, ``probe``)."""

    data: bytes
    name: str = "video bytes"

    def __str__(self) -> str:
        return self.name

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix


def as_source(path) -> "Path | VideoBytes":
    """``path`` as the readers keep it: a ``VideoBytes`` as it is, anything else as a ``Path``."""
    return path if isinstance(path, VideoBytes) else Path(path)


def _library_input(path) -> Any:
    """What ``av.open`` reads: a new in-memory file over a ``VideoBytes``' data (each opening its own position), or the
    path's name."""
    import io

    return io.BytesIO(path.data) if isinstance(path, VideoBytes) else str(path)


@dataclass(frozen=True)
class ReadOptions:
    """How a file's frames are made, the same on every path (``predict``, ``classify``, ``stream``).

    ``autorotate``: apply the rotation a phone records in the stream's display matrix, so frames are upright
    as ffmpeg's command line shows them (its default). ``max_pixels``: refuse frames larger than this, declared
    or decoded.
    """

    autorotate: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")


def check_path(path: Path) -> None:
    """Refuse what is not a regular, non-empty file before any library opens it (quick, never blocks)."""
    if isinstance(path, VideoBytes):
        if not isinstance(path.data, (bytes, bytearray, memoryview)):
            raise VideoReadError(f"{path}: the video must be bytes, got {type(path.data).__name__}")
        if not len(path.data):
            raise VideoReadError(f"{path}: empty (0 bytes)")
        return
    try:
        info = path.stat()
    except FileNotFoundError:
        raise VideoReadError(f"{path}: no such file") from None
    except OSError as exc:
        raise VideoReadError(f"{path}: cannot be read ({reason(exc)})") from None
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        raise VideoReadError(f"{path}: is a directory, not a video file (classify reads directories)")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise VideoReadError(f"{path}: is {kind}, not a video file")
    if info.st_size == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoReadError(f"{path}: permission denied")


def open_container(path: Path, options: ReadOptions) -> Any:
    """The PyAV container of ``path`` with its first video stream checked; the caller closes it."""
    import av

    check_path(path)
    try:
        container = av.open(_library_input(path), metadata_errors="ignore")
    except av.error.EOFError as exc:
        raise read_error(path, exc, "no video frames: the file ends before its first one") from None
    except library_errors() as exc:  # FFmpeg's and PyAV's errors alike: the file is not one we can read
        raise read_error(path, exc, "not a video FFmpeg can read") from None
    try:
        check_streams(path, container, options)
    except BaseException:
        release(container)
        raise
    return container


def release(container: Any) -> None:
    """Close ``container`` and free its decoder's frames now. PyAV's container and its streams refer to each other, so
    closing leaves the codec context, and FFmpeg's pool of decoded frames it holds (hundreds of MB for 4K and 8K),
    to Python's cycle collector, which may not run for a long while: collecting the youngest objects (where a
    container just used sits, a few ms) hands the memory back at once."""
    container.close()
    gc.collect(0)


def check_streams(path: Path, container: Any, options: ReadOptions) -> None:
    """The container holds a decodable video stream (not a still image) of at most ``max_pixels`` pixels."""
    name = container.format.name if container.format is not None else ""
    if _IMAGE_DEMUXER.match(name or ""):
        kind = name.removesuffix("_pipe").upper() if name != "image2" else as_source(path).suffix.lstrip(".").upper() or "image"
        raise VideoReadError(f"{path}: an image ({kind}), not a video")
    if not container.streams.video:
        if container.streams.audio:
            raise VideoReadError(f"{path}: audio only, no video stream")
        raise VideoReadError(f"{path}: no video stream (or only one without frames)")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VideoReadError(f"{path}: no decoder for codec {unknown_codec(path)}")
    width, height = stream.codec_context.width, stream.codec_context.height
    check_size(path, width, height, options.max_pixels)


def check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise VideoReadError(f"{path}: frame size {width}x{height} exceeds the limit of {max_pixels} pixels "
                             "(max_pixels=)")


def unknown_codec(path: Path) -> str:
    """What FFmpeg calls a stream it cannot decode: ``'XYZ1'`` (its FourCC), or a description without one.

    PyAV exposes no codec for such a stream; FFmpeg names the tag in the log line of its probe ("Could not find
    codec parameters for stream 0 (Video: none (XYZ1 / 0x...))"), so the file is opened once more with FFmpeg's
    log read (PyAV keeps it off otherwise) for this message only."""
    import av
    import av.logging

    previous, skipped = av.logging.get_level(), av.logging.get_skip_repeated()
    logs: list = []
    try:
        # PyAV drops a log line identical to the one before: the same file read twice in a row (a retry, a server sent
        # it twice) would otherwise lose the line that names its codec
        av.logging.set_skip_repeated(False)
        av.logging.set_level(av.logging.INFO)
        with av.logging.Capture(local=True) as logs:
            av.open(_library_input(path), metadata_errors="ignore").close()
    except Exception:  # noqa: BLE001  the description is a courtesy; its absence is not an error
        pass
    finally:
        av.logging.set_level(previous)
        av.logging.set_skip_repeated(skipped)
    text = " ".join(str(entry[-1]) for entry in logs)
    tag = re.search(r"Video: (\w+) \(([^/()]{1,4}) / 0x[0-9A-Fa-f]+\)", text)
    if tag:
        return f"'{tag.group(2).strip()}'"
    named = re.search(r"Video: (\w+)", text)
    if named and named.group(1) != "none":
        return f"'{named.group(1)}'"
    return "of the video stream (FFmpeg does not know it)"


def reason(exc: BaseException) -> str:
    """FFmpeg's (or the OS's) reason for ``exc`` on one line, for the message of our own error."""
    if isinstance(exc, MemoryError):
        return "out of memory"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def read_error(path: Path, exc: BaseException, what: str) -> VideoReadError:
    """Our error for a library failure while reading ``path``: ``what`` went wrong, and the library's reason."""
    if isinstance(exc, VideoReadError):
        return exc
    return VideoReadError(f"{path}: {what} ({reason(exc)})")
