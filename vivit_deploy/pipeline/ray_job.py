"""The corpus job on Ray Data: decoding as CPU tasks spread over every node, inference in an actor pool.

    from_items(paths) -> map_batches(decode_rows, num_cpus=1)                       tasks, any node
                      -> map_batches(InferenceActor, compute=ActorPoolStrategy(...),  actors, num_gpus=1 on CUDA)
                      -> iter_batches() in the driver -> ResultStore.write_part          same parts as the local job

The stages are the ones the local executor runs (``stages.py``). Rows come back to the driver and
are written by the same store, so a Ray run resumes a local one and the other way round, and the
exactly-once guarantee does not depend on Ray: a block that Ray recomputes after losing a node is
written once more at most, and the final merge keeps one row per video. The output directory
therefore needs to be on the driver only; the videos and the model must be readable at the same
paths on every node (a shared file system), and vivit_deploy installed in every node's Python.

Decoding errors are rows, not failed tasks; a lost node's tasks are retried by Ray and its actors
restarted (Ray Data restarts actor-pool actors without limit).
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from vivit_deploy.errors import BackendUnavailableError, VivitDeployError, first_line
from vivit_deploy.pipeline.local import StageTimes
from vivit_deploy.pipeline.stages import ClipLoader, ResultSettings, classify_rows, error_line, load_checked_runtime

if TYPE_CHECKING:
    from vivit_deploy.pipeline.inputs import VideoItem
    from vivit_deploy.pipeline.model import ModelInfo
    from vivit_deploy.pipeline.results import ResultStore


LOCAL_RAY = "local"  # ClassifyJob.ray: start a Ray instance on this machine instead of joining one


class RayJobError(VivitDeployError, RuntimeError):
    """The Ray job failed for a reason other than a video (the model, the cluster)."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("ray= needs Ray Data: pip install 'vivit-deploy[ray]'") from None
    return ray


def decode_rows(batch: dict[str, np.ndarray], loader: ClipLoader, frame_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Ray task, stage 1 per row; a video that cannot be read keeps its row, with zeros and the error."""
    pixels, errors, decode_s, preprocess_s, damaged = [], [], [], [], []
    for path, frames in zip(batch["path"], batch["frames"]):
        try:
            loaded = loader.load(str(path), list(frames)) if len(frames) else loader.load(str(path))
            pixels.append(loaded.pixel_values)
            errors.append("")
            decode_s.append(loaded.decode_s)
            preprocess_s.append(loaded.preprocess_s)
            damaged.append(loaded.damaged_frames)
        except Exception as exc:  # a row, not a failed task
            pixels.append(np.zeros(loader.output_shape(frame_shape), np.float32))
            errors.append(error_line(exc))
            decode_s.append(0.0)
            preprocess_s.append(0.0)
            damaged.append(0)
    return {"path": batch["path"], "window": batch["window"], "start": batch["start"], "end": batch["end"],
            "pixel_values": np.stack(pixels), "error": np.array(errors, dtype=object),
            "decode_s": np.array(decode_s), "preprocess_s": np.array(preprocess_s), "damaged_frames": np.array(damaged)}


def _window(batch: dict[str, np.ndarray], i: int):
    """The timeline window of row ``i`` of a batch (None for a row per video)."""
    from vivit_deploy.pipeline.inputs import TimeWindow

    index = int(batch["window"][i])
    return None if index < 0 else TimeWindow(index, float(batch["start"][i]), float(batch["end"][i]), ())


class InferenceActor:
    """Ray actor, stage 2 and 3: one runtime per actor, a batch of videos in, their rows out (as JSON text)."""

    def __init__(self, source: str, backend: str, device: str, precision: str, runtime_options: dict[str, Any],
                 settings: ResultSettings, batch_size: int):
        self.runtime = load_checked_runtime(source, settings, backend=backend, device=device, precision=precision,
                                            runtime_options=runtime_options, where=os.uname().nodename)
        self.settings = settings
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entries = [(str(path), _window(batch, i), batch["pixel_values"][i], str(error) if error else None,
                    int(batch["damaged_frames"][i])) for i, (path, error) in enumerate(zip(batch["path"], batch["error"]))]
        rows, seconds = classify_rows(self.runtime, self.settings, self.batch_size, entries)
        ok = [i for i, entry in enumerate(entries) if entry[3] is None]
        classified = set(ok)
        clips = batch["pixel_values"].shape[1]
        out = []
        for i, row in enumerate(rows):
            stage = {"decode": float(batch["decode_s"][i]), "preprocess": float(batch["preprocess_s"][i]),
                     "inference": seconds / len(ok) if i in classified else 0.0, "clips": clips if i in classified else 0}
            out.append(json.dumps({"row": row, "stage": stage}))
        return {"result": np.array(out, dtype=object)}


def decode_memory(loader: ClipLoader, info: "ModelInfo") -> int:
    """Bytes a decoding task holds at its peak: the worker process itself (numpy, PyAV, numba: about
    150 MiB measured by Ray on the demo model), a few full frames of a 4K video in flight (each frame is
    preprocessed as it is decoded) and the model input.

    Declared so that Ray packs no more decoding tasks onto a node than its memory holds. It also keeps
    the decoding tasks' resources different from the inference actors', which is what stops Ray from
    fusing the two stages into the actors (decoding would then run only where actors run).
    """
    frames = 4 * 2160 * 3840 * 3
    model_input = 4 * int(np.prod(loader.output_shape(info.frame_shape)))
    return frames + 2 * model_input + (192 << 20)


def run_on_ray(
    pending: list["VideoItem"],
    source: str,
    loader: ClipLoader,
    store: "ResultStore",
    settings: ResultSettings,
    job: Any,  # pipeline.job.ClassifyJob: ray, workers, actors, device, batch_size, num_clips, runtime_options
    info: "ModelInfo",
    *,
    log: Callable[[str], None],
    progress: Callable[[int, int], None],
) -> tuple[str, StageTimes]:
    """Classify ``pending`` on Ray, writing rows to ``store`` as they arrive; the caller finalizes the store."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        log("starting a local Ray ..." if job.ray == LOCAL_RAY else f"joining the Ray cluster at {job.ray} ...")
        try:
            ray.init(address=job.ray, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=True, configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayJobError(f"could not start or join Ray at {job.ray!r}: {first_line(exc)}") from exc
    try:
        return _run(ray, pending, source, loader, store, settings, job, info, log, progress)
    finally:
        if started_here:
            ray.shutdown()


def _run(ray, pending, source, loader, store, settings, job, info, log, progress) -> tuple[str, StageTimes]:
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the job's own bar counts videos
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": we know

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    device = job.device
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    cuda = device.startswith("cuda")
    if cuda and not gpus:
        raise RayJobError(f"device={job.device} but the Ray cluster has no GPU (resources: {resources})")
    actors = job.actors or (gpus if cuda else 1)
    videos_per_call = max(1, job.batch_size // job.num_clips)
    executor = (f"Ray ({len(ray.nodes())} nodes, {cpus} CPUs, {gpus} GPUs): decoding tasks"
                f"{'' if job.workers is None else f' (at most {job.workers} at once)'}, {actors} inference "
                f"actor(s) on {device}")
    log(f"classifying {len(pending)} videos on {executor}")

    items = [{"path": item.path, "window": -1 if item.window is None else item.window.index,
              "start": 0.0 if item.window is None else item.window.start,
              "end": 0.0 if item.window is None else item.window.end,
              "frames": [] if item.window is None else list(item.window.frames)} for item in pending]
    blocks = min(len(items), max(256, 16 * cpus))  # small blocks: spread over nodes, cheap to recompute
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        decode_rows, batch_size=1, batch_format="numpy", num_cpus=1, memory=decode_memory(loader, info),
        fn_kwargs={"loader": loader, "frame_shape": info.frame_shape},
        compute=TaskPoolStrategy(size=job.workers) if job.workers else None,
    ).map_batches(
        InferenceActor, batch_size=videos_per_call, batch_format="numpy",
        fn_constructor_kwargs={
            "source": source, "backend": settings.backend, "device": "cuda" if cuda else "cpu",
            "precision": settings.precision, "runtime_options": dict(job.runtime_options),
            "settings": settings, "batch_size": job.batch_size,
        },
        compute=ActorPoolStrategy(size=actors), num_gpus=1 if cuda else 0, num_cpus=1,
    )
    times = StageTimes()
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            rows, clips, failed = [], 0, 0
            for text in batch["result"]:
                entry = json.loads(text)
                rows.append(entry["row"])
                stage = entry["stage"]
                times.decode += stage["decode"]
                times.preprocess += stage["preprocess"]
                times.inference += stage["inference"]
                clips += stage["clips"]
                failed += entry["row"]["error"] is not None
            times.write_part(store, rows, clips, failed, progress)
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, VivitDeployError):
            raise RayJobError(f"the Ray job failed: {cause}") from exc
        raise RayJobError(f"the Ray job failed: {str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__}") from exc
    return executor, times
