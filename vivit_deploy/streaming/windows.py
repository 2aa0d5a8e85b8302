"""Windows of a stream: which frames the next windows need, kept in a bounded buffer, handed over when complete.

Every ``hop`` seconds of stream time a window ends; it covers the last ``window`` seconds and is sampled
to the model's ``num_frames`` at the centres of equal bins, as ``vivit_deploy.video.sample_indices`` samples
a file's frames (uniform sampling): sample i of a window starting at s is the frame showing time
s + (i + 0.5) * window / num_frames. On a stream at a steady frame rate these are the frames
``sample_indices`` would pick from the window's frames, so a window is classified as ``predict`` would
classify a file of the same frames.

Frames arrive in order with their timestamps; a frame shows its time until the next frame's. A frame is
kept only when a pending window samples a time it shows, and windows are pending only from their start:
the buffer holds at most ``ceil(window / hop) + 1`` windows' samples, however long the stream runs.
Numpy only; the frames are whatever the reader hands in (uint8 RGB arrays, converted only when kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from vivit_deploy.errors import ConfigError


def _once(pixels: Callable[[], Any]) -> Callable[[], Any]:
    """``pixels`` converted at most once, however many samples take the frame."""
    cache: list[Any] = []

    def get() -> Any:
        if not cache:
            cache.append(pixels())
        return cache[0]

    return get


@dataclass(frozen=True)
class WindowSpec:
    window: float  # seconds of stream time each window covers
    hop: float  # seconds between the ends of consecutive windows
    num_frames: int  # frames the model takes

    def __post_init__(self) -> None:
        if not self.window > 0 or not self.hop > 0:
            raise ConfigError(f"window= and hop= must be positive seconds, got {self.window} and {self.hop}")
        if self.num_frames < 1:
            raise ConfigError(f"num_frames must be at least 1, got {self.num_frames}")

    def sample_times(self, start: float) -> list[float]:
        step = self.window / self.num_frames
        return [start + (i + 0.5) * step for i in range(self.num_frames)]

    @property
    def max_pending(self) -> int:
        """Windows whose samples can be held at once: the ones that overlap the newest frame."""
        return math.ceil(self.window / self.hop) + 1


@dataclass
class Window:
    index: int  # 0, 1, 2, ... in the order they end
    start: float  # stream seconds
    end: float
    times: list[float]
    frames: list[Any]  # one per sample time, None until a frame showing it has arrived
    received: int = 0  # frames whose timestamp lies in [start, end)
    last_arrival: float = 0.0  # wall-clock time the window's last frame arrived (monotonic)
    first_time: float | None = None  # stream time of its first frame received
    last_time: float | None = None  # and of its last

    @property
    def complete(self) -> bool:
        return all(frame is not None for frame in self.frames)


@dataclass
class WindowBuilder:
    """Turns frames (time, arrival, a way to get its pixels) into complete windows, keeping only the samples."""

    spec: WindowSpec
    origin: float | None = None  # stream time of the first frame
    frame_interval: float | None = None  # the stream's nominal seconds per frame, for dropped frames
    # A live stream's frame takes at once the samples of the interval it will show (so a window completes on the
    # arrival of its last frame, not one frame later): exact at a constant frame rate. A file read as fast as it
    # decodes waits for the next frame instead, so it is exact whatever the rate (its timeline is the same).
    early: bool = True
    _pending: list[Window] = field(default_factory=list)
    _previous: tuple[float, float, Callable[[], Any]] | None = None  # (time, arrival, pixels) of the last frame
    _next_index: int = 0
    _intervals: list[float] = field(default_factory=list)

    def _window(self, index: int) -> Window:
        end = self.origin + self.spec.window + index * self.spec.hop
        start = end - self.spec.window
        times = self.spec.sample_times(start)
        return Window(index, start, end, times, [None] * len(times))

    def start_at(self, time: float) -> None:
        """A frame shown from ``time`` that has no pixels (damaged): stream time starts with it all the same."""
        if self.origin is None:
            self.origin = time

    def offer(self, time: float, arrival: float, pixels: Callable[[], Any]) -> list[Window]:
        """Take a frame shown from ``time`` (stream seconds) that arrived at ``arrival``; ``pixels()`` converts it,
        called only when a window samples it. Returns the windows this frame completed, oldest first.

        A frame shows its time until the next frame's. Where the stream's frame interval is known (and ``early``),
        the frame also takes at once the samples of the interval it will show, so a window is complete on the
        arrival of the frame it ends with, not one frame later."""
        if self.origin is None:
            self.origin = time
        if self._previous is not None and time <= self._previous[0]:
            return []  # a repeated or out-of-order timestamp: the frame shown does not change
        # windows become pending from their start, so that only their own samples are kept
        while True:
            upcoming = self._window(self._next_index)
            if upcoming.start > time:
                break
            self._pending.append(upcoming)
            self._next_index += 1
        if self._previous is not None:  # the previous frame showed until now, in the windows just begun too
            before, _, before_pixels = self._previous
            self._intervals = (self._intervals + [time - before])[-32:]
            self._assign(before, time, before_pixels)
        elif time > self.origin:  # the stream began with damaged frames: the first decodable one stands for them
            pixels = _once(pixels)
            self._assign(self.origin, time, pixels)
        for window in self._pending:
            if window.start <= time < window.end:
                window.received += 1
                window.last_arrival = arrival
                window.last_time = time
                if window.first_time is None:
                    window.first_time = time
        interval = self.frame_interval if self.early else None
        converted = self._assign(time, time + 0.999 * interval, pixels) if interval else None
        self._previous = (time, arrival, (lambda: converted) if converted is not None else pixels)
        done = []
        while self._pending and (self._pending[0].complete or self._pending[0].end <= time):
            done.append(self._pending.pop(0))
        return done

    def _assign(self, begin: float, end: float, pixels: Callable[[], Any]):
        """The frame ``pixels`` takes every unassigned sample in [begin, end); returns its pixels if converted."""
        converted = None
        for window in self._pending:
            for i, sample in enumerate(window.times):
                if window.frames[i] is None and begin <= sample < end:
                    if converted is None:
                        converted = pixels()
                    window.frames[i] = converted
        return converted

    def flush(self) -> list[Window]:
        """At the end of a file: its last frame shows for one frame interval more, which may complete the last
        windows (a file of 16 frames at 8 fps ends at 2.0 s, and so does its window)."""
        if self._previous is None:
            return []
        interval = self._interval() or 0.0
        time, _, pixels = self._previous
        self._assign(time, time + interval + 1e-9, pixels)
        done = [window for window in self._pending if window.complete]
        self._pending = [window for window in self._pending if not window.complete]
        return done

    def dropped(self, window: Window) -> int:
        """Frames the window should have held at the stream's rate, from its start to its last frame, but did not
        receive (a window is complete, and handed over, at the frame that shows its last sample)."""
        interval = self._interval()
        if not interval or window.last_time is None:
            return 0
        expected = math.floor((window.last_time - window.start) / interval + 1e-6) + 1  # frame slots from its start
        return max(0, expected - window.received)

    def _interval(self) -> float | None:
        """Seconds per frame: the stream's nominal rate, else the median of its last 32 frame intervals."""
        if self.frame_interval:
            return self.frame_interval
        return sorted(self._intervals)[len(self._intervals) // 2] if self._intervals else None

    def reset(self) -> None:
        """Start over (after a reconnect): pending windows are dropped, the next ones start at the next frame."""
        self.origin = None
        self._pending.clear()
        self._previous = None
        self._intervals = []
        self._next_index = 0

    @property
    def held_frames(self) -> int:
        """Distinct frames held by pending windows (the buffer's size)."""
        return len({id(f) for w in self._pending for f in w.frames if f is not None})
