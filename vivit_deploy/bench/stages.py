"""Where production time goes: decode, preprocess, inference and end to end on real video files.

Each video goes through the steps ``VideoClassifier.classify`` takes (``read_clips`` -> the shared
``VideoPreprocessor`` -> ``Runtime.run_batches`` -> softmax and top-k), each step timed on its own, so
the stages add up to the end-to-end time. One warm-up video first (kernel compilation, caches), then
every video once. Also here: our preprocessor against transformers' ``VivitImageProcessor`` on the same
clip, with the largest difference between their outputs (a speed ratio means nothing without parity).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vivit_deploy.errors import VideoReadError
from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor

STAGES = ("decode", "preprocess", "inference", "end to end")


def measure_stages(runtime, preprocessor: VideoPreprocessor, videos: Sequence[Path]) -> dict[str, Any]:
    """Per stage: mean ms per clip over ``videos`` (one clip each) and clips/s; plus the videos' frame sizes.

    Unreadable files are skipped and listed; :class:`VideoReadError` only when none can be read.
    """
    from vivit_deploy.predict import softmax
    from vivit_deploy.video.reading import read_clips

    num_frames = runtime.config.num_frames

    def one(path: Path) -> dict[str, float]:
        t0 = time.perf_counter()
        clips = read_clips(path, num_frames, num_clips=1, sampling="uniform")
        t1 = time.perf_counter()
        x = preprocessor(clips)
        t2 = time.perf_counter()
        logits = runtime.run_batches(x)
        t3 = time.perf_counter()
        np.argsort(-softmax(logits.mean(axis=0)))[:5]  # top-k, as classify ends
        t4 = time.perf_counter()
        return {"decode": t1 - t0, "preprocess": t2 - t1, "inference": t3 - t2, "end to end": t4 - t0,
                "frame_hw": clips.shape[2:4]}

    runs, unreadable = [], []
    warm = False
    for path in videos:
        try:
            if not warm:
                one(path)  # warm-up: numba kernels, cuDNN first-run work
                warm = True
            runs.append(one(path))
        except VideoReadError as exc:  # one bad file in a directory must not cost the whole run
            unreadable.append(str(exc))
    if not runs:
        raise VideoReadError("no readable video for the stages: " + "; ".join(unreadable))
    out: dict[str, Any] = {"videos": len(runs), "frames_per_clip": num_frames, "unreadable": unreadable,
                           "frame_sizes": sorted({f"{r['frame_hw'][0]}x{r['frame_hw'][1]}" for r in runs})}
    mean = {stage: float(np.mean([r[stage] for r in runs])) for stage in STAGES}
    out["stages"] = {
        stage: {"ms_per_clip": 1e3 * seconds, "clips_per_s": 1 / seconds, "share": seconds / mean["end to end"]}
        for stage, seconds in mean.items()
    }
    return out


def compare_preprocessors(config: PreprocessorConfig, num_frames: int, height: int = 480, width: int = 640,
                          iters: int = 5, seed: int = 0) -> dict[str, Any]:
    """Ours against transformers' VivitImageProcessor on one random uint8 clip (num_frames x height x width)."""
    import transformers

    clip = np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    ours = VideoPreprocessor(config)
    kwargs = {k: v for k, v in config.to_dict().items() if k != "image_processor_type" and k not in config.extra}
    theirs = transformers.VivitImageProcessor(**kwargs)
    frames = list(clip)
    mine = ours(clip)  # first call compiles or loads the numba kernels
    reference = np.asarray(theirs(frames, return_tensors="np")["pixel_values"])
    ours_s = median_seconds(lambda: ours(clip), iters)
    theirs_s = median_seconds(lambda: theirs(frames, return_tensors="np"), max(2, iters // 2))
    return {
        "clip": f"{num_frames}x{height}x{width}", "output": list(mine.shape[1:]),
        "ours_ms": ours_s * 1e3, "transformers_ms": theirs_s * 1e3, "speedup": theirs_s / ours_s,
        "max_abs_diff": float(np.abs(mine - reference).max()), "transformers": transformers.__version__,
    }


def median_seconds(fn, iters: int) -> float:
    """Median host-clock seconds of ``iters`` calls of ``fn``."""
    from vivit_deploy.bench.measure import time_calls

    return float(np.median(time_calls(lambda _: fn(), None, iters, cuda=False, tick=lambda: None)))
