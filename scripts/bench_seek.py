"""Decoding a long video: seeking to keyframes against decoding front to back, same frames.

    python scripts/bench_seek.py                          # a generated 5-minute 30 fps video, 240x320
    python scripts/bench_seek.py --minutes 5 --size 360x640 --keyint 60 250
    python scripts/bench_seek.py --video long.mp4

For each keyframe interval (x264's keyint; 250 is its default, 60 is 2 s, common for streaming) it
writes the video once, then reads 32 uniformly sampled frames (and 4 x 32 stride-sampled clips) with
``read_clips(seek=True)`` and ``seek=False``, checks that the frames are identical, and prints the
seconds of each (best of --iters). Asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path


def best_of(fn, iters: int) -> float:
    from vivit_deploy.bench.measure import time_calls

    return min(time_calls(lambda _: fn(), None, iters, cuda=False, tick=lambda: None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=None, help="measure this video instead of generating one")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--size", default="240x320", help="HxW of the generated video")
    parser.add_argument("--keyint", type=int, nargs="+", default=[250, 60], help="keyframe intervals to generate")
    parser.add_argument("--frames", type=int, default=32, help="frames per clip")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()

    import numpy as np

    from vivit_deploy.video.reading import count_frames, read_clips

    work = Path(tempfile.mkdtemp(prefix="bench-seek-"))
    try:
        if args.video is not None:
            cases = [(str(args.video), args.video)]
        else:
            from vivit_deploy.demo.motion import write_corpus

            height, width = (int(v) for v in args.size.split("x"))
            frames = int(args.minutes * 60 * 30)
            cases = []
            for keyint in args.keyint:
                print(f"writing a {args.minutes:g}-minute {height}x{width} video, keyint {keyint} ...", file=sys.stderr)
                write_corpus(work / f"k{keyint}", 1, height=height, width=width, frames=frames, keyint=keyint)
                cases.append((f"{args.minutes:g} min {height}x{width} 30 fps, keyint {keyint}", work / f"k{keyint}" / "video00000.mp4"))
        print("| video | sampling | front to back s | seeking s | speed-up | same frames |\n| --- | --- | ---: | ---: | ---: | --- |")
        for name, path in cases:
            total = count_frames(path)
            for sampling, clips in (("uniform", 1), ("stride", 4)):
                kwargs = dict(num_clips=clips, sampling=sampling, frame_sample_rate=4)
                same = np.array_equal(read_clips(path, args.frames, seek=True, **kwargs),
                                      read_clips(path, args.frames, seek=False, **kwargs))
                seek = best_of(lambda: read_clips(path, args.frames, seek=True, **kwargs), args.iters)
                linear = best_of(lambda: read_clips(path, args.frames, seek=False, **kwargs), args.iters)
                label = f"{sampling}, {clips} x {args.frames} of {total} frames"
                print(f"| {name} | {label} | {linear:.2f} | {seek:.2f} | {linear / seek:.1f}x | {'yes' if same else 'NO'} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
