"""``classify_corpus``: the whole job from inputs to one results file, on this machine or on Ray.

1. expand the inputs into videos (``inputs.py``);
2. describe the model without loading it: labels, preprocessing, fingerprint (``model.py``);
3. open the results store: lock, check the settings of any earlier rows, find what is done (``results.py``);
4. classify what is left with an executor (``local.py`` or ``ray_job.py``), rows written as parts;
5. merge everything into the output file in one atomic step, and summarise.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

from vivit_deploy.errors import ConfigError
from vivit_deploy.pipeline.inputs import expand_inputs, timeline_items
from vivit_deploy.pipeline.local import StageTimes, available_cores, run_local, start_pool
from vivit_deploy.pipeline.model import describe_model
from vivit_deploy.pipeline.ray_job import import_ray, run_on_ray
from vivit_deploy.pipeline.results import ResultStore
from vivit_deploy.pipeline.stages import ClipLoader, ClipSpec, ResultSettings, load_checked_runtime, result_row
from vivit_deploy.video.opening import ReadOptions

Log = Callable[[str], None]
# bar(total videos) -> a context manager yielding update(videos finished, clips run)
ProgressBar = Callable[[int], ContextManager[Callable[[int, int], None]]]


@dataclass(frozen=True)
class ClassifyJob:
    """What to classify with (model and the settings that shape a result) and how to run it."""

    model: str | None = None  # checkpoint dir, Hub id, .onnx or .engine; None: the embedded demo model
    backend: str | None = None  # default: from the model (see runtimes.load_runtime)
    device: str = "auto"
    precision: str | None = None  # default: fp32 for PyTorch, the file's own for exported files
    batch_size: int = 8  # clips per inference call
    top_k: int = 5
    num_clips: int = 1
    sampling: str = "uniform"
    frame_sample_rate: int = 4
    workers: int | None = None  # decoding processes (Ray: decoding tasks at once); default: default_workers(device)
    ray: str | None = None  # None: this machine; ray_job.LOCAL_RAY: a new local Ray; else the address of a cluster
    actors: int | None = None  # Ray inference actors; default: one per GPU of the cluster, else 1
    resume: bool = True
    retry_failed: bool = False
    runtime_options: dict[str, Any] = field(default_factory=dict)  # passed to load_runtime
    window: float | None = None  # a timeline: a row per window of this many seconds (None: a row per video)
    hop: float | None = None  # seconds between windows [default: the window, back to back]
    segments: bool = False  # also merge consecutive windows of one label into segments (with window)
    read_options: ReadOptions = ReadOptions()  # rotation and the frame-size limit (vivit_deploy.video.opening)

    def __post_init__(self) -> None:
        for name in ("batch_size", "top_k", "num_clips", "frame_sample_rate"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}= must be at least 1, got {getattr(self, name)}")
        if self.window is None and (self.hop is not None or self.segments):
            raise ConfigError("hop= and segments= make a timeline: give window= SECONDS")
        if self.window is not None:
            if not self.window > 0 or (self.hop is not None and not self.hop > 0):
                raise ConfigError(f"window= and hop= must be positive seconds, got {self.window} and {self.hop}")
            if self.num_clips != 1:
                raise ConfigError("num_clips= is for a row per video; a timeline's window is one clip (window=, hop=)")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers= must be at least 1, got {self.workers}")
        if self.actors is not None and (self.actors < 1 or self.ray is None):
            raise ConfigError("actors= (at least 1) applies to a Ray job only (ray=)")


DEFAULT_CONCURRENT_FILES = 4  # files in flight to a server that reads them (classify --workers)


def default_workers(device: str) -> int:
    """Every core decodes (the workers wait while inference is the slower stage, leaving it the cores);
    with ``--device cuda``, every core but one, which feeds the GPU."""
    cores = available_cores()
    return max(1, cores - 1) if device.startswith("cuda") else cores


@dataclass
class JobSummary:
    output: Path
    total: int  # videos in the input
    skipped: int  # already in the output with the same settings
    classified: int  # rows written by this run (with and without errors)
    failed: int  # of those, rows with an error
    errors_in_output: int  # rows with an error among this job's videos in the final file
    wall_s: float
    times: StageTimes
    executor: str
    segments: Path | None = None  # a timeline's segments file
    unit: str = "videos"  # what a row is: "videos", or a timeline's "windows"

    def format(self) -> str:
        t = self.times
        lines = [
            f"{self.output}: {self.total} {self.unit}: {self.classified - self.failed} classified, {self.failed} failed, "
            f"{self.skipped} skipped (already there)",
        ]
        if self.classified:
            lines.append(f"  wall {self.wall_s:.1f} s ({self.classified / self.wall_s:.1f} {self.unit}/s, "
                         f"{t.clips / self.wall_s:.1f} clips/s) on {self.executor}")
            lines.append(
                f"  stage seconds: decode {t.decode:.1f}, preprocess {t.preprocess:.1f} (summed over parallel workers), "
                f"inference {t.inference:.1f}, write {t.write:.2f}"
            )
        if self.segments is not None:
            lines.append(f"  segments: {self.segments}")
        if self.errors_in_output:
            lines.append(f"  {self.errors_in_output} rows in the output have an error (see their 'error' column; "
                         "--retry-failed tries them again)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "unit": self.unit, "segments": None if self.segments is None else str(self.segments),
                "total": self.total, "skipped": self.skipped,
                "classified": self.classified, "failed": self.failed, "errors_in_output": self.errors_in_output,
                "wall_s": self.wall_s, "executor": self.executor,
                "stages": {k: getattr(self.times, k) for k in ("decode", "preprocess", "inference", "write")},
                "clips": self.times.clips}


def _no_bar(total: int):
    return contextlib.nullcontext(lambda videos, clips: None)


def classify_corpus(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    job: ClassifyJob = ClassifyJob(),
    *,
    log: Log | None = None,
    bar: ProgressBar | None = None,
) -> JobSummary:
    """Classify every video named by ``inputs`` into ``output`` (.parquet or .jsonl), resuming where it stopped."""
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.runtimes import expected_precision

    log = log or (lambda message: None)
    bar = bar or _no_bar
    started = time.perf_counter()
    if job.ray is not None:  # a missing Ray is a one-line error before any work
        import_ray()
    items = expand_inputs(inputs)
    source = job.model or str(demo_model_dir())
    hub = {k: job.runtime_options[k] for k in ("revision", "local_files_only", "cache_dir", "token")
           if job.runtime_options.get(k) is not None}
    log(f"{len(items)} videos; reading {source} ...")
    info = describe_model(source, job.backend, **hub)
    spec = ClipSpec(info.config.num_frames, job.num_clips, job.sampling, job.frame_sample_rate)
    hop = None if job.window is None else (job.hop or job.window)
    unit = "videos" if job.window is None else "windows"  # what a row is
    merge = job.runtime_options.get("merge_tokens")
    # a checkpoint run with token merging computes another function of the same weights: its rows never mix with the
    # unmerged model's on a resume
    sha256 = info.sha256 if merge is None else hashlib.sha256(f"{info.sha256} merge_tokens={merge}".encode()).hexdigest()
    settings = ResultSettings(
        model=source, model_sha256=sha256, backend=info.backend,
        precision=expected_precision(info.backend, info.precision, job.precision),
        sampling="uniform" if job.window is not None else job.sampling, clips=job.num_clips,
        frame_sample_rate=job.frame_sample_rate, top_k_count=min(job.top_k, info.config.num_labels),
        autorotate=job.read_options.autorotate, window_s=job.window, hop_s=hop,
    )
    videos = {item.path for item in items}
    unreadable: dict[str, str] = {}
    if job.window is not None:
        log(f"cutting {len(items)} videos into {job.window:g} s windows every {hop:g} s ...")
        items, unreadable = timeline_items(items, job.window, hop, info.config.num_frames, log, job.read_options)
    # A Triton model with its frames ensemble preprocesses on the server: send it uint8 frames (local runs;
    # Ray's decoding tasks preprocess, the actors' runtimes send float32)
    loader = ClipLoader(spec, info.preprocessor, preprocess=not (info.frames and job.ray is None),
                        read_options=job.read_options)
    times = StageTimes()
    with ResultStore(output, settings, resume=job.resume, retry_failed=job.retry_failed, warn=log) as store:
        pending = [item for item in items if not store.is_done(item.key)]
        skipped = len(items) - len(pending)
        failed_probes = [item for item in pending if item.path in unreadable]
        if failed_probes:  # a timeline's video that cannot be cut into windows: its row says why
            store.write_part([result_row(item.path, settings, error=unreadable[item.path]) for item in failed_probes])
            pending = [item for item in pending if item.path not in unreadable]
        log(f"{skipped} {unit} already in {output}, {len(pending)} to classify")
        executor = "nothing to do"
        if pending and job.ray is None and info.files and job.window is None:
            executor, times = _send_here(pending, source, store, settings, job, log, bar)
        elif pending and job.ray is None:
            executor, times = _run_here(pending, source, loader, store, settings, job, log, bar)
        elif pending:
            with bar(len(pending)) as update:
                executor, times = run_on_ray(pending, source, loader, store, settings, job, info, log=log,
                                             progress=update)
        log(f"writing {output} ...")
        rows = store.finalize({item.key: item.order for item in items})
    segments = None
    if job.segments:
        from vivit_deploy.pipeline.timeline import segments_path, write_segments

        segments = segments_path(Path(output))
        count = write_segments([r for r in rows if r["path"] in videos], segments)
        log(f"{count} segments in {segments}")
    return JobSummary(
        output=Path(output), total=len(items), skipped=skipped, classified=times.videos + len(failed_probes),
        failed=times.failed + len(failed_probes),
        errors_in_output=sum(1 for r in rows if r["error"] is not None and r["path"] in videos),
        wall_s=time.perf_counter() - started, times=times, executor=executor, segments=segments,
        unit=unit,
    )


def _send_here(pending, source, store, settings, job: ClassifyJob, log: Log, bar: ProgressBar):
    """A server that reads files (a Triton model with its video model): the files themselves, ``workers`` at a time
    (default 4), nothing decoded here."""
    from vivit_deploy.pipeline.remote import send_files

    concurrency = job.workers or DEFAULT_CONCURRENT_FILES
    log(f"loading {source} ...")
    runtime = load_checked_runtime(source, settings, backend=job.backend, device=job.device, precision=job.precision,
                                   runtime_options=job.runtime_options)
    with runtime:
        executor = f"{runtime.video_model} on {runtime.server}: the files sent, {concurrency} at a time"
        log(f"classifying {len(pending)} videos: {executor}")
        with bar(len(pending)) as update:
            times = send_files(pending, runtime, store, settings, concurrency=concurrency, num_clips=job.num_clips,
                               sampling=job.sampling, frame_sample_rate=job.frame_sample_rate,
                               autorotate=job.read_options.autorotate, top_k=settings.top_k_count, progress=update)
    return executor, times


def _run_here(pending, source, loader, store, settings, job: ClassifyJob, log: Log, bar: ProgressBar):
    workers = job.workers or default_workers(job.device)
    pool = start_pool(loader, workers)  # the processes import and warm up while the model loads
    try:
        log(f"loading {source} ...")
        runtime = load_checked_runtime(source, settings, backend=job.backend, device=job.device,
                                       precision=job.precision, runtime_options=job.runtime_options)
    except BaseException:
        pool.close(graceful=False)
        raise
    with runtime:
        executor = f"this machine: {workers} decoding processes, {runtime.backend} on {runtime.device} ({runtime.precision})"
        log(f"classifying {len(pending)} videos on {executor}")
        with bar(len(pending)) as update:
            times = run_local(pending, pool, runtime, store, settings, batch_size=job.batch_size, progress=update)
    return executor, times
