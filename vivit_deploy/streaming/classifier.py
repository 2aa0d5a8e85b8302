"""``StreamClassifier``: live streams in, one record per window and per event out, never lagging, never growing.

    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.streaming import StreamClassifier

    with load_runtime("model.onnx") as runtime:
        for record in StreamClassifier(runtime, ["rtsp://camera/stream"], window=2.0, hop=1.0):
            print(record)                      # {"stream", "start", "end", "label", ...} or {"event": ...}

Each source has a reader thread (``reader.py``) that cuts it into windows (``windows.py``). Each stream
has one slot for its newest complete window: a live stream's new window replaces one inference has not
taken yet, and that one is counted as skipped; a file read as fast as it decodes waits instead, so
every window of it is classified. The iterating thread takes every waiting window, from every stream,
as one batch through the runtime (the shared preprocessor first, as ``predict``, or uint8 frames to a
Triton model that preprocesses on the server), and yields the records. So latency stays about one
window's inference, and memory is the slots plus each reader's pending samples, however long it runs.

A window record: ``stream`` (the source as given), ``window`` (its number in that stream), ``start`` and
``end`` (stream seconds), ``label``, ``probability``, ``top_k``, ``smoothed_label`` and
``smoothed_probability`` (the mean of the last ``smooth`` windows' probabilities), ``latency_ms`` (from
the arrival of the window's last frame to its result), ``dropped_frames`` (frames its span should have
held at the stream's rate but did not), ``time`` (Unix seconds). Event records have ``event``:
``connected``, ``disconnected`` (``reason``), ``reconnected``, ``label_changed`` (the smoothed label,
above ``min_probability``), ``ended``; the last record is ``{"event": "summary", "streams": {...}}``.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from vivit_deploy.errors import ConfigError
from vivit_deploy.streaming.reader import StreamReader
from vivit_deploy.streaming.sources import Source, SourceError, open_container, parse_source
from vivit_deploy.streaming.windows import Window, WindowSpec

if TYPE_CHECKING:
    from vivit_deploy.runtimes.base import Runtime

LATENCY_SAMPLES = 100_000  # latencies kept per stream for the summary's percentiles (the newest ones)


@dataclass
class StreamStats:
    """What happened to one stream: for the summary and the events."""

    windows: int = 0  # classified
    skipped: int = 0  # replaced by a newer window before inference took them
    encoded_steps: int = 0  # Model 2: time steps its spatial encoder ran on
    reused_steps: int = 0  # and time steps an earlier window had encoded
    dropped_frames: int = 0
    reconnects: int = 0
    latencies_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LATENCY_SAMPLES))
    ended: str | None = None

    def to_dict(self) -> dict[str, Any]:
        latencies = np.array(self.latencies_ms) if self.latencies_ms else None
        percentiles = {} if latencies is None else {
            f"latency_ms_p{p}": round(float(np.percentile(latencies, p)), 1) for p in (50, 90, 99)}
        if latencies is not None:
            percentiles["latency_ms_max"] = round(float(latencies.max()), 1)
        reuse = {} if not (self.encoded_steps or self.reused_steps) else {
            "encoded_steps": self.encoded_steps, "reused_steps": self.reused_steps}
        return {"windows": self.windows, "skipped": self.skipped, "dropped_frames": self.dropped_frames,
                "reconnects": self.reconnects, "ended": self.ended, **reuse, **percentiles}


class StreamClassifier:
    """Classify windows of live streams (and files) with one runtime; iterate to get the records.

    ``window`` / ``hop``: seconds of stream time per window and between window ends. ``smooth``: windows
    in the smoothed label. ``min_probability``: the smoothed probability a ``label_changed`` needs.
    ``realtime``: files at their own pace (then, like live streams, windows are skipped when inference is
    behind). ``reconnect``: reopen live sources that drop (with backoff). ``duration``: stop after this many
    wall-clock seconds. ``max_batch``: windows per inference call [default: the runtime's largest batch].
    ``batch_wait``: seconds the first waiting window waits for the other streams' (one batch for all).
    A source that cannot be opened is an error when it is the only one; beside others it is reported
    (``disconnected``) and retried like a dropped one. ``read_options`` (``video.ReadOptions``): rotation and the
    frame-size limit, as for files. Each frame a window keeps is preprocessed by its reader as it arrives, so a 4K
    camera's windows hold the model's input, not 4K frames.

    ``reuse``: a model whose time steps are encoded alone (Model 2 with separate positions, through the runtime's
    ``step_parts``) encodes each step once for every window that holds it, then classifies each window from its
    steps' tokens: the same logits as encoding the window whole (to fp32 rounding), fewer steps encoded when windows
    overlap. Windows share steps when ``hop`` is a whole number of steps (``window / num_frames`` seconds per frame
    times the tubelet's frames): the samples then lie on one grid in stream time.
    """

    def __init__(self, runtime: "Runtime", sources: Sequence[str | Source], *, window: float = 2.0, hop: float = 1.0,
                 smooth: int = 3, min_probability: float = 0.5, top_k: int = 5, realtime: bool = False,
                 reconnect: bool = True, duration: float | None = None, max_batch: int | None = None, preprocessor=None,
                 batch_wait: float = 0.02, read_options=None, reuse: bool = True):
        from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor

        if not sources:
            raise ConfigError("no stream sources: give rtsp://, http(s)://, udp://, tcp:// URLs, devices or video files")
        if smooth < 1 or top_k < 1:
            raise ConfigError(f"smooth= and top_k= must be at least 1, got {smooth} and {top_k}")
        if not 0.0 <= min_probability <= 1.0:
            raise ConfigError(f"min_probability= must be in [0, 1], got {min_probability}")
        if duration is not None and duration <= 0:
            raise ConfigError(f"duration= must be positive seconds, got {duration}")
        self.runtime = runtime
        self.sources = [s if isinstance(s, Source) else parse_source(s, realtime=realtime) for s in sources]
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"a source is given twice: {sorted({n for n in names if names.count(n) > 1})}")
        self.spec = WindowSpec(window, hop, runtime.config.num_frames)
        self.smooth, self.min_probability, self.top_k = smooth, min_probability, min(top_k, runtime.num_labels)
        self.reconnect, self.duration, self.batch_wait = reconnect, duration, batch_wait
        self.max_batch = max_batch or runtime.input_spec.max_batch or 32
        config = runtime.preprocessor or PreprocessorConfig.for_input_size(runtime.config.image_height,
                                                                          runtime.config.image_width)
        self.preprocessor = preprocessor or VideoPreprocessor(config)
        # a Triton model with its frames ensemble preprocesses on the server: it gets the uint8 frames
        self.send_frames = runtime.takes_frames and self.preprocessor.config == runtime.preprocessor
        self.read_options = read_options
        self.parts = runtime.step_parts() if reuse and not self.send_frames else None
        self.hop_steps = None  # steps a window moves by, when whole: windows then share steps
        if self.parts is not None:
            step_seconds = window / self.spec.num_frames * self.parts.step_frames
            ratio = hop / step_seconds
            if abs(ratio - round(ratio)) < 1e-6 and round(ratio) >= 1:
                self.hop_steps = round(ratio)
            else:
                import warnings

                warnings.warn(f"--hop {hop:g} s is not a whole number of the model's time steps ({step_seconds:g} s "
                              "each): windows share no steps, every window's steps are encoded", stacklevel=2)
        self._step_cache: dict[str, dict[int, tuple[list, np.ndarray]]] = {name: {} for name in names}
        self.stats = {name: StreamStats() for name in names}
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._slots: dict[str, tuple[Window, int]] = {}
        self._events: collections.deque = collections.deque()
        self._history = {name: collections.deque(maxlen=smooth) for name in names}
        self._announced: dict[str, str | None] = {name: None for name in names}
        self._sequence = {name: 0 for name in names}
        self._readers: list[StreamReader] = []
        self._started = False

    # -- the readers' side --

    def _on_window(self, reader: StreamReader, window: Window, dropped: int) -> bool:
        name = reader.source.name
        with self._cond:
            if reader.source.live:
                if name in self._slots:
                    self.stats[name].skipped += 1
            else:
                while name in self._slots and not self._stop.is_set():
                    self._cond.wait(0.1)
            if self._stop.is_set():
                return False
            self._slots[name] = (window, dropped)
            self._cond.notify_all()
        return True

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._cond:
            if event["event"] == "reconnected":
                self.stats[event["stream"]].reconnects += 1
                self._step_cache[event["stream"]] = {}  # a new origin: its windows sample another grid
            if event["event"] == "ended":
                self.stats[event["stream"]].ended = event.get("reason")
            self._events.append(event)
            self._cond.notify_all()

    def start(self) -> None:
        """Open every source once (a lone source that cannot be opened is a :class:`SourceError` here) and start
        the readers. Iterating starts them too."""
        if self._started:
            return
        self._warm_up()
        opened = {}
        for source in self.sources:
            try:
                opened[source.name] = open_container(source, self.read_options)
            except SourceError:
                if len(self.sources) == 1:
                    raise
                opened[source.name] = None  # reported and retried by its reader
        self._started = True
        self._clock = time.monotonic()
        for source in self.sources:
            reader = StreamReader(source, self.spec, self._on_window, self._on_event, self._stop,
                                  reconnect=self.reconnect, opened=opened[source.name], read_options=self.read_options,
                                  transform=None if self.send_frames else self.preprocessor.frame)
            self._readers.append(reader)
            reader.start()

    def _warm_up(self) -> None:
        """One window of zeros through the preprocessor and the runtime before any stream opens, so the first real
        window does not also pay for compiled kernels and lazy initialisation."""
        crop = self.preprocessor.config.crop_size
        frames = np.zeros((1, self.spec.num_frames, crop["height"], crop["width"], 3), np.uint8)
        from vivit_deploy.predict import video_logits

        video_logits(self.runtime, [frames if self.send_frames else self.preprocessor(frames)], 1)

    def stop(self) -> None:
        """End the run: the iteration yields what is done, the ``ended`` events and the summary, then stops."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    # -- the inference side --

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.start()
        try:
            while True:
                with self._cond:
                    while not (self._slots or self._events or self._stop.is_set() or self._finished() or self._timed_out()):
                        self._cond.wait(0.1)
                    # windows of streams whose hops line up (cameras started together) come within moments of each
                    # other: wait that long for them, so they share one inference call
                    deadline = time.monotonic() + self.batch_wait
                    while (self._slots and len(self._slots) < self._live_readers() and not self._stop.is_set()
                           and time.monotonic() < deadline):
                        self._cond.wait(max(0.0, deadline - time.monotonic()))
                    events = list(self._events)
                    self._events.clear()
                    taken = [(name, *self._slots.pop(name)) for name in list(self._slots)]
                    self._cond.notify_all()  # a file's reader waits for its slot
                yield from (e for e in events if e["event"] != "ended")
                for start in range(0, len(taken), self.max_batch):
                    yield from self._classify(taken[start:start + self.max_batch])
                yield from (e for e in events if e["event"] == "ended")  # after the stream's last windows
                if self._timed_out():
                    self.stop()
                if (self._stop.is_set() or self._finished()) and not self._slots and not self._events:
                    break
        finally:
            self.stop()
            for reader in self._readers:
                reader.join(timeout=15)
        for reader in self._readers:  # stopped by the caller or --duration: their own "ended" was not sent
            if self.stats[reader.source.name].ended is None:
                self.stats[reader.source.name].ended = "stopped"
                yield {"event": "ended", "stream": reader.source.name, "time": time.time(), "reason": "stopped"}
        yield {"event": "summary", "time": time.time(), "streams": self.summary()}

    def _live_readers(self) -> int:
        return sum(1 for reader in self._readers if reader.is_alive() and reader.connected)

    def _finished(self) -> bool:
        return self._started and all(not reader.is_alive() for reader in self._readers)

    def _timed_out(self) -> bool:
        return self.duration is not None and self._started and time.monotonic() - self._clock >= self.duration

    def _classify(self, taken: list[tuple[str, Window, int]]) -> Iterator[dict[str, Any]]:
        from vivit_deploy.accuracy.evaluation import softmax
        from vivit_deploy.predict import label_name, ranked, video_logits

        if self.parts is not None:
            logits = list(self._logits_from_steps(taken)[:, None])
        else:
            # (1, T, H, W, 3) uint8 frames for a model that preprocesses them, else (1, T, C, H, W) float32, each frame
            # preprocessed by its reader as it arrived
            clips = [np.stack(window.frames)[None] for _, window, _ in taken]
            logits = video_logits(self.runtime, clips, self.max_batch)
        done = time.monotonic()
        id2label = self.runtime.id2label
        for (name, window, dropped), clip_logits in zip(taken, logits):
            probabilities = softmax(clip_logits.mean(axis=0))
            history = self._history[name]
            history.append(probabilities)
            smoothed = np.mean(history, axis=0)
            top = ranked(probabilities, id2label, self.top_k)
            best = int(np.argmax(smoothed))
            stats = self.stats[name]
            latency = (done - window.last_arrival) * 1e3
            stats.windows += 1
            stats.dropped_frames += dropped
            stats.latencies_ms.append(latency)
            record = {
                "stream": name, "window": self._sequence[name], "start": round(window.start, 4),
                "end": round(window.end, 4), "label": top[0].label, "probability": top[0].probability,
                "top_k": [{"label": p.label, "probability": p.probability} for p in top],
                "smoothed_label": label_name(id2label, best), "smoothed_probability": float(smoothed[best]),
                "latency_ms": round(latency, 2), "dropped_frames": dropped, "time": time.time(),
            }
            self._sequence[name] += 1
            yield record
            if record["smoothed_probability"] >= self.min_probability and self._announced[name] != record["smoothed_label"]:
                yield {"event": "label_changed", "stream": name, "time": record["time"], "at": record["end"],
                       "from": self._announced[name], "to": record["smoothed_label"],
                       "probability": record["smoothed_probability"]}
                self._announced[name] = record["smoothed_label"]

    def _logits_from_steps(self, taken: list[tuple[str, Window, int]]) -> np.ndarray:
        """Model 2: each window's steps, encoded once (those an earlier window of the stream encoded are taken from
        it), then the windows classified from their steps' tokens together."""
        t, per_window = self.parts.step_frames, self.parts.steps_per_window
        plans, missing = [], []
        pending: dict[tuple[str, int], int] = {}  # steps this call encodes, so windows taken together share them too
        for name, window, _ in taken:
            cache = self._step_cache[name]
            first = None
            if self.hop_steps is not None:
                first = window.index * self.hop_steps  # the grid in stream time: window i starts i hops in
            plan = []
            for j in range(per_window):
                frames = window.frames[j * t:(j + 1) * t]
                key = None if first is None else first + j
                hit = cache.get(key) if key is not None else None
                if hit is not None and _same_frames(hit[0], frames):
                    plan.append(hit[1])
                    self.stats[name].reused_steps += 1
                elif key is not None and (name, key) in pending and _same_frames(missing[pending[name, key]][2], frames):
                    plan.append(pending[name, key])
                    self.stats[name].reused_steps += 1
                else:
                    if key is not None:
                        pending[name, key] = len(missing)
                    plan.append(len(missing))
                    missing.append((name, key, frames))
                    self.stats[name].encoded_steps += 1
            plans.append((name, first, plan))
        tokens = self.parts.encode(np.stack([np.stack(frames) for _, _, frames in missing])) if missing else None
        for i, (name, key, frames) in enumerate(missing):
            if key is not None:
                self._step_cache[name][key] = (frames, tokens[i])
        windows = []
        for name, first, plan in plans:
            windows.append(np.stack([tokens[p] if isinstance(p, int) else p for p in plan]))
            if first is not None:  # the next window starts hop_steps later: earlier steps are not needed again
                cache = self._step_cache[name]
                for key in [k for k in cache if k < first + self.hop_steps]:
                    del cache[key]
        return self.parts.classify(np.stack(windows))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per stream: windows classified, skipped, dropped frames, reconnects, latency percentiles, why it ended."""
        return {name: stats.to_dict() for name, stats in self.stats.items()}

    def __enter__(self) -> "StreamClassifier":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
    """The summary, a line per stream, for people."""
    lines = []
    for name, s in summary.items():
        latency = (f"latency p50 {s['latency_ms_p50']:.0f} ms, p90 {s['latency_ms_p90']:.0f} ms, p99 {s['latency_ms_p99']:.0f} ms"
                   if "latency_ms_p50" in s else "no window classified")
        lines.append(f"{name}: {s['windows']} windows, {s['skipped']} skipped, {s['reconnects']} reconnects, "
                     f"{s['dropped_frames']} dropped frames; {latency}; ended: {s['ended'] or 'running'}")
    return "\n".join(lines)


def label_change_line(event: dict[str, Any]) -> str:
    """A label change for people: ``[stream 12.0 s] moving up -> moving left (0.93)``."""
    before = event["from"] or "(start)"
    return f"[{event['stream']} {event['at']:.1f} s] {before} -> {event['to']} ({event['probability']:.2f})"


def _same_frames(kept: list, frames: list) -> bool:
    """Whether a kept step holds these very frames (the reader's arrays, shared by the windows that overlap): a
    step is reused only for the frames it was encoded from."""
    return len(kept) == len(frames) and all(a is b for a, b in zip(kept, frames))
