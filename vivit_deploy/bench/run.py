"""One benchmark run, start to finish: plan, prepare files, ceiling, each backend in its own process,
drift against the reference, stages and preprocessing, then the report."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import tempfile
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import numpy as np

from vivit_deploy.bench.measure import Job, measure_in_child
from vivit_deploy.bench.plan import (
    BENCH_BACKENDS, REFERENCE_BACKEND, BenchSettings, choose_backends, prepare_artifacts, variant_name,
)
from vivit_deploy.bench.report import BenchReport

Progress = Callable[[str], None]
# A progress bar: bar(total_calls) is a context manager yielding advance(backend_name), called after each call.
Bar = Callable[[int], ContextManager[Callable[[str], None]]]


@contextlib.contextmanager
def _no_bar(total: int) -> Iterator[Callable[[str], None]]:
    yield lambda backend: None


def steps_in(settings: BenchSettings, variants: Sequence) -> int:
    """How many calls the run makes, for a progress bar over the whole run."""
    return len(variants) * len(settings.batch_sizes) * (settings.warmup + settings.iters)


def reference_name(settings: BenchSettings) -> str:
    """The result every drift is taken against: our PyTorch sdpa, in fp32 when the run has several precisions."""
    return variant_name(REFERENCE_BACKEND, "fp32", True) if settings.matrix else REFERENCE_BACKEND


def run_bench(
    settings: BenchSettings,
    progress: Progress | None = None,
    bar: Bar = _no_bar,
    videos: Sequence[Path] | None = None,
) -> BenchReport:
    """Measure every backend ``settings`` asks for and return the report.

    ``progress`` gets a line per phase; ``bar`` draws one progress bar over every warm-up and timed
    call of every backend. ``videos`` are the files the stages run on (default: the bundled samples).
    """
    progress = progress or (lambda message: None)
    choice = choose_backends(settings)
    with tempfile.TemporaryDirectory(prefix="vivit-bench-") as tmp:
        artifacts = prepare_artifacts(settings, choice, Path(tmp), progress)
        from vivit_deploy.model.checkpoint import load_config

        config = load_config(artifacts.checkpoint)
        ceiling = {}
        if settings.ceiling:
            from vivit_deploy.bench.ceiling import measure_ceiling

            progress("measuring the matrix-product ceiling ...")
            for precision in dict.fromkeys(p for p in settings.precisions if p in ("fp32", "fp16", "bf16")):
                ceiling.update(measure_ceiling(settings.device, precision))
        results = {}
        with bar(steps_in(settings, choice.variants)) as advance:
            for backend, precision in choice.variants:
                name = variant_name(backend, precision, settings.matrix)
                job = Job(backend, str(artifacts.target(BENCH_BACKENDS[backend], precision)), settings.device, precision,
                          settings.batch_sizes, settings.warmup, settings.iters, settings.seed, settings.offline,
                          settings.merge_tokens)
                results[name] = measure_in_child(job, tick=lambda name=name: advance(name))
                results[name]["precision"] = precision
        _add_drift(results, reference_name(settings))
        stages = preprocessing = None
        notes = list(artifacts.notes)
        if settings.stages:
            stages, note = _stages(settings, settings.precisions[0], artifacts.checkpoint, videos, progress)
            notes += [note] if note else []
        if settings.peers:
            preprocessing, note = _preprocessing(artifacts.checkpoint, config, progress)
            notes += [note] if note else []

    from vivit_deploy.model.modeling import token_merging_schedule

    schedule = token_merging_schedule(settings.merge_tokens, config.num_hidden_layers) if settings.merge_tokens else ()
    merging = {} if not any(schedule) else {
        "merge_tokens": list(schedule), "gflop_per_clip_unmerged": config.flops_per_clip() / 1e9,
        "token_counts": list(config.token_counts(schedule))}
    return BenchReport(
        environment=environment(settings.device),
        model={"label": artifacts.label, "input_shape": list(config.input_shape), "tokens": config.num_patches + config.class_tokens,
               "num_labels": config.num_labels, "gflop_per_clip": config.flops_per_clip(schedule) / 1e9, **merging},
        settings={"batch_sizes": list(settings.batch_sizes), "precision": settings.precision,
                  "precisions": list(settings.precisions), "matrix": settings.matrix,
                  "reference": reference_name(settings), "warmup": settings.warmup, "iters": settings.iters,
                  "seed": settings.seed},
        results=results, skipped=dict(choice.skipped), ceiling=ceiling, stages=stages,
        preprocessing=preprocessing, notes=notes,
    )


def _add_drift(results: dict[str, dict], reference_name: str) -> None:
    """Max abs logit difference, worst cosine and top-1 agreement of each result against the reference,
    on identical input (the first batch size's clips, the same seed for every backend)."""
    from vivit_deploy.accuracy.statistics import logit_stats

    probes = {name: result.pop("probe_logits", None) for name, result in results.items()}
    reference = probes.get(reference_name)
    if reference is None:
        return
    reference = np.asarray(reference, dtype=np.float32)
    for name, logits in probes.items():
        if name == reference_name or logits is None:
            continue
        stats = logit_stats(reference, np.asarray(logits, dtype=np.float32))
        results[name]["drift"] = {"max_abs_diff": stats.max_abs, "min_cosine": stats.min_cosine,
                                  "top1_agreement": stats.top1_agreement}


def _stages(settings: BenchSettings, precision: str, checkpoint: Path, videos, progress: Progress):
    from vivit_deploy.bench.stages import measure_stages
    from vivit_deploy.demo import sample_videos
    from vivit_deploy.errors import VideoReadError
    from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor
    from vivit_deploy.runtimes import load_runtime

    videos = list(videos) if videos else [path for path, _ in sample_videos()]
    progress(f"timing decode, preprocessing and inference on {len(videos)} video(s) (torch-sdpa) ...")
    precision = precision if precision in ("fp32", "fp16", "bf16") else "fp32"  # PyTorch runs no int8
    with load_runtime(checkpoint, "torch", device=settings.device, precision=precision,
                      attn_implementation="sdpa") as runtime:
        config = runtime.config
        preprocessor = VideoPreprocessor(runtime.preprocessor or PreprocessorConfig.for_input_size(
            config.image_height, config.image_width))
        try:
            stages = measure_stages(runtime, preprocessor, videos)
        except VideoReadError as exc:  # the timings already taken are kept; the report says why
            return None, f"stages not measured: {exc}"
    stages["backend"] = f"torch-sdpa on {settings.device}, {precision}"
    skipped = stages["unreadable"]
    return stages, (f"stages skipped {len(skipped)} unreadable video(s): {'; '.join(skipped)}" if skipped else None)


def _preprocessing(checkpoint: Path, config, progress: Progress):
    import importlib.util

    from vivit_deploy.bench.stages import compare_preprocessors
    from vivit_deploy.video.preprocessing import PreprocessorConfig, preprocessor_config_in

    if importlib.util.find_spec("transformers") is None:
        return None, "preprocessing not compared: transformers is not installed"
    progress("timing the preprocessors on a 480x640 clip ...")
    preprocessor = preprocessor_config_in(checkpoint) or PreprocessorConfig.for_input_size(config.image_height, config.image_width)
    return compare_preprocessors(preprocessor, config.num_frames), None


def environment(device: str) -> dict:
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device, "torch": torch.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
    }
    if device.startswith("cuda"):
        from vivit_deploy.runtimes.base import device_index

        info["device_name"] = torch.cuda.get_device_name(device_index(device))
        info["cuda"] = torch.version.cuda
    else:
        from vivit_deploy.runtimes.cpu import cpu_flags, cpu_name

        info["device_name"] = f"{cpu_name()} ({os.cpu_count()} cores)"
        info["cpu_flags"] = cpu_flags()
        info["threads"] = torch.get_num_threads()
    return info
