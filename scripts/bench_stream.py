"""Live streams: latency and memory over a long stream, and how many 25 fps streams this machine keeps up with.

    python scripts/bench_stream.py latency --minutes 10                 # the demo model, one 640x360 stream
    python scripts/bench_stream.py capacity --streams 1,2,4,8,16        # streams at once, 30 s each
    python scripts/bench_stream.py capacity --config vivit-b-16x2 --backend openvino --precision bf16 \\
        --streams 1,2 --seconds 60 --hop 2                              # ViViT-B (random weights), OpenVINO bf16
    python scripts/bench_stream.py capacity --config vivit-b-16x2 --export-precision int8 --backend openvino \\
        --precision bf16 --streams 1,2 --seconds 60 --hop 2             # its int8 file (Q @ K^T too), the rest bf16
    python scripts/bench_stream.py reuse --config vivit-b-fe --positions separate --frames 16 --hop 0.5
                                   # Model 2: windows per second encoding each time step once, against every window whole

Sources are H.264 files of the demo task (640x360, 25 fps, textured, so decoding is real work) read at
their own pace (``--realtime``): frames arrive as a camera delivers them, and a window inference has not
taken when the next is ready is skipped, as on a live stream. ``latency`` runs one stream for --minutes
and prints the latency distribution and the process's resident memory over time (it must stay flat).
``capacity`` runs N streams at once for --seconds each and prints, per N, windows classified and
skipped and the latency percentiles: a machine keeps up with N streams when none is skipped (Model 2 with
separate positions encodes each time step once, as ``stream`` does by default; ``--no-reuse`` turns it off).
``reuse`` reads one file as fast as it decodes, twice on the same runtime, with and without reusing the time
steps, and prints the windows per second of each and their ratio. Prints the CPU and the command; asserts nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_source(path: Path, seconds: float, fps: int = 25, height: int = 360, width: int = 640, seed: int = 0) -> Path:
    """A demo-task video: clips of the moving square, scaled up to (height, width), with noise for the encoder."""
    import av

    from vivit_deploy.demo.motion import LABELS, render_clip

    rng = np.random.default_rng(seed)
    frames = int(seconds * fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "crf": "26"}
        written = 0
        while written < frames:
            clip = render_clip(written // 50 % len(LABELS), rng)  # a new direction every 2 s of video
            clip = np.repeat(clip, 2, axis=0)  # 16 frames of motion over 32 frames (1.3 s at 25 fps)
            clip = np.repeat(np.repeat(clip, -(-height // clip.shape[1]), axis=1), -(-width // clip.shape[2]), axis=2)
            for frame in clip[:, :height, :width]:
                if written >= frames:
                    break
                noisy = np.clip(frame.astype(np.int16) + rng.integers(0, 12, frame.shape), 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")):
                    container.mux(packet)
                written += 1
        for packet in stream.encode():
            container.mux(packet)
    return path


def load(args, work: Path):
    """The runtime under test: --model (default: the demo model), or --config's random weights exported here."""
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.runtimes import load_runtime

    kwargs = {"precision": args.precision} if args.precision else {}
    model = args.model or str(demo_model_dir())
    if args.config:
        model = str(export_random(args, work))
    return load_runtime(model, args.backend, device="cpu", **kwargs)


def export_random(args, work: Path) -> Path:
    """--config's geometry with random weights, exported to ONNX (int8: calibrated on 8 synthetic clips of the demo
    task at that geometry, SmoothQuant and, with --attention-products qk, Q @ K^T in int8)."""
    from vivit_deploy.accuracy.inputs import CompareInputs
    from vivit_deploy.bench.plan import random_checkpoint
    from vivit_deploy.demo.motion import CALIBRATION_SEED, labelled_clips
    from vivit_deploy.export import export_onnx
    from vivit_deploy.model.checkpoint import load_config
    from vivit_deploy.video.preprocessing import VideoPreprocessor, preprocessor_config_in

    overrides = {"positions": args.positions} if args.positions else {}
    checkpoint, label = random_checkpoint(args.config, work / "checkpoint", num_frames=args.frames, **overrides)
    print(f"exporting {label} in {args.export_precision} ...", flush=True)
    options = {}
    if args.export_precision == "int8":
        preprocessor = VideoPreprocessor(preprocessor_config_in(checkpoint))
        pixels, labels = labelled_clips(8, CALIBRATION_SEED, load_config(checkpoint).num_frames, preprocessor)
        CompareInputs(pixels, labels, tuple(f"calibration{i}" for i in range(8)), "calibration").save(work / "calibration.npz")
        options = dict(calibration=work / "calibration.npz",
                       attention_products=() if args.attention_products == "none" else (args.attention_products,))
    return export_onnx(checkpoint, work / "model.onnx", precision=args.export_precision, validate=False,
                       max_batch=max(int(n) for n in args.streams.split(",")), **options).path


def latency(args) -> None:
    from vivit_deploy.streaming import StreamClassifier

    with tempfile.TemporaryDirectory() as work:
        source = write_source(Path(work) / "stream.mp4", args.minutes * 60 + 5)
        with load(args, Path(work)) as runtime:
            memory: list[tuple[float, float]] = []
            stop = threading.Event()

            def sample():
                started = time.monotonic()
                while not stop.wait(1.0):
                    memory.append((time.monotonic() - started, rss_mb()))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            classifier = StreamClassifier(runtime, [str(source)], window=args.window, hop=args.hop, realtime=True,
                                          duration=args.minutes * 60)
            latencies = [r["latency_ms"] for r in classifier if "event" not in r]
            stop.set()
            sampler.join()
            summary = classifier.summary()[str(source)]
            describe = f"{runtime.backend} {runtime.precision}, {runtime.source}"
    lat = np.array(latencies)
    print(f"one 640x360 25 fps stream for {args.minutes} min, {args.window:g} s windows every {args.hop:g} s, {describe}\n")
    print("| windows | skipped | p50 ms | p90 ms | p99 ms | max ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {summary['windows']} | {summary['skipped']} | {np.percentile(lat, 50):.1f} | {np.percentile(lat, 90):.1f} | "
          f"{np.percentile(lat, 99):.1f} | {lat.max():.1f} |\n")
    print("| minute | resident memory MB (min .. max in that minute) |")
    print("| ---: | --- |")
    for minute in range(args.minutes):
        inside = [m for t, m in memory if minute * 60 <= t < (minute + 1) * 60]
        if inside:
            print(f"| {minute + 1} | {min(inside):.0f} .. {max(inside):.0f} |")


def capacity(args) -> None:
    import shutil

    from vivit_deploy.streaming import StreamClassifier

    counts = [int(n) for n in args.streams.split(",")]
    with tempfile.TemporaryDirectory() as work:
        source = write_source(Path(work) / "stream.mp4", args.seconds + 5)
        with load(args, Path(work)) as runtime:
            describe = f"{runtime.backend} {runtime.precision}, {runtime.source}"
            rows = []
            for n in counts:
                sources = []
                for i in range(n):
                    copy = Path(work) / f"s{i}.mp4"
                    shutil.copy(source, copy)
                    sources.append(str(copy))
                classifier = StreamClassifier(runtime, sources, window=args.window, hop=args.hop, realtime=True,
                                              duration=args.seconds, reuse=args.reuse)
                records = [r for r in classifier if "event" not in r]
                summary = classifier.summary()
                windows = sum(s["windows"] for s in summary.values())
                skipped = sum(s["skipped"] for s in summary.values())
                lat = np.array([r["latency_ms"] for r in records]) if records else np.array([np.nan])
                rows.append((n, windows, skipped, np.percentile(lat, 50), np.percentile(lat, 99)))
                print(f"{n} streams: {windows} windows, {skipped} skipped", flush=True)
    print(f"\n640x360 25 fps streams for {args.seconds:g} s each, {args.window:g} s windows every {args.hop:g} s, {describe}\n")
    print("| streams | windows classified | skipped | p50 latency ms | p99 latency ms | keeps up |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    for n, windows, skipped, p50, p99 in rows:
        print(f"| {n} | {windows} | {skipped} | {p50:.0f} | {p99:.0f} | {'yes' if skipped == 0 else 'no'} |")


def reuse(args) -> None:
    from vivit_deploy.streaming import StreamClassifier

    with tempfile.TemporaryDirectory() as work:
        source = write_source(Path(work) / "stream.mp4", args.seconds)
        with load(args, Path(work)) as runtime:
            describe = f"{runtime.backend} {runtime.precision}, {runtime.source}"
            rows = []
            for reusing in (False, True):
                classifier = StreamClassifier(runtime, [str(source)], window=args.window, hop=args.hop, reuse=reusing)
                started = time.perf_counter()
                records = [r for r in classifier if "window" in r]
                seconds = time.perf_counter() - started
                summary = classifier.summary()[str(source)]
                rows.append((reusing, len(records), seconds, summary.get("encoded_steps", "-"),
                             summary.get("reused_steps", "-")))
                print(f"reuse {reusing}: {len(records)} windows in {seconds:.1f} s", flush=True)
    print(f"\none 640x360 25 fps file of {args.seconds:g} s read as fast as it decodes, {args.window:g} s windows every "
          f"{args.hop:g} s, {describe}\n")
    print("| time steps | windows | seconds | windows per second | steps encoded | steps reused |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for reusing, windows, seconds, encoded, reused in rows:
        print(f"| {'each encoded once' if reusing else 'every window whole'} | {windows} | {seconds:.1f} | "
              f"{windows / seconds:.2f} | {encoded} | {reused} |")
    (_, w0, s0, _, _), (_, w1, s1, _, _) = rows
    print(f"\nwindows per second, reusing / recomputing: {(w1 / s1) / (w0 / s0):.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["latency", "capacity", "reuse"])
    parser.add_argument("--model", default=None, help="default: the demo model (PyTorch)")
    parser.add_argument("--config", default=None, help="instead of --model: random weights of this geometry "
                                                        "(e.g. vivit-b-16x2), exported to ONNX first")
    parser.add_argument("--export-precision", choices=["fp32", "int8"], default="fp32", help="with --config")
    parser.add_argument("--attention-products", choices=["none", "qk"], default="qk", help="with --config, int8")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--hop", type=float, default=1.0)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--streams", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=None, help="with --config: frames per clip")
    parser.add_argument("--positions", choices=["per_step", "separate"], default=None,
                        help="with --config vivit-b-fe: Model 2's positions (separate: its steps can be reused)")
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                        help="capacity: encode each time step of Model 2 once (the stream command's default)")
    args = parser.parse_args()

    from vivit_deploy.runtimes.cpu import describe_cpu

    print(f"CPU: {describe_cpu()}; python {shlex.join(sys.argv)}", flush=True)
    {"latency": latency, "capacity": capacity, "reuse": reuse}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
