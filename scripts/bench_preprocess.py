"""Benchmark: our VideoPreprocessor against transformers' VivitImageProcessor, in one run, at parity.

    python scripts/bench_preprocess.py [--frames 32] [--height 480] [--width 640] [--iters 10]

Prints time per clip for each, the speed ratio, and the max abs difference of their outputs (the
ratio means nothing unless that difference is within the parity bound). Timings on a shared machine
are noisy: compare only the ratio, which is taken on the same clips in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _time(fn, iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    from vivit_deploy.preprocessing import VideoPreprocessor

    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (args.frames, args.height, args.width, 3), dtype=np.uint8)
    ours = VideoPreprocessor()
    t0 = time.perf_counter()
    out = ours(clip)  # the first call compiles (or loads from numba's cache) the kernels
    print(f"first call (kernel compile or cache load): {time.perf_counter() - t0:.2f} s")
    ours_times = _time(lambda: ours(clip), args.iters)

    try:
        from transformers import VivitImageProcessor
    except ImportError:
        print(f"ours: {statistics.median(ours_times) * 1e3:.1f} ms per clip (median of {args.iters}); "
              "transformers is not installed, so no reference ratio")
        return
    ref = VivitImageProcessor()
    frames = list(clip)
    expected = np.asarray(ref(frames, return_tensors="np")["pixel_values"])
    ref_times = _time(lambda: ref(frames, return_tensors="np"), max(3, args.iters // 3))

    diff = float(np.abs(expected - out).max())
    ours_ms, ref_ms = statistics.median(ours_times) * 1e3, statistics.median(ref_times) * 1e3
    print(f"clip: {args.frames} frames {args.height}x{args.width} -> {tuple(out.shape)}")
    print(f"transformers VivitImageProcessor: {ref_ms:8.1f} ms per clip ({1e3 / ref_ms:6.1f} clips/s)")
    print(f"vivit_deploy VideoPreprocessor:   {ours_ms:8.1f} ms per clip ({1e3 / ours_ms:6.1f} clips/s)")
    print(f"speedup: {ref_ms / ours_ms:.1f}x    max abs difference: {diff:.3g}")


if __name__ == "__main__":
    main()
