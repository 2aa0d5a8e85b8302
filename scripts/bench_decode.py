"""Benchmark: reading sampled clips from large videos, ours against decord and OpenCV, and the memory it takes.

    python scripts/bench_decode.py speed  [--dir DIR] [--runs 3]     # time per 32-frame clip, one process each
    python scripts/bench_decode.py memory [--dir DIR]                # peak memory of predict and classify

The files are made here with ffmpeg (Debian's; `apt-get install ffmpeg`) from its ``testsrc2`` source and kept in
--dir (default /tmp/vivit-bench-videos) for the next run:

- ``1080p-60s.mp4``: 1920x1080, 60 s at 30 fps, a keyframe every 2 s (libx264, preset veryfast);
- ``4k-10s.mp4``: 3840x2160, 10 s at 30 fps, a keyframe every 1 s;
- ``8k-2s.mp4`` (memory only): 7680x4320, 2 s at 30 fps, a keyframe every 1 s.

speed: each reader takes 32 frames sampled uniformly (the same indices, ``sample_indices``) in a process of its own,
median of --runs, with the process's peak resident memory:

- ours, raw: ``read_video`` (uint8 frames at full resolution), decoders as ``predict`` runs them (one per core);
- ours, fused: ``read_clips(..., transform=VideoPreprocessor().frame)``: decode and preprocess, each frame turned
  into the model's input as it is decoded (224x224 float32);
- PyAV with FFmpeg's own threads (``thread_type="AUTO"``), front to back, raw: what the toolkit did before its
  decoders went single-threaded (measured, not used: its frames depend on the thread count on damaged files);
- decord 0.6 ``VideoReader(num_threads=0).get_batch`` and OpenCV ``grab``/``retrieve``, raw (pip install decord
  opencv-python-headless; a peer that does not import is reported as such);
- torchcodec, where it imports (its wheel on the package index needs the CUDA torch: reported when it does not).

memory: the peak resident memory of ``vivit-deploy predict`` (the demo model, 8 frames) on a bundled sample, the 4K
and the 8K file, each in its own process, and of ``vivit-deploy classify`` (default workers) on a corpus of four
copies of the 8K file, the whole process tree sampled every 20 ms.

Timings on a shared 2-core machine are noisy: compare the ratios of one run, with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

FILES = {
    "1080p-60s.mp4": ("1920x1080", 60, 60),  # size, seconds, keyframe interval in frames (30 fps)
    "4k-10s.mp4": ("3840x2160", 10, 30),
    "8k-2s.mp4": ("7680x4320", 2, 30),
}

READERS = ("ours-raw", "ours-fused", "pyav-ffmpeg-threads", "decord", "opencv", "torchcodec")

CHILD = r'''
import json, resource, sys, time
import numpy as np
reader, path, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
from vivit_deploy.video.reading import count_frames, sample_indices
total = count_frames(path)
indices = sample_indices(total, frames)[0].tolist()
started = time.perf_counter()
if reader == "ours-raw":
    from vivit_deploy.video.reading import read_video
    out = read_video(path, frames)
elif reader == "ours-fused":
    from vivit_deploy.video.preprocessing import VideoPreprocessor
    from vivit_deploy.video.reading import read_clips
    pre = VideoPreprocessor()
    pre.frame(np.zeros((300, 400, 3), np.uint8))  # the kernels load before the clock starts
    started = time.perf_counter()
    out = read_clips(path, frames, num_clips=1, sampling="uniform", transform=pre.frame)
elif reader == "pyav-ffmpeg-threads":
    import av
    wanted, kept = set(indices), {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = 0
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= max(wanted):
                break
    out = np.stack([kept[i] for i in indices])
elif reader == "decord":
    import decord
    out = decord.VideoReader(path, num_threads=0).get_batch(indices).asnumpy()
elif reader == "opencv":
    import cv2
    capture, wanted, kept = cv2.VideoCapture(path), set(indices), {}
    for i in range(max(indices) + 1):
        capture.grab()
        if i in wanted:
            kept[i] = cv2.cvtColor(capture.retrieve()[1], cv2.COLOR_BGR2RGB)
    out = np.stack([kept[i] for i in indices])
elif reader == "torchcodec":
    from torchcodec.decoders import VideoDecoder
    out = VideoDecoder(path).get_frames_at(indices).data.numpy()
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "shape": list(out.shape)}))
'''


def make_files(directory: Path, names) -> dict[str, Path]:
    ffmpeg = shutil.which("ffmpeg")
    out = {}
    for name in names:
        path = directory / name
        if not path.exists():
            if ffmpeg is None:
                sys.exit("ffmpeg is not installed: apt-get install ffmpeg (it makes the benchmark's videos)")
            size, seconds, keyint = FILES[name]
            print(f"making {path} with ffmpeg ...", file=sys.stderr, flush=True)
            tmp = path.with_suffix(".tmp.mp4")
            subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
                            "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", str(keyint),
                            "-pix_fmt", "yuv420p", str(tmp)], check=True)
            tmp.rename(path)
        out[name] = path
    return out


def run_child(reader: str, path: Path, frames: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, reader, str(path), str(frames)], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]
        return {"error": last[:160]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed(args) -> None:
    from vivit_deploy.runtimes.cpu import describe_cpu

    files = make_files(args.dir, ["1080p-60s.mp4", "4k-10s.mp4"])
    print(f"# reading 32 uniformly sampled frames, median of {args.runs} runs, a process each; {describe_cpu()}")
    print(f"# python scripts/bench_decode.py speed --runs {args.runs}  ({time.strftime('%Y-%m-%d')})\n")
    for name, path in files.items():
        results = {}
        for reader in READERS:
            runs = [run_child(reader, path, 32) for _ in range(args.runs)]
            if "error" in runs[0]:
                results[reader] = runs[0]
                continue
            results[reader] = {"seconds": statistics.median(r["seconds"] for r in runs),
                               "peak_mb": max(r["peak_mb"] for r in runs), "shape": runs[0]["shape"]}
        print(f"## {name}\n")
        print("| reader | s (median) | peak MB | output | decord's time over this |")
        print("| --- | ---: | ---: | --- | ---: |")
        decord = results.get("decord", {}).get("seconds")
        for reader, r in results.items():
            if "error" in r:
                print(f"| {reader} | - | - | does not run here: {r['error']} | |")
                continue
            ratio = f"{decord / r['seconds']:.2f}x" if decord else ""
            print(f"| {reader} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {'x'.join(map(str, r['shape']))} | {ratio} |")
        print()


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc."""
    total, todo = 0, [pid]
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def peak_of(command: list[str]) -> tuple[float, float, int]:
    """(peak MB of the process tree, seconds, exit code) of ``command``."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0.0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(process.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    sampler.join()
    if process.returncode:
        print(f"  {' '.join(command[:4])} ...: exit {process.returncode}: {err.decode()[-300:]}", file=sys.stderr)
    return peak[0], time.perf_counter() - started, process.returncode


def memory(args) -> None:
    from vivit_deploy.demo import default_sample
    from vivit_deploy.runtimes.cpu import describe_cpu

    files = make_files(args.dir, ["4k-10s.mp4", "8k-2s.mp4"])
    cli = [sys.executable, "-m", "vivit_deploy.cli"]
    print(f"# peak resident memory of the whole process tree; {describe_cpu()}")
    print(f"# python scripts/bench_decode.py memory  ({time.strftime('%Y-%m-%d')})\n")
    print("| command | input | peak MB | over the sample | s |")
    print("| --- | --- | ---: | ---: | ---: |")
    base = None
    for label, path in (("bundled sample (32x32)", default_sample()), ("4K, 10 s", files["4k-10s.mp4"]),
                        ("8K, 2 s", files["8k-2s.mp4"])):
        peak, seconds, _ = peak_of([*cli, "predict", str(path), "--json"])
        base = base if base is not None else peak
        print(f"| predict | {label} | {peak:.0f} | {peak - base:+.0f} | {seconds:.1f} |")
    corpus = args.dir / "corpus-8k"
    corpus.mkdir(exist_ok=True)
    for i in range(4):
        target = corpus / f"copy-{i}.mp4"
        if not target.exists():
            os.link(files["8k-2s.mp4"], target)
    output = args.dir / "classify-8k.jsonl"
    peak, seconds, _ = peak_of([*cli, "classify", str(corpus), "-o", str(output), "--no-resume"])
    print(f"| classify (default workers) | 4 files of 8K | {peak:.0f} | {peak - base:+.0f} | {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "memory"])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vivit-bench-videos"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    speed(args) if args.what == "speed" else memory(args)


if __name__ == "__main__":
    main()
