"""Where a stream comes from, and opening it with PyAV (FFmpeg).

A source is given as text, as the user typed it, and keeps that text as its name in every record:

- ``rtsp://`` (TCP transport by default: no lost packets on a busy network; ``rtsp+udp://`` asks for UDP),
  ``http(s)://`` (HLS, MJPEG, a progressive file), ``udp://``, ``tcp://``: live, reconnected when they drop;
- a device, ``/dev/videoN`` (Video4Linux2): live;
- a file: read as fast as decoding goes (every window classified, inference paces the reader), or with
  ``realtime`` at its own frame rate, as a live source would arrive (windows skipped when inference is
  slower, like a camera's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vivit_deploy.errors import ConfigError, VivitDeployError
from vivit_deploy.video.opening import reason as error_reason

NETWORK_SCHEMES = ("rtsp", "rtsp+udp", "rtsps", "http", "https", "udp", "tcp", "rtmp", "srt")
OPEN_TIMEOUT = 10.0  # seconds to connect and read the stream's first packets
READ_TIMEOUT = 5.0  # seconds without data before a live source counts as dropped


class SourceError(VivitDeployError, ConnectionError):
    """A stream that cannot be opened or stopped delivering frames."""


@dataclass(frozen=True)
class Source:
    name: str  # as given: the "stream" field of every record
    url: str  # what FFmpeg opens
    kind: str  # "network", "device" or "file"
    live: bool  # frames arrive in real time: windows are skipped, never queued, when inference falls behind
    realtime: bool = False  # a file paced at its own frame rate
    format: str | None = None  # FFmpeg demuxer to force ("v4l2" for a device)
    options: dict[str, str] = field(default_factory=dict)

    @property
    def reconnectable(self) -> bool:
        return self.kind in ("network", "device")


def parse_source(text: str, *, realtime: bool = False) -> Source:
    """The :class:`Source` for ``text``; a file that does not exist is a clear error."""
    text = str(text).strip()
    if not text:
        raise ConfigError("an empty stream source")
    scheme = text.split("://", 1)[0].lower() if "://" in text else None
    if scheme is not None:
        if scheme not in NETWORK_SCHEMES:
            raise ConfigError(f"{text}: unknown stream scheme {scheme}:// (known: {', '.join(s + '://' for s in NETWORK_SCHEMES)}, "
                              "a device /dev/videoN, or a video file)")
        timeout_us = str(int(READ_TIMEOUT * 1e6))
        options: dict[str, str] = {}
        url = text
        if scheme in ("rtsp", "rtsps"):
            options = {"rtsp_transport": "tcp", "timeout": timeout_us}
        elif scheme == "rtsp+udp":
            url = "rtsp://" + text.split("://", 1)[1]
            options = {"rtsp_transport": "udp", "timeout": timeout_us}
        elif scheme in ("udp", "tcp", "srt"):
            options = {"timeout": timeout_us}
        elif scheme in ("http", "https"):
            options = {"rw_timeout": timeout_us}
        return Source(text, url, "network", live=True, options=options)
    if text.startswith("/dev/video"):
        return Source(text, text, "device", live=True, format="v4l2")
    path = Path(text).expanduser()
    if not path.exists():
        raise ConfigError(f"{text}: no such video file (streams are rtsp://, http(s)://, udp://, tcp://, or /dev/videoN)")
    if path.is_dir():
        raise ConfigError(f"{text} is a directory; `vivit-deploy stream` follows one video per source "
                          "(a corpus job with window= makes timelines of many files)")
    return Source(text, os.fspath(path), "file", live=realtime, realtime=realtime)


def open_container(source: Source, options: Any = None) -> Any:
    """The opened PyAV container, or :class:`SourceError` with the reason in one line.

    A file is opened and checked as every reader of files does it (``video.opening``: a FIFO, an image, audio
    only, an unknown codec or a frame past ``max_pixels`` each have their reason); a live source gets the same
    checks of its video stream once connected. ``options``: ``video.ReadOptions``."""
    import av

    from vivit_deploy.errors import VideoReadError
    from vivit_deploy.video.opening import ReadOptions, check_streams, open_container as open_file

    options = options or ReadOptions()
    try:
        if source.kind == "file":
            return open_file(Path(source.url), options)
        try:
            container = av.open(source.url, format=source.format, options=dict(source.options),
                                metadata_errors="ignore", timeout=(OPEN_TIMEOUT, READ_TIMEOUT) if source.live else None)
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{source.name}: cannot open it ({error_reason(exc)})") from exc
        try:
            check_streams(Path(source.name), container, options)
        except BaseException:
            container.close()
            raise
        return container
    except VideoReadError as exc:
        raise SourceError(str(exc)) from None
