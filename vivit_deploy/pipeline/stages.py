"""The stages of the corpus job, written once and run by every executor (local processes or Ray).

    path --ClipLoader--> float32 clips (num_clips, T, C, H, W) --classify_videos--> top-k --result_row--> row

``ClipLoader`` is decode + sample + preprocess: the same ``read_clips`` and shared preprocessor that
``vivit-deploy predict`` uses, so a video gets the same prediction whichever path classified it.
``classify_videos`` runs the clips of several videos as one batch and ranks each video with
``predict.top_predictions`` (mean logits over its clips, then softmax), as ``VideoClassifier`` does.
Frames stay uint8 until the preprocessor; what crosses between stages is the model's input.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vivit_deploy.errors import ConfigError
from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor
from vivit_deploy.video.opening import ReadOptions
from vivit_deploy.video.reading import SAMPLINGS

if TYPE_CHECKING:
    from vivit_deploy.predict import Prediction
    from vivit_deploy.runtimes.base import Runtime


@dataclass(frozen=True)
class ClipSpec:
    """Which frames of a video the model sees: ``num_clips`` clips of ``num_frames``, sampled as in predict."""

    num_frames: int
    num_clips: int = 1
    sampling: str = "uniform"  # "uniform" or "stride", see vivit_deploy.video.reading
    frame_sample_rate: int = 4  # every Nth frame, for "stride"

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if min(self.num_frames, self.num_clips, self.frame_sample_rate) < 1:
            raise ConfigError(f"num_frames, num_clips and frame_sample_rate must be at least 1, got {self}")


@dataclass
class Loaded:
    """What stage 1 made of one video: the model's input and what reading it found."""

    pixel_values: np.ndarray  # float32 (num_clips, T, C, H, W), or uint8 frames for a runtime that preprocesses
    decode_s: float  # seconds decoding (the preprocessor's share taken out)
    preprocess_s: float  # seconds in the preprocessor, which runs on each frame as it is decoded
    damaged_frames: int = 0  # sampled frames that were damaged and replaced (vivit_deploy.video.decoding)


class ClipLoader:
    """Stage 1, per video: decode the sampled frames and preprocess them; picklable, so workers get a copy.

    ``load`` returns a :class:`Loaded` and raises :class:`VideoReadError` for a file that cannot be read. Each frame
    is preprocessed as it is decoded, so a 4K video costs its output plus a few full frames. ``decode_threads`` is
    FFmpeg's thread count per video (0: one per core; workers that already fill the cores use 1); it never
    changes the frames. ``read_options``: rotation and the frame-size limit, as for ``predict``.
    """

    def __init__(self, spec: ClipSpec, preprocessor: PreprocessorConfig, decode_threads: int = 0,
                 preprocess: bool = True, read_options: ReadOptions | None = None):
        self.spec = spec
        self.preprocessor_config = preprocessor
        self.decode_threads = decode_threads
        self.preprocess = preprocess  # False: uint8 frames out, for a runtime that preprocesses (Triton's ensemble)
        self.read_options = read_options or ReadOptions()
        self._preprocessor = VideoPreprocessor(preprocessor)

    def warm_up(self) -> None:
        """Load the preprocessor's compiled kernels now (a worker does it while the model loads)."""
        crop = self.preprocessor_config.crop_size
        self._preprocessor(np.zeros((1, crop["height"] + 2, crop["width"] + 2, 3), np.uint8))

    def output_shape(self, frame_shape: tuple[int, int, int, int]) -> tuple[int, ...]:
        return (self.spec.num_clips, *frame_shape)

    def load(self, path: str | os.PathLike, frames: Sequence[int] | None = None) -> Loaded:
        """The clips of a video, or with ``frames`` (a timeline window's frame indices) that one clip."""
        from vivit_deploy.video.reading import decode_clips, decode_frames

        spec = self.spec
        spent = [0.0]  # seconds in the preprocessor, summed over the decoders that call it

        def preprocess(frame: np.ndarray) -> np.ndarray:
            begun = time.perf_counter()
            try:
                return self._preprocessor.frame(frame)
            finally:
                spent[0] += time.perf_counter() - begun

        transform = preprocess if self.preprocess else None
        started = time.perf_counter()
        if frames is not None:
            clips = decode_frames(path, frames, threads=self.decode_threads, transform=transform,
                                  options=self.read_options)
        else:
            clips = decode_clips(path, spec.num_frames, num_clips=spec.num_clips, sampling=spec.sampling,
                                 frame_sample_rate=spec.frame_sample_rate, threads=self.decode_threads,
                                 transform=transform, options=self.read_options)
        return Loaded(clips.array, time.perf_counter() - started - spent[0], spent[0], clips.replaced)


@dataclass(frozen=True)
class ResultSettings:
    """Everything that shapes a row's prediction; every row carries it, and a resumed job must match it."""

    model: str  # the source as given (path, Hub id, file), for people reading the results
    model_sha256: str  # fingerprint of the weights or model file: the model's identity
    backend: str
    precision: str
    sampling: str
    clips: int
    frame_sample_rate: int
    top_k_count: int  # how many labels each row's top_k lists
    autorotate: bool = True  # frames turned upright by the display matrix (vivit_deploy.video.opening.ReadOptions)
    window_s: float | None = None  # a timeline: seconds per window (rows are windows, not videos)
    hop_s: float | None = None  # seconds between windows

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.window_s is None:  # a row per video has no timeline fields (as before timelines existed)
            del out["window_s"], out["hop_s"]
        return out

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> "ResultSettings":
        return cls(**{k: row.get(k) for k in cls.__dataclass_fields__})

    def key(self) -> tuple:
        """What must be equal for two rows to be comparable (the model's location may change)."""
        d = self.to_dict()
        d.pop("model")
        return tuple(sorted(d.items()))

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Human-readable fields in which a row's settings ``other`` differ from these."""
        mine = self.to_dict()
        return [f"{k} {other.get(k)!r} (now {v!r})" for k, v in mine.items() if k != "model" and other.get(k) != v]


WINDOW_FIELDS = ("window", "start", "end")  # a timeline row's window: its number in the video, its span in seconds
VIDEO_SETTINGS = tuple(f for f in ResultSettings.__dataclass_fields__ if f not in ("window_s", "hop_s"))
ROW_FIELDS = ("path", "label", "probability", "top_k", "error", "damaged_frames") + VIDEO_SETTINGS  # a row per video
# Columns a file written before damaged frames were counted and rotation applied lacks, and what its rows meant
LEGACY_DEFAULTS = {"damaged_frames": None, "autorotate": False}


def load_checked_runtime(source: str, settings: ResultSettings, *, backend: str | None, device: str,
                         precision: str | None, runtime_options: dict[str, Any], where: str = "this machine") -> "Runtime":
    """Stage 2's runtime, as every executor loads it: refused when it does not run what the rows will say it ran (the
    backend and precision in ``settings``, which the driver decided before loading anything)."""
    from vivit_deploy.runtimes import load_runtime

    runtime = load_runtime(source, backend, device=device, precision=precision, **runtime_options)
    if (runtime.backend, runtime.precision) != (settings.backend, settings.precision):
        runtime.close()
        raise ConfigError(f"{source} loaded as {runtime.backend} {runtime.precision} on {where}, "
                          f"expected {settings.backend} {settings.precision}")
    return runtime


def classify_rows(runtime: "Runtime", settings: ResultSettings, batch_size: int,
                  entries: Sequence[tuple[str, Any, Any, str | None, int]]) -> tuple[list[dict[str, Any]], float]:
    """Stages 2 and 3 for one batch, as every executor runs them: ``entries`` of (path, window, clips, error,
    damaged_frames), where a video that could not be read has its error and no clips. Returns the rows in the
    entries' order and the seconds inference took."""
    ok = [i for i, entry in enumerate(entries) if entry[3] is None]
    seconds, predictions = 0.0, []
    if ok:
        started = time.perf_counter()
        predictions = classify_videos(runtime, [entries[i][2] for i in ok], batch_size, settings.top_k_count)
        seconds = time.perf_counter() - started
    rows: list[dict[str, Any]] = [result_row(path, settings, error=error, window=window) if error is not None else {}
                                  for path, window, _, error, _ in entries]
    for i, p in zip(ok, predictions):
        path, window, _, _, damaged = entries[i]
        rows[i] = result_row(path, settings, p, window=window, damaged_frames=damaged)
    return rows, seconds


def result_row(path: str, settings: ResultSettings, predictions: Sequence["Prediction"] | None = None,
               error: str | None = None, window=None, damaged_frames: int | None = None) -> dict[str, Any]:
    """Stage 3: one output row; a video that could not be classified has its one-line ``error`` and no label.

    ``damaged_frames``: sampled frames that were damaged and replaced by the nearest decodable one (None in an error
    row). ``window`` (a timeline's ``inputs.TimeWindow``, or None for a video that could not be cut into windows)
    adds the window's number and span."""
    if (predictions is None) == (error is None):
        raise ValueError("a row has either predictions or an error")
    top = None if predictions is None else [{"label": p.label, "probability": p.probability} for p in predictions]
    placed = {}
    if settings.window_s is not None:
        placed = {"window": None, "start": None, "end": None} if window is None else {
            "window": window.index, "start": window.start, "end": window.end}
    return {
        "path": path,
        **placed,
        "label": None if top is None else top[0]["label"],
        "probability": None if top is None else top[0]["probability"],
        "top_k": top,
        "error": error,
        "damaged_frames": None if predictions is None else int(damaged_frames or 0),
        **settings.to_dict(),
    }


def classify_videos(runtime: "Runtime", clips: Sequence[np.ndarray], batch_size: int, top_k: int) -> list[list["Prediction"]]:
    """Stage 2: the top-k of each video (``predict.top_predictions`` of its clips' logits)."""
    from vivit_deploy.predict import top_predictions, video_logits

    return [top_predictions(logits, runtime.id2label, top_k) for logits in video_logits(runtime, clips, batch_size)]


def error_line(exc: BaseException) -> str:
    """One line for a row's ``error``: our messages as they are, anything else with its type."""
    from vivit_deploy.errors import VivitDeployError

    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, VivitDeployError) else f"{type(exc).__name__}: {text}"
