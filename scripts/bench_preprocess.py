"""Benchmark: our VideoPreprocessor against transformers' VivitImageProcessor, in one run, at parity.

    python scripts/bench_preprocess.py [--frames 32] [--height 480] [--width 640] [--iters 10]

Prints time per clip for each, the speed ratio, and the max abs difference of their outputs (the
ratio means nothing unless that difference is within the parity bound). Timings on a shared machine
are noisy: compare only the ratio, which is taken on the same clips in the same process.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    from vivit_deploy.bench.stages import compare_preprocessors, median_seconds
    from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor

    clip = np.random.default_rng(0).integers(0, 256, (args.frames, args.height, args.width, 3), dtype=np.uint8)
    ours = VideoPreprocessor()
    t0 = time.perf_counter()
    ours(clip)  # the first call compiles (or loads from numba's cache) the kernels
    print(f"first call (kernel compile or cache load): {time.perf_counter() - t0:.2f} s")
    if importlib.util.find_spec("transformers") is None:
        ours_ms = median_seconds(lambda: ours(clip), args.iters) * 1e3
        print(f"ours: {ours_ms:.1f} ms per clip (median of {args.iters}); "
              "transformers is not installed, so no reference ratio")
        return
    result = compare_preprocessors(PreprocessorConfig(), args.frames, args.height, args.width, iters=args.iters)
    ours_ms, ref_ms = result["ours_ms"], result["transformers_ms"]
    print(f"clip: {result['clip']} -> {tuple(result['output'])}")
    print(f"transformers VivitImageProcessor: {ref_ms:8.1f} ms per clip ({1e3 / ref_ms:6.1f} clips/s)")
    print(f"vivit_deploy VideoPreprocessor:   {ours_ms:8.1f} ms per clip ({1e3 / ours_ms:6.1f} clips/s)")
    print(f"speedup: {result['speedup']:.1f}x    max abs difference: {result['max_abs_diff']:.3g}")


if __name__ == "__main__":
    main()
