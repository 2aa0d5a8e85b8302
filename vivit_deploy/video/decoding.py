"""Decoding the frames a caller wants, the same frames whichever way they are decoded.

Frame numbers. Frame i of a video is the i-th presentation timestamp among its video packets (the packet
index, read by demuxing the file once: a read, no decoding). A file whose packets carry no usable
timestamps (raw streams, some AVI) numbers its frames in the order the decoder outputs them instead.

Every decoder runs on one thread. FFmpeg's own frame and slice threads conceal damage differently from one
thread, and differently from each other, without a word (measured: one zeroed 1 KB block changed 50 frames
with 2 threads and none with 1; the fuzz test in tests/video/ found more), so a damaged file would give
frames that depend on the thread count. Speed comes from elsewhere: the wanted frames are decoded in
stretches, each from the keyframe before it (seeking past long gaps, ``SEEK_MIN_GAP``, so the cost follows
what is sampled rather than the video's length), and the stretches are shared out among several
single-threaded decoders running at once (``threads``), which gives the same frames by construction.

Damage. Anything unusual seen on the way (a packet FFmpeg refuses, a frame it marks corrupt, a frame whose
timestamp is not in the index, a wanted frame that does not come) sends the file to the reference: one
decoder, front to back, every packet on its own, recording which ones are damaged. The damage policy, the
same on every path: best effort. A packet FFmpeg refuses or whose frame it marks corrupt is damaged, and so
is every packet after it up to the next keyframe (they are predicted from it). A wanted frame that is
damaged, or never came out of the decoder, is replaced by the nearest decodable frame before it (the picture
a player keeps showing), else the nearest one after it, and counted: the result says how many sampled
frames were replaced. A video in which no frame decodes is an error. A live stream applies the same rule
as it goes (``DamageTracker``).

Frame by frame (``FrameConverter``): frames are converted to RGB at the size the stream declares (a
stream whose resolution changes midway, as joined broadcast recordings do, has its later frames scaled to
that size, as ffmpeg's command line does), turned upright by the display matrix (``ReadOptions.autorotate``)
and handed to the caller's ``transform`` at once, so a caller that keeps only the preprocessed frames holds a
few full-resolution frames at a time, not the clip.
"""

from __future__ import annotations

import math
import os
import threading
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vivit_deploy.errors import VideoReadError
from vivit_deploy.video.opening import (
    ReadOptions, as_source, library_errors, check_size, open_container, read_error, reason, release,
)

# A seek flushes the decoder; below this many skipped frames decoding on is cheaper.
SEEK_MIN_GAP = 16
# Below this much decoding work (frames) a second decoder costs more than it saves.
MIN_FRAMES_PER_DECODER = 48
# What the frame pools of the decoders working at once may hold when frames are transformed as they come (the
# output is then small, and memory should follow it): a decoder holds about 8 frames of 4:2:0 (measured: 110 MB
# for an H.264 4K stream), so 4K gets two decoders, 8K one. A raw read, whose output is the full frames anyway,
# uses one per core. (One decoder at 4K: 142 MB instead of about 270 over predict's peak on a small file, but
# decoding and preprocessing take as long as decord's decoding alone; docs/video.md has the figures.)
DECODER_MEMORY = 256 << 20


# ---- the packet index ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PacketIndex:
    """The video packets of a file, from one demux: frame i is the packet with the i-th smallest timestamp."""

    decode_pts: tuple[int, ...]  # each packet's presentation timestamp, in decode (file) order
    keyframe: tuple[bool, ...]  # whether each packet (decode order) is a keyframe
    time_base: float  # seconds per timestamp unit
    complete: bool  # the demuxer reached the end of the file (False: the container broke off)
    where: tuple[tuple[int, int], ...] = ()  # each packet's (size, byte position): a seek must find the same packets
    order: tuple[int, ...] = field(init=False)  # timestamps in presentation order

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", tuple(sorted(self.decode_pts)))

    @property
    def total(self) -> int:
        return len(self.decode_pts)

    def frame_of(self) -> dict[int, int]:
        return {pts: i for i, pts in enumerate(self.order)}

    def decode_position(self) -> dict[int, int]:
        return {pts: k for k, pts in enumerate(self.decode_pts)}

    def times(self) -> np.ndarray:
        """Seconds from the first frame at which each frame (presentation order) is shown."""
        order = np.asarray(self.order, np.float64)
        return (order - order[0]) * self.time_base

    def keyframes(self) -> list[int]:
        """Keyframe timestamps, ascending."""
        return sorted(pts for pts, key in zip(self.decode_pts, self.keyframe) if key)

    def tainted(self, damaged: set[int]) -> set[int]:
        """Decode positions of the damaged packets and of every packet after each up to the next keyframe, and of
        that keyframe's leading pictures (decoded after it, shown before it: in an open GOP they are predicted
        from the damaged stretch too)."""
        out: set[int] = set()
        for start in sorted(damaged):
            if start in out:
                continue
            k = start
            while k < self.total and (k == start or not self.keyframe[k]):
                out.add(k)
                k += 1
            if k < self.total:  # k is the next keyframe
                key_pts = self.decode_pts[k]
                k += 1
                while k < self.total and self.decode_pts[k] < key_pts:
                    out.add(k)
                    k += 1
        return out


def index_packets(container: Any, stream: Any) -> tuple[PacketIndex | None, int]:
    """The packet index of ``stream`` (None when its packets carry no usable timestamps) and how many packets it has.

    A demuxer that breaks off midway (a truncated or damaged container) gives the packets before the break."""
    import av

    pts: list[int | None] = []
    keys: list[bool] = []
    where: list[tuple[int, int]] = []
    complete = True
    try:
        for packet in container.demux(stream):
            if packet.size and not packet.is_discard:
                pts.append(packet.pts)
                keys.append(bool(packet.is_keyframe))
                where.append((packet.size, packet.pos if packet.pos is not None else -1))
    except (av.error.FFmpegError, OSError, MemoryError, ValueError):
        complete = False
    usable = pts and all(p is not None for p in pts) and len(set(pts)) == len(pts) and stream.time_base is not None
    if not usable:
        return None, len(pts)
    return PacketIndex(tuple(pts), tuple(keys), float(stream.time_base), complete, tuple(where)), len(pts)


# ---- one decoded frame to what the caller keeps ---------------------------------------------------

# How ffmpeg's command line turns a frame upright, by the name of its filter (transpose=clock, ...).
_UPRIGHT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clock": lambda rgb: np.rot90(rgb, -1),  # a quarter turn clockwise
    "cclock": lambda rgb: np.rot90(rgb, 1),  # a quarter turn counter-clockwise
    "hflip,vflip": lambda rgb: rgb[::-1, ::-1],  # a half turn
}


def display_transform(rotation: float) -> str | None:
    """The turn ffmpeg's command line applies (by default) for a display matrix whose rotation is ``rotation``
    degrees counter-clockwise (``VideoFrame.rotation``), named as ffmpeg names its filter; None when the frame is
    shown as stored. A turn that is not a multiple of 90 degrees is left as stored (ffmpeg would rotate by it, with
    black corners).

    Only the rotation is read: a matrix that also mirrors (which no phone we know of writes) is taken as its
    rotation. Reading the whole matrix through PyAV 18's ``VideoFrame.side_data`` keeps every frame it touches
    alive for good (a reference cycle the collector cannot see; measured: +1 GB over 150 4K frames)."""
    theta = float(-round(rotation))  # clockwise degrees, as ffmpeg computes its turn
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return "clock"
    if abs(theta - 180) < 1:
        return "hflip,vflip"
    if abs(theta - 270) < 1:
        return "cclock"
    return None


class FrameConverter:
    """A decoded frame to what the caller keeps: RGB at the stream's size, upright, then ``transform``.

    ``width`` x ``height`` is the size the stream declares (its first frames'); a frame of another size (a
    resolution change midway) is scaled to it by FFmpeg's scaler. ``threads``: the scaler's threads (0: its
    own choice); the result does not depend on it."""

    def __init__(self, path: Path, options: ReadOptions, width: int, height: int,
                 transform: Callable[[np.ndarray], Any] | None = None, threads: int = 0,
                 keep: Callable[[int, Any], Any] | None = None):
        self.path, self.options, self.transform, self.threads = path, options, transform, threads
        self.width, self.height = width, height
        self.keep = keep  # (frame number, converted frame) -> what the decode holds on to

    def __call__(self, frame: Any, number: int | None = None) -> Any:
        value = self._convert(frame)
        return value if self.keep is None else self.keep(number, value)

    def _convert(self, frame: Any) -> Any:
        check_size(self.path, frame.width, frame.height, self.options.max_pixels)
        if not self.width or not self.height:  # the stream declared no size: its first decoded frame sets it
            self.width, self.height = frame.width, frame.height
        try:
            if (frame.width, frame.height) == (self.width, self.height):
                rgb = frame.to_ndarray(format="rgb24", threads=self.threads)
            else:
                rgb = frame.to_ndarray(width=self.width, height=self.height, format="rgb24", interpolation="BICUBIC",
                                       threads=self.threads)  # bicubic: the scaler ffmpeg inserts
        except MemoryError:
            raise VideoReadError(f"{self.path}: a {frame.width}x{frame.height} frame does not fit in memory "
                                 "(lower max_pixels= to refuse such files quickly)") from None
        if self.options.autorotate and frame.rotation:
            turn = display_transform(frame.rotation)
            if turn is not None:
                rgb = np.ascontiguousarray(_UPRIGHT[turn](rgb))
        return self.transform(rgb) if self.transform is not None else rgb


# ---- the damage policy, online (a stream) --------------------------------------------------------

class DamageTracker:
    """The damage policy for a decoder fed packet by packet, as a live stream is: which frames are decodable.

    Feed it every packet as it is sent (``sent``), every refused one (``refused``) and every frame that comes out
    (``came_out``); it returns the frames whose status is settled, in the order they came out, each with whether
    it is damaged. A frame is settled once every packet sent before its own has come out or been refused: a
    frame decoded earlier but shown later may carry the corrupt flag that taints it. The rule is the reference
    decode's (``VideoFile._reference``): a refused packet or one whose frame is marked corrupt is damaged, and so
    is every packet after it up to the next keyframe. It forgets what is settled, so a stream of any length
    costs the same."""

    def __init__(self) -> None:
        self._sent = 0  # packets sent so far: the next decode position
        self._position: dict[int, int] = {}  # pts -> decode position, for packets not yet forgotten
        self._keyframe: dict[int, bool] = {}  # decode position -> keyframe, not yet forgotten
        self._pts: dict[int, int | None] = {}  # decode position -> pts, not yet forgotten
        self._tainted: set[int] = set()  # decode positions
        self._open_taint = False  # a damage whose next keyframe has not been sent yet
        self._leading_before: int | None = None  # the pts of the keyframe that ended a taint: its leading pictures
        self._unsettled: set[int] = set()  # decode positions sent whose frame has not come out nor been refused
        self._held: list[tuple[Any, int | None]] = []  # frames that came out, with their decode position

    def sent(self, pts: int | None, keyframe: bool) -> None:
        k = self._sent
        self._sent += 1
        self._keyframe[k] = bool(keyframe)
        self._pts[k] = pts
        if self._leading_before is not None:
            if pts is not None and pts < self._leading_before:
                self._tainted.add(k)  # a leading picture of the keyframe that ended the damage
            else:
                self._leading_before = None
        if keyframe and self._open_taint:
            self._open_taint = False
            self._leading_before = pts
        if self._open_taint:
            self._tainted.add(k)
        if pts is not None:
            self._position[pts] = k
            self._unsettled.add(k)

    def refused(self, pts: int | None) -> list[tuple[Any, bool]]:
        k = self._position.get(pts) if pts is not None else None  # as the reference: a packet it can place
        if k is not None:
            self._damage(k)
            self._unsettled.discard(k)
        return self._release()

    def came_out(self, frame: Any) -> list[tuple[Any, bool]]:
        k = self._position.get(frame.pts) if frame.pts is not None else None
        if k is not None:
            self._unsettled.discard(k)
            self._never_out(k, frame.pts)
            if frame.is_corrupt:
                self._damage(k)
        elif frame.is_corrupt and self._sent:
            self._damage(self._sent - 1)
        self._held.append((frame, k))
        return self._release()

    def _never_out(self, k: int, pts: int) -> None:
        """The frames that will never come out, now that packet ``k``'s frame (at ``pts``) has: a decoder returns frames
        in presentation order, so an unsettled packet sent before ``k`` and shown before it is one the decoder dropped
        without a word (the packets before a stream's first keyframe, when a reader joins a live feed between two;
        a packet it could not use). Such a frame is never offered and no longer holds back the frames after it; as in
        the reference decode (a frame that did not come out is replaced, and taints nothing), it damages nothing else."""
        for j in [j for j in self._unsettled if j < k and self._pts.get(j) is not None and self._pts[j] < pts]:
            self._unsettled.discard(j)

    def flush(self) -> list[tuple[Any, bool]]:
        """At the end: every frame still held (packets that never gave a frame cannot taint what came before)."""
        self._unsettled.clear()
        return self._release()

    def _damage(self, k: int) -> None:
        if k in self._tainted:
            return  # inside a stretch already tainted: the reference does not extend it either
        self._tainted.add(k)
        j = k + 1
        while j < self._sent and not self._keyframe.get(j, False):
            self._tainted.add(j)
            j += 1
        if j == self._sent:
            self._open_taint = True
            return
        key_pts = self._pts.get(j)  # the next keyframe: its leading pictures are predicted from the damage too
        j += 1
        while j < self._sent and key_pts is not None and self._pts.get(j) is not None and self._pts[j] < key_pts:
            self._tainted.add(j)
            j += 1
        if j == self._sent and key_pts is not None:
            self._leading_before = key_pts

    def _release(self) -> list[tuple[Any, bool]]:
        first_open = min(self._unsettled) if self._unsettled else None
        out = []
        while self._held:
            frame, k = self._held[0]
            if first_open is not None and (k is None or k > first_open):
                break  # an earlier packet may still taint it
            self._held.pop(0)
            # a frame whose timestamp no packet had is not a frame of the stream (the reference never samples one)
            out.append((frame, k in self._tainted if k is not None else bool(frame.is_corrupt) or frame.pts is not None))
        self._forget()
        return out

    def _forget(self) -> None:
        """Drop the positions nothing can refer to any more: before every unsettled packet and held frame, keeping
        the last keyframe before them (a damage found there walks forward from it)."""
        live = [k for _, k in self._held if k is not None] + list(self._unsettled)
        floor = min(live) if live else self._sent
        if len(self._keyframe) < 64 or floor <= min(self._keyframe):
            return
        self._keyframe = {k: v for k, v in self._keyframe.items() if k >= floor - 1}
        self._pts = {k: v for k, v in self._pts.items() if k >= floor - 1}
        self._tainted = {k for k in self._tainted if k >= floor - 1}
        self._position = {pts: k for pts, k in self._position.items() if k >= floor - 1}


# ---- decoding ------------------------------------------------------------------------------------

@dataclass
class Decoded:
    """The frames a decode kept, by frame number, and what it learned about the file."""

    frames: dict[int, Any]
    total: int  # frames in the video, as numbered (the index's packets, or the decoder's output count)
    replaced: dict[int, int] = field(default_factory=dict)  # wanted frame -> the decodable frame used instead
    reference: bool = False  # the reference decode gave this answer (the file had something unusual)


class _Anomaly(Exception):
    """Something the fast path does not vouch for: the reference decode takes over."""


# Decoders report damage instead of hiding it: FFmpeg's HEVC decoder, for one, conceals a flipped bit without a
# word unless told to refuse the packet (seen in the fuzz test, tests/video/).
DECODER_OPTIONS = {"err_detect": "explode"}


def configure_decoder(stream: Any) -> None:
    """Every decoder of every reader: one thread (FFmpeg's frame and slice threads conceal damage differently from
    one thread, and from each other: measured in the fuzz test) and damage reported, not hidden."""
    stream.codec_context.options = dict(DECODER_OPTIONS)
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class VideoFile:
    """One video file, opened and checked once; decodes the frames wanted of it (see the module docstring)."""

    def __init__(self, path: str | Path, options: ReadOptions | None = None):
        self.path = as_source(path)  # a Path, or a VideoBytes read from memory
        self.options = options or ReadOptions()
        container = open_container(self.path, self.options)
        try:
            stream = container.streams.video[0]
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else None
            self.declared_frames = int(stream.frames) if stream.frames else None
            self.index, self.packets = index_packets(container, stream)
        except library_errors() as exc:  # any failure of the libraries on this file
            raise read_error(self.path, exc, "not a video FFmpeg can read") from None
        finally:
            release(container)
        if self.packets == 0:
            raise VideoReadError(f"{self.path}: the video stream has no frames")
        self._output_total: int | None = None  # frames counted by a decode, where there is no index

    @property
    def total(self) -> int:
        """Frames in the video, as numbered: the index's packets, else what a decode counted (else the header's)."""
        if self.index is not None:
            return self.index.total
        return self._output_total or self.declared_frames or self.packets

    @property
    def truncated(self) -> str | None:
        """How the container broke off, when its header declares more frames than its packets hold."""
        if self.index is not None and not self.index.complete:
            return f"the container breaks off after frame {self.index.total}"
        if self.declared_frames and self.declared_frames > self.total:
            return f"truncated at frame {self.total} of {self.declared_frames}"
        return None

    def times(self) -> np.ndarray:
        """Seconds from the first frame at which each frame is shown: from the timestamps, else from the frame rate."""
        if self.index is not None:
            return self.index.times()
        if not self.fps:
            raise VideoReadError(f"{self.path}: the video stream has no frame rate, so it has no timeline")
        return np.arange(self.total) / self.fps

    def decoders(self, threads: int, small_output: bool) -> int:
        """How many decoders may work at once: ``threads`` (0: one per core), and with ``small_output`` no more than
        ``DECODER_MEMORY`` holds for this frame size."""
        wanted = threads or available_cores()
        if not small_output or not self.width or not self.height:
            return wanted
        pool = 8 * self.width * self.height * 3 // 2
        return max(1, min(wanted, DECODER_MEMORY // pool))

    def converter(self, transform=None, keep=None) -> FrameConverter:
        return FrameConverter(self.path, self.options, self.width, self.height, transform, threads=1, keep=keep)

    def _open(self) -> Any:
        return open_container(self.path, self.options)

    def decode(self, wanted: set[int], transform: Callable[[np.ndarray], Any] | None = None, *, threads: int = 0,
               seek: bool = True, keep: Callable[[int, Any], Any] | None = None) -> Decoded:
        """The frames numbered ``wanted`` (each in ``[0, total)``), converted and transformed.

        ``threads``: decoders working at once on separate stretches of the file (0: one per core), each on one
        thread; ``seek=False`` decodes front to back on one. Neither changes the frames. ``keep(number, frame)``,
        called as each frame is converted (from several threads), returns what ``Decoded.frames`` holds for it: a
        caller that places frames straight into its output keeps no second copy."""
        if not wanted:
            raise ValueError("no frames wanted")
        try:
            try:
                if self.index is not None and seek:
                    frames = self._seeking(wanted, transform, self.decoders(threads, transform is not None), keep)
                    if frames is not None:
                        return Decoded(frames, self.total)
                return self._front_to_back(wanted, self.converter(transform, keep))
            except _Anomaly:
                return self._reference(wanted, self.converter(transform, keep))
        except library_errors() as exc:  # one place turns the libraries' failures into our error (ours propagate)
            raise read_error(self.path, exc, "could not be decoded") from None

    # -- the fast paths: any anomaly raises _Anomaly --

    def _front_to_back(self, wanted: set[int], convert: FrameConverter) -> Decoded:
        """One decoder from the first packet; stops once every wanted frame, and every frame decoded before them,
        has come out (a frame decoded earlier but shown later may carry the corrupt flag that taints them)."""
        import av

        last = max(wanted)
        frames: dict[int, Any] = {}
        container = self._open()
        try:
            stream = container.streams.video[0]
            configure_decoder(stream)
            index = self.index
            frame_of = index.frame_of() if index is not None else None
            waiting: set[int] = set()
            if index is not None:  # the packets up to the last one a wanted frame comes from
                position = index.decode_position()
                waiting = set(index.decode_pts[: max(position[index.order[n]] for n in wanted) + 1])
            output = 0
            for packet in container.demux(stream):
                try:
                    decoded = stream.decode(packet)
                except av.error.FFmpegError:
                    raise _Anomaly from None
                for frame in decoded:
                    if frame.is_corrupt:
                        raise _Anomaly
                    if frame_of is not None:
                        number = frame_of.get(frame.pts)
                        if number is None:
                            raise _Anomaly  # a frame the index does not know: the reference decides
                        waiting.discard(frame.pts)
                    else:
                        number = output
                    output += 1
                    if number in wanted:
                        frames[number] = convert(frame, number)
                if len(frames) == len(wanted) and not waiting and (frame_of is not None or output > last):
                    break
        except av.error.FFmpegError:
            raise _Anomaly from None  # the demuxer broke off: the reference decides what holds
        finally:
            release(container)
        if len(frames) < len(wanted):
            if frame_of is None and output < self.total and len(frames) == len([w for w in wanted if w < output]):
                self._output_total = output  # fewer frames than the header said: the caller samples again
                return Decoded(frames, output)
            raise _Anomaly
        return Decoded(frames, self.total)

    def _seeking(self, wanted: set[int], transform, workers: int, keep=None) -> dict[int, Any] | None:
        """The wanted frames by stretches: each starts at the keyframe before its first frame and goes on past
        the next ones unless a long gap (``SEEK_MIN_GAP``) makes seeking cheaper. The stretches are shared out,
        in order, among up to ``workers`` decoders running at once, one thread each (PyAV lets go of Python's lock
        while FFmpeg decodes). None where seeking cannot prove it finds the frames a front-to-back decode gives
        (no keyframe first, a frame not where its timestamp says): the caller decodes front to back then."""
        index = self.index
        keyframes = index.keyframes()
        if not keyframes or keyframes[0] != index.order[0]:
            return None
        targets = sorted(wanted)
        frame_of = index.frame_of()
        keys = [frame_of[keyframes[bisect_right(keyframes, index.order[n]) - 1]] for n in targets]
        groups = _share_out(targets, keys, workers)
        if len(groups) == 1:
            return self._seek_group(groups[0], self.converter(transform, keep), keyframes)
        results: list[Any] = [None] * len(groups)

        def work(i: int) -> None:
            try:
                results[i] = self._seek_group(groups[i], self.converter(transform, keep), keyframes)
            except BaseException as exc:  # noqa: BLE001  handed to the calling thread
                results[i] = exc

        threads = [threading.Thread(target=work, args=(i,), name=f"vivit-decode-{i}") for i in range(len(groups))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        frames: dict[int, Any] = {}
        for result in results:
            if isinstance(result, BaseException):
                raise result
            if result is None:
                return None
            frames.update(result)
        return frames

    def _seek_group(self, numbers: list[int], convert: FrameConverter, keyframes: list[int]) -> dict[int, Any] | None:
        """One decoder's stretch of ``_seeking``: the frames ``numbers`` (ascending), seeking past long gaps."""
        import av

        index = self.index
        frame_of, position = index.frame_of(), index.decode_position()
        targets = [index.order[n] for n in numbers]
        wanted_pts = set(targets)

        def keyframe_before(pts: int) -> int:
            return keyframes[bisect_right(keyframes, pts) - 1]

        frames: dict[int, Any] = {}
        container = self._open()
        try:
            stream = container.streams.video[0]
            configure_decoder(stream)
            t = 0
            at_start = True  # the container is at the file's first packet: no seek needed to its first keyframe
            while t < len(targets):
                key = keyframe_before(targets[t])
                if not (at_start and key == keyframes[0]):
                    container.seek(key, stream=stream, backward=True)  # also flushes the decoder
                at_start = False
                waiting: set[int] = set()  # packets sent since the seek whose frame has not come out
                found_upto = -1  # decode position of the last target found since the seek
                number = -1
                done = False
                for packet in container.demux(stream):
                    if packet.pts in position:
                        if packet.size and index.where and index.where[position[packet.pts]] != (
                                packet.size, packet.pos if packet.pos is not None else -1):
                            # the seek found other data under this timestamp (an index of the container that its
                            # damaged chunks no longer match): decoding front to back decides what the frames are
                            return None
                        waiting.add(packet.pts)
                    try:
                        decoded = stream.decode(packet)
                    except av.error.FFmpegError:
                        raise _Anomaly from None
                    for frame in decoded:
                        if frame.is_corrupt:
                            raise _Anomaly
                        number = frame_of.get(frame.pts)
                        if number is None:
                            raise _Anomaly
                        waiting.discard(frame.pts)
                        if frame.pts < key:
                            continue  # leading pictures of an open GOP: not decodable from this keyframe
                        if frame.pts in wanted_pts:
                            frames[number] = convert(frame, number)
                        while t < len(targets) and frame_of[targets[t]] <= number:
                            if frame_of[targets[t]] not in frames:
                                return None  # the seek overshot a frame we need
                            found_upto = max(found_upto, position[targets[t]])
                            t += 1
                    far = t == len(targets) or frame_of[keyframe_before(targets[t])] - number > SEEK_MIN_GAP
                    # stop once every frame decoded before the ones found has come out (it may be corrupt)
                    if far and found_upto >= 0 and not any(position[pts] <= found_upto for pts in waiting):
                        done = True  # all found, or the next one is past a keyframe far ahead: seek there
                        break
                if not done:
                    break  # end of stream
        except av.error.FFmpegError:
            raise _Anomaly from None
        finally:
            release(container)
        if len(frames) < len(numbers):
            raise _Anomaly
        return frames

    # -- the reference --

    def _reference(self, wanted: set[int], convert: FrameConverter) -> Decoded:
        """One thread, front to back, every packet on its own: the damage map, then the wanted frames or their
        replacements (see the module docstring)."""
        if self.index is None:
            return self._reference_in_output_order(wanted, convert)
        index = self.index
        frame_of, position = index.frame_of(), index.decode_position()
        damaged: set[int] = set()  # decode positions
        came_out: set[int] = set()  # frame numbers the decoder output
        kept: dict[int, Any] = {}
        first_failure: str | None = None

        def on_frame(frame: Any) -> None:
            number = frame_of.get(frame.pts)
            if number is None:
                return  # not a frame of the index (a second field, a stray timestamp): never sampled
            came_out.add(number)
            if frame.is_corrupt:
                damaged.add(position[frame.pts])
            elif number in wanted:
                kept[number] = convert(frame, number)

        def on_refused(packet: Any, exc: BaseException) -> None:
            nonlocal first_failure
            if packet.pts in position:
                damaged.add(position[packet.pts])
            first_failure = first_failure or reason(exc)

        self._single_thread_pass(on_frame, on_refused)
        tainted = index.tainted(damaged)
        missing = [i for i in range(index.total) if i not in came_out and position[index.order[i]] not in tainted]
        if missing and not damaged:
            # packets without a frame of their own and no damage anywhere: this file's packets are not one frame
            # each (field pictures, say); its frames are numbered in output order
            self.index = None
            return self._reference_in_output_order(wanted, convert)
        decodable = np.array([i in came_out and position[index.order[i]] not in tainted for i in range(index.total)])
        if not decodable.any():
            why = f" ({first_failure})" if first_failure else ""
            raise VideoReadError(f"{self.path}: no frame of {index.total} could be decoded{why}")
        good = np.flatnonzero(decodable)
        replaced = {}
        for number in wanted:
            if not decodable[number]:
                before = good[good < number]
                replaced[number] = int(before[-1]) if before.size else int(good[good > number][0])
        frames = {n: kept[n] for n in wanted if n not in replaced}
        extra = set(replaced.values()) - set(frames)
        if extra:  # replacements that were not wanted themselves: one more pass keeps just those
            more: dict[int, Any] = {}

            def keep_extra(frame: Any) -> None:
                number = frame_of.get(frame.pts)
                if number in extra and number not in more:
                    more[number] = convert(frame, number)

            self._single_thread_pass(keep_extra, lambda packet, exc: None, until=lambda: len(more) == len(extra))
            frames.update(more)
        for number, source in replaced.items():
            frames[number] = frames[source]
        return Decoded(frames, index.total, replaced, reference=True)

    def _reference_in_output_order(self, wanted: set[int], convert: FrameConverter) -> Decoded:
        """No index: frames numbered as the decoder outputs them, on one thread; refused packets give no frame."""
        kept: dict[int, Any] = {}
        output = 0

        def on_frame(frame: Any) -> None:
            nonlocal output
            if output in wanted:
                kept[output] = convert(frame, output)
            output += 1

        self._single_thread_pass(on_frame, lambda packet, exc: None)
        if output == 0:
            raise VideoReadError(f"{self.path}: no frame of the video stream could be decoded")
        self._output_total = output
        return Decoded(kept, output, reference=True)

    def _single_thread_pass(self, on_frame: Callable[[Any], None], on_refused: Callable[[Any, BaseException], None],
                            until: Callable[[], bool] | None = None) -> None:
        import av

        container = self._open()
        try:
            stream = container.streams.video[0]
            configure_decoder(stream)
            try:
                for packet in container.demux(stream):
                    try:
                        decoded = stream.decode(packet)
                    except av.error.FFmpegError as exc:
                        on_refused(packet, exc)
                        continue
                    for frame in decoded:
                        on_frame(frame)
                    if until is not None and until():
                        return
            except av.error.FFmpegError:
                pass  # the container breaks off here: what was decoded is what the file holds
            try:
                for frame in stream.decode(None):  # the frames still held back by the decoder
                    on_frame(frame)
            except av.error.FFmpegError:
                pass
        finally:
            release(container)


def _share_out(numbers: list[int], keys: list[int], workers: int) -> list[list[int]]:
    """``numbers`` (ascending, each with the frame number of its keyframe in ``keys``) in at most ``workers``
    consecutive groups of about equal decoding work: a frame costs the frames from its keyframe (or from the
    previous wanted frame, when that is nearer) up to it. A group never splits a keyframe's stretch."""
    costs = []
    for i, (number, key) in enumerate(zip(numbers, keys)):
        previous = numbers[i - 1] if i else -1
        costs.append(number - max(key, previous) if key <= previous + SEEK_MIN_GAP and i else number - key + 1)
    total = sum(costs)
    if workers <= 1 or total < 2 * MIN_FRAMES_PER_DECODER:
        return [numbers]
    workers = min(workers, max(1, total // MIN_FRAMES_PER_DECODER))
    groups: list[list[int]] = [[]]
    done = 0
    last_key = -1
    for number, key, cost in zip(numbers, keys, costs):
        if groups[-1] and done >= total * len(groups) / workers and key > last_key:
            groups.append([])
        groups[-1].append(number)
        done += cost
        last_key = key
    return groups
