"""Throughput of a model served by Triton with concurrent clients, against the same runtime in-process.

    python scripts/bench_triton.py                                   # demo model, ONNX Runtime CPU, local server
    python scripts/bench_triton.py --python-backend torch --device cuda --precision fp16 --clients 1,8,32
    python scripts/bench_triton.py --url triton://host:8000/vivit    # a server that is already running

Without --url it writes a `--platform python` repository with the uint8-frames ensemble for the model
(`vivit-deploy triton-repo`) and starts the tritonserver of VIVIT_TRITON_HOME (scripts/setup_triton_server.sh)
on 127.0.0.1. Each client thread sends one clip of uint8 frames at a time to the ensemble for --seconds;
the server's dynamic batcher gathers what arrives together. The same clips then run in this process on
the same runtime (batch 1 and batch 8) for comparison. The clips are uint8 frames of the demo task's
synthetic videos (48x64), as a decoder would hand them over. Prints clips/s and latency per client count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def drive(runtime, clips: np.ndarray, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        i = k
        mine = []
        while time.perf_counter() < stop:
            started = time.perf_counter()
            runtime.run_frames(clips[i % len(clips)][None])
            mine.append(time.perf_counter() - started)
            i += clients
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = sorted(1e3 * s for s in latencies)
    return {"clips_per_s": len(ms) / wall, "p50_ms": statistics.median(ms), "p99_ms": ms[int(0.99 * (len(ms) - 1))]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="triton://host:port/MODEL of a running server")
    parser.add_argument("--model", default=None, help="checkpoint or .onnx to serve [default: the demo model]")
    parser.add_argument("--python-backend", default="onnxruntime", choices=["onnxruntime", "openvino", "torch"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrent client counts")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    args = parser.parse_args()

    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.predict import VideoClassifier
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.demo.motion import VIDEO_FRAMES, make_dataset
    from vivit_deploy.video.reading import sample_indices

    counts = [int(c) for c in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    server = served = None
    source = args.model or str(demo_model_dir())
    if args.url is None:
        from vivit_deploy.export import export_onnx
        from vivit_deploy.serving.local_server import LocalTritonServer
        from vivit_deploy.serving.repository import write_repository

        served = source
        if args.python_backend != "torch" and not source.endswith(".onnx"):
            served = str(work / "model.onnx")
            export_onnx(source, served)
        write_repository(served, work / "repo", platform="python", python_backend=args.python_backend,
                         python_device=args.device, python_precision=args.precision, kind="cpu",
                         max_queue_delay_us=args.max_queue_delay_us)
        server = LocalTritonServer(None, work / "repo").start()
        url = f"triton://{server.http}/vivit"
    else:
        url = args.url
    try:
        remote = load_runtime(url)
        frames = remote.config.num_frames
        videos, _ = make_dataset(32, seed=0)  # uint8 frames of the demo task, as a decoder would hand them over
        clips = np.ascontiguousarray(videos[:, sample_indices(VIDEO_FRAMES, frames)[0]])
        print(f"{url}: {remote.describe()}", file=sys.stderr)
        remote.run_frames(clips[:1])  # warm-up: first call loads kernels on the server
        rows = [(f"triton ensemble, {c} client(s)", drive(remote, clips, c, args.seconds)) for c in counts]
        if args.url is None:  # the same runtime the server hosts, in this process
            with load_runtime(served, args.python_backend, device=args.device, precision=args.precision) as local:
                classifier = VideoClassifier(local)
                classifier.logits(clips[:1])
                for batch in (1, 8):
                    started = time.perf_counter()
                    done = 0
                    while time.perf_counter() - started < args.seconds:
                        for i in range(0, len(clips), batch):
                            classifier.logits(clips[i:i + batch])
                            done += len(clips[i:i + batch])
                    rows.append((f"in-process {args.python_backend} {args.device}, batch {batch} (preprocess + run)",
                                 {"clips_per_s": done / (time.perf_counter() - started), "p50_ms": float("nan"),
                                  "p99_ms": float("nan")}))
        print(f"\n{url}, {remote.precision}, clips of {clips.shape[1:]} uint8; {args.seconds:.0f} s per row\n")
        print("| how | clips/s | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: |")
        for name, r in rows:
            print(f"| {name} | {r['clips_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
        remote.close()
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
