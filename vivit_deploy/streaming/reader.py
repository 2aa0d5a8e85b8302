"""One thread per stream: open it, decode it, cut it into windows, reconnect it when it drops.

The reader decodes every frame (a live codec cannot skip frames) on one FFmpeg thread (frame threading
would hold frames back, which is latency), and converts to RGB only the frames a pending window samples
(``windows.py``). Stream time is the frame's timestamp relative to the first frame; after a reconnect it
continues from where the stream dropped plus the time it was away, so windows never run backwards.

A live source that drops (an error, silence past the read timeout, the server closing it) is reported
(``disconnected``, with FFmpeg's reason) and opened again after 0.5, 1, 2, 4, 8, 10, 10, ... seconds
(``reconnected`` once frames flow again), unless reconnecting is off; then, and at a file's end, the
stream ``ended``. Other streams are not affected: each reader has its own thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from vivit_deploy.errors import VideoReadError
from vivit_deploy.streaming.sources import Source, SourceError, open_container
from vivit_deploy.streaming.windows import Window, WindowBuilder, WindowSpec
from vivit_deploy.video.decoding import DamageTracker, FrameConverter, configure_decoder
from vivit_deploy.video.opening import ReadOptions
from vivit_deploy.video.opening import reason as error_reason

BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 10.0)  # seconds before each reconnect attempt (the last one repeats)


class StreamReader(threading.Thread):
    """Decodes ``source`` into windows for ``on_window(reader, window, dropped)`` and reports ``on_event(dict)``.

    ``on_window`` may block (a file read as fast as inference goes waits for it); it returns False to stop.
    """

    def __init__(self, source: Source, spec: WindowSpec, on_window: Callable[["StreamReader", Window, int], bool],
                 on_event: Callable[[dict[str, Any]], None], stop: threading.Event, *, reconnect: bool = True,
                 opened: Any = None, read_options: ReadOptions | None = None,
                 transform: Callable[[Any], Any] | None = None):
        super().__init__(name=f"vivit-stream-{source.name}", daemon=True)
        self.source, self.spec = source, spec
        self.on_window, self.on_event, self.stop_event = on_window, on_event, stop
        self.reconnect = reconnect and source.reconnectable
        self._opened = opened  # a container the caller already opened (the first connection)
        self.builder = WindowBuilder(spec, early=source.live)
        self.read_options = read_options or ReadOptions()
        self.transform = transform  # applied to each kept frame as it is converted (the preprocessor's frame)
        self.frames = 0
        self.damaged_frames = 0  # frames not offered: damaged (video.decoding's policy)
        self.reconnects = 0
        self.failure: str | None = None  # why it ended, when not by the end of a file or a stop
        self.connected = False
        self._stream_time = 0.0  # where stream time has got to (continues across reconnects)

    def _event(self, event: str, **fields: Any) -> None:
        self.on_event({"event": event, "stream": self.source.name, "time": time.time(), **fields})

    def run(self) -> None:
        attempt = 0
        first = True
        away_since: float | None = None
        reported = False  # the current outage has its "disconnected" event
        while not self.stop_event.is_set():
            try:
                container = self._opened or open_container(self.source, self.read_options)
                self._opened = None
            except SourceError as exc:
                reason = str(exc).split(": ", 1)[-1]
                if not reported:
                    self._event("disconnected", reason=reason, attempt=attempt)
                    reported = True
                if not self.reconnect:
                    self.failure = reason
                    self._event("ended", reason=reason)
                    return
                away_since = away_since or time.monotonic()
                self._wait(BACKOFF[min(attempt, len(BACKOFF) - 1)])
                attempt += 1
                first = False
                continue
            info = _describe(container)
            if first:
                self._event("connected", **info)
            else:
                self.reconnects += 1
                self._event("reconnected", attempt=attempt, away_s=round(time.monotonic() - (away_since or time.monotonic()), 3),
                            **info)
            gap = 0.0 if away_since is None else time.monotonic() - away_since
            first, attempt, away_since = False, 0, None
            reported = False
            self.connected = True
            reason = self._decode(container, gap)
            self.connected = False
            if self.stop_event.is_set():
                return
            if reason is None:  # a file's end
                self._event("ended", reason="end of the video")
                return
            self._event("disconnected", reason=reason)
            reported = True
            if not self.reconnect:
                self.failure = reason
                self._event("ended", reason=reason)
                return
            away_since = time.monotonic()
            self._wait(BACKOFF[0])
            attempt = 1

    def _wait(self, seconds: float) -> None:
        self.stop_event.wait(seconds)

    def _decode(self, container, gap: float) -> str | None:
        """Decode until the stream ends, fails or is stopped; the reason it dropped (None: a file's end).

        Packets go to the decoder one by one under the damage policy every reader applies
        (``video.decoding.DamageTracker``): a damaged frame is never offered, so the frame before it goes on
        showing, as a file's damaged frame is replaced by the nearest decodable one before it."""
        import av

        stream = container.streams.video[0]
        configure_decoder(stream)  # one thread, as every reader: the same frames as a file read of the same video
        rate = stream.average_rate or stream.guessed_rate
        self.builder.frame_interval = float(1 / rate) if rate else None
        self.builder.reset()
        convert = FrameConverter(self.source.name, self.read_options, stream.codec_context.width,
                                 stream.codec_context.height, self.transform, threads=1)
        tracker = DamageTracker()
        base = stream.time_base
        self._offset = None  # stream seconds of this connection's first frame
        self._continue_from = self._stream_time + (gap if self.frames else 0.0)
        self._paced_start = time.monotonic()
        try:
            for packet in container.demux(stream):
                if self.stop_event.is_set():
                    return "stopped"
                if packet.size and not packet.is_discard:
                    tracker.sent(packet.pts, packet.is_keyframe)
                    if self._offset is None and packet.pts is not None and base is not None:
                        # stream time starts at the first packet's timestamp, as a file's timeline starts at its
                        # first frame's, whether or not that frame decodes
                        self._offset = float(packet.pts * base) - self._continue_from
                        self.builder.start_at(self._continue_from)
                try:
                    decoded = stream.decode(packet)
                except av.error.FFmpegError:
                    settled = tracker.refused(packet.pts)
                else:
                    settled = [pair for frame in decoded for pair in tracker.came_out(frame)]
                if not self._offer(settled, base, convert):
                    return "stopped"
        except av.error.FFmpegError as exc:
            return error_reason(exc)
        except VideoReadError as exc:  # a frame past --max-pixels: this source cannot be read at all
            self.reconnect = False
            return str(exc).split(": ", 1)[-1]
        finally:
            container.close()
        if self.source.kind == "file":
            if not self._offer(tracker.flush(), base, convert):
                return "stopped"
            for window in self.builder.flush():
                if not self.on_window(self, window, self.builder.dropped(window)):
                    return "stopped"
            return None
        return "the stream ended (end of file from the server)"

    def _offer(self, settled, base, convert) -> bool:
        """Hand the settled frames to the windows; a damaged one is not shown (the frame before it goes on showing)
        and does not move the clock, beyond starting it. False: stop."""
        for frame, damaged in settled:
            pts = frame.pts if frame.pts is not None else frame.dts
            seconds = float(pts * base) if pts is not None and base is not None else self.frames * (
                self.builder.frame_interval or 0.04)
            if self._offset is None:
                self._offset = seconds - self._continue_from
            stream_time = seconds - self._offset
            if damaged:
                self.builder.start_at(stream_time)  # the stream's time starts with its first frame, decodable or not
                self.damaged_frames += 1
                continue
            if self.frames and stream_time <= self._stream_time:
                # the clock went back (two recordings joined, an encoder restarted): stream time goes on from the
                # last frame by one frame interval, as a file without usable timestamps is numbered
                stream_time = self._stream_time + (self.builder.frame_interval or 0.04)
                self._offset = seconds - stream_time
            if self.source.realtime:  # a file at its own pace, like a camera
                delay = self._paced_start + (stream_time - self._continue_from) - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    return False
            self.frames += 1
            self._stream_time = stream_time
            arrival = time.monotonic()
            for window in self.builder.offer(stream_time, arrival, lambda f=frame: convert(f)):
                if not self.on_window(self, window, self.builder.dropped(window)):
                    return False
        return True


def _describe(container) -> dict[str, Any]:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    return {"codec": stream.codec_context.name, "width": stream.codec_context.width,
            "height": stream.codec_context.height, "fps": None if not rate else round(float(rate), 3)}
