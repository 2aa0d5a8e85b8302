"""Odd videos, as users bring them: made here with PyAV (always), and with Debian's ffmpeg where it is installed.

Each builder writes one small file of a kind the reader must answer for: rotated phone videos, 10-bit and HDR,
variable frame rate, interlaced, odd sizes, grayscale, alpha, a resolution change midway, Latin-1 metadata, an
unknown codec, damaged files. The content is random texture plus a white square in the top-left corner of the
stored picture, so a rotation shows where the corner went.
"""

from __future__ import annotations

import shutil
from fractions import Fraction
import subprocess
from pathlib import Path

import numpy as np
import pytest

FFMPEG = shutil.which("ffmpeg")
requires_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (`apt-get install ffmpeg`; .ci/run does)")


def picture(index: int, height: int, width: int) -> np.ndarray:
    """Frame ``index``: texture that changes every frame, a white corner marker at the top left."""
    frame = np.random.default_rng(index).integers(0, 200, (height, width, 3), dtype=np.uint8)
    frame[: height // 4, : width // 4] = 255
    return frame


def encode(path: Path, codec: str, pix_fmt: str, *, width: int = 64, height: int = 48, frames: int = 20, rate: int = 10,
           options: dict | None = None, rotation: tuple | None = None, pts: list[int] | None = None,
           container_format: str | None = None, metadata: dict | None = None, metadata_encoding: str = "utf-8",
           colors: dict | None = None, container_options: dict | None = None) -> Path:
    """Encode ``frames`` pictures with PyAV (its bundled FFmpeg), with the odd settings asked for."""
    import av

    with av.open(str(path), "w", format=container_format, metadata_encoding=metadata_encoding,
                 options=container_options or {}) as container:
        for key, value in (metadata or {}).items():
            container.metadata[key] = value
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if options:
            stream.options = options
        for key, value in (colors or {}).items():
            setattr(stream.codec_context, key, value)
        if rotation is not None:
            stream.set_display_rotation(*rotation)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(picture(i, height, width), format="rgb24")
            if pts is not None:  # timestamps in 1/rate seconds
                frame.pts, frame.time_base = pts[i], Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def h264(path: Path, **kwargs) -> Path:
    return encode(path, "libx264", "yuv420p", **kwargs)


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-loglevel", "error", "-y", *args], check=True, timeout=120)


def zero_block(source: Path, target: Path, at: float, size: int = 1024) -> Path:
    """``source`` with ``size`` bytes zeroed at ``at`` (a fraction of its length)."""
    data = bytearray(source.read_bytes())
    start = int(len(data) * at)
    data[start:start + size] = bytes(len(data[start:start + size]))
    target.write_bytes(bytes(data))
    return target


@pytest.fixture(scope="session")
def odd(tmp_path_factory) -> dict[str, Path]:
    """The corpus: name -> file. Readable kinds first, then the ones that must be refused."""
    d = tmp_path_factory.mktemp("odd-videos")
    files: dict[str, Path] = {}
    files["plain"] = h264(d / "plain.mp4")
    for name, degrees in {"rotate-90": 90, "rotate-270": -90, "rotate-180": 180}.items():  # counter-clockwise
        files[name] = h264(d / f"{name}.mp4", rotation=(degrees,))
    files["10-bit"] = encode(d / "ten-bit.mp4", "libx264", "yuv420p10le")
    files["hdr-hevc"] = encode(d / "hdr.mp4", "libx265", "yuv420p10le", options={"x265-params": "log-level=error"},
                               colors={"color_primaries": 9, "color_trc": 16, "colorspace": 9})  # BT.2020, PQ
    files["vfr"] = h264(d / "vfr.mp4", rate=1000, pts=[round(1000 * t) for t in np.cumsum([0] + [0.05] * 9 + [0.2] * 10)])
    files["interlaced"] = h264(d / "interlaced.mp4", options={"x264-params": "tff=1", "flags": "+ilme+ildct"})
    files["odd-size"] = encode(d / "odd-size.mkv", "ffv1", "yuv444p", width=65, height=47)
    files["gray"] = encode(d / "gray.mkv", "ffv1", "gray")
    files["alpha"] = encode(d / "alpha.mov", "qtrle", "argb")
    files["alpha-vp9"] = encode(d / "alpha.webm", "libvpx-vp9", "yuva420p")
    files["b-frames"] = h264(d / "b-frames.mp4", frames=120, options={"bf": "3", "g": "24"},
                             container_options={"movflags": "faststart"})  # the index first, as streamed files have
    small = h264(d / "small.ts", width=64, height=48, frames=10, container_format="mpegts")
    large = h264(d / "large.ts", width=96, height=64, frames=10, container_format="mpegts")
    files["size-change"] = d / "size-change.ts"
    files["size-change"].write_bytes(small.read_bytes() + large.read_bytes())  # two broadcasts joined
    files["latin-1-metadata"] = h264(d / "latin1.mp4", metadata={"title": "café", "comment": "Zürich"},
                                     metadata_encoding="latin-1")
    files["zeroed-block"] = zero_block(files["b-frames"], d / "zeroed.mp4", 0.55)
    data = files["b-frames"].read_bytes()
    files["truncated"] = d / "truncated.mp4"  # a download cut short: the index says 120 frames, the data stops
    files["truncated"].write_bytes(data[: int(len(data) * 0.7)])
    ending = files["plain"].read_bytes()  # its index (moov) is at the end: cut, nothing says what it holds
    files["truncated-no-index"] = d / "truncated-no-index.mp4"
    files["truncated-no-index"].write_bytes(ending[: len(ending) // 2])
    mjpeg = encode(d / "mjpeg.avi", "mjpeg", "yuvj420p")
    files["unknown-codec"] = d / "unknown.avi"
    files["unknown-codec"].write_bytes(mjpeg.read_bytes().replace(b"MJPG", b"XYZ1"))
    return files
