"""Videos per second through Triton: clients sending the encoded file to the video model (decoded on the server)
against the same clients decoding here and sending uint8 frames to the frames ensemble.

    python scripts/bench_triton_video.py                                    # demo model, ONNX Runtime, 1080p H.264
    python scripts/bench_triton_video.py --config vivit-b-16x2 --python-backend openvino --precision bf16 \\
        --clients 1,4,16 --videos-per-client 1

It writes 1080p H.264 files with ffmpeg (`--seconds` long, ffmpeg's default x264 settings, as a phone or camera
export would be), a `--platform python --video` repository for the model (`vivit-deploy triton-repo`; ViViT-B with
random weights for --config), starts the tritonserver of VIVIT_TRITON_HOME (scripts/setup_triton_server.sh) on
127.0.0.1, and for each client count has every client classify `--videos-per-client` files one after another:
"file" sends the file (`runtime.run_video`), "frames" reads it here with the same reader and sends the decoded
uint8 frames (`VideoClassifier` over the ensemble). Client and server share this machine's cores, so both rows count
the whole work (decoding, preprocessing, the model). Prints videos/s, latency percentiles and bytes sent per video
(each way). Timings are not pass/fail: compare ratios taken in one run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_videos(directory: Path, count: int, seconds: float) -> list[Path]:
    """1080p H.264 files of moving test patterns (ffmpeg's lavfi testsrc2, each with another start)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        sys.exit("ffmpeg is needed to write the 1080p test files (apt-get install ffmpeg)")
    paths = []
    for i in range(count):
        path = directory / f"clip{i}-1080p.mp4"
        subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size=1920x1080:rate=30:duration={seconds}", "-vf", f"hue=h={37 * i}",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True, timeout=600)
        paths.append(path)
    return paths


def drive(send, videos: list[Path], clients: int, per_client: int) -> dict[str, float]:
    """Every client sends ``per_client`` videos one after another; videos/s over the wall time, latency per video."""
    latencies: list[float] = []
    sent: list[int] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client(k: int) -> None:
        mine, sizes = [], []
        for j in range(per_client):
            started = time.perf_counter()
            try:
                sizes.append(send(videos[(k + j * clients) % len(videos)]))
            except BaseException as exc:  # noqa: BLE001  reported after the run
                failures.append(exc)
                return
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
            sent.extend(sizes)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if failures:
        raise failures[0]
    s = sorted(latencies)

    def pct(q: float) -> float:
        return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]

    return {"videos_per_s": len(s) / wall, "p50_s": statistics.median(s), "p90_s": pct(0.9), "p99_s": pct(0.99),
            "bytes": float(np.mean(sent)), "videos": len(s)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint or .onnx to serve [default: the demo model]")
    parser.add_argument("--config", default=None, help="a preset (e.g. vivit-b-16x2): that model with random weights")
    parser.add_argument("--python-backend", default="onnxruntime", choices=["onnxruntime", "openvino"])
    parser.add_argument("--precision", default=None, help="the runtime's precision (OpenVINO: bf16)")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrent client counts")
    parser.add_argument("--videos-per-client", type=int, default=2)
    parser.add_argument("--files", type=int, default=4, help="distinct 1080p files the clients cycle through")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each 1080p file")
    parser.add_argument("--video-instances", type=int, default=2)
    parser.add_argument("--modes", default="file,frames", help="file, frames or both")
    args = parser.parse_args()

    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.export import export_onnx
    from vivit_deploy.predict import VideoClassifier
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.serving.local_server import LocalTritonServer
    from vivit_deploy.serving.repository import write_repository

    counts = [int(c) for c in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-triton-video-"))
    try:
        source = args.model or str(demo_model_dir())
        if args.config:
            from vivit_deploy.model.checkpoint import new_model
            from vivit_deploy.model.config import preset

            new_model(preset(args.config)).save_pretrained(work / "ckpt")
            source = str(work / "ckpt")
        served = source if source.endswith(".onnx") else str(work / "model.onnx")
        if served != source:
            print(f"exporting {source} ...", file=sys.stderr)
            export_onnx(source, served)
        print(f"writing {args.files} 1080p H.264 files of {args.seconds:g} s ...", file=sys.stderr)
        videos = make_videos(work, args.files, args.seconds)
        write_repository(served, work / "repo", platform="python", python_backend=args.python_backend,
                         python_precision=args.precision, kind="cpu", max_queue_delay_us=2000, video=True,
                         video_instances=args.video_instances, max_video_bytes=1 << 30)
        # decoded 1080p frames are 6.2 MB each: a frames request of 32 is 199 MB, past the 64 MiB that Triton releases
        # since mid-2025 take by default (--http-max-input-size); the bundled 2.51 has no such limit
        with LocalTritonServer(None, work / "repo") as server, \
                load_runtime(f"triton://{server.http}/vivit") as remote:
            files = VideoClassifier(remote)
            frames = VideoClassifier(load_runtime(f"triton://{server.http}/vivit", files=False))
            assert files.sends_files and frames._sends_frames

            def send_file(path: Path) -> int:
                remote.run_video(path)
                return path.stat().st_size

            def send_frames(path: Path) -> int:
                clips = frames.read(path).array  # decoded here, as a client of the ensemble must
                frames.logits(clips)
                return clips.nbytes

            modes = {"file": ("the file to vivit_video", send_file),
                     "frames": ("decoded here, uint8 frames to vivit_frames", send_frames)}
            wanted = [m.strip() for m in args.modes.split(",")]
            for mode in wanted:  # warm-up: the first call loads kernels and the reader on the server
                modes[mode][1](videos[0])
            rows = []
            for clients in counts:
                for mode in wanted:
                    print(f"{mode}, {clients} client(s) ...", file=sys.stderr)
                    rows.append((modes[mode][0], clients, drive(modes[mode][1], videos, clients, args.videos_per_client)))
            config = remote.config
            print(f"\n{remote.url} ({args.python_backend} {remote.precision}, {config.num_frames} frames of "
                  f"{config.image_height}x{config.image_width}); {args.files} files 1920x1080 H.264, {args.seconds:g} s "
                  f"at 30 fps, {np.mean([v.stat().st_size for v in videos]) / 1e6:.2f} MB each; "
                  f"{args.videos_per_client} videos per client\n")
            print("| clients | how | videos/s | p50 s | p90 s | p99 s | bytes sent per video |")
            print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
            for how, clients, r in rows:
                print(f"| {clients} | {how} | {r['videos_per_s']:.2f} | {r['p50_s']:.2f} | {r['p90_s']:.2f} | "
                      f"{r['p99_s']:.2f} | {r['bytes'] / 1e6:.2f} MB |")
            frames.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
