"""ONNX Runtime CPU against this machine's fp32 ceiling and against PyTorch, on one set of random weights.

    python scripts/bench_onnx_cpu.py                    # ViViT-B/16x2, 32x224x224, batch 2 (~3 min on 2 cores)
    python scripts/bench_onnx_cpu.py --frames 8 --iters 5

The ceiling is the best of three 4096x4096 fp32 matrix products measured in the same run (torch, numpy,
ONNX Runtime MatMul): which library is fastest depends on the CPU (MKL, torch's BLAS, is slow on AMD).
Backends run in interleaved rounds and the best round counts, so a noisy neighbour hurts all alike.
Prints seconds, GFLOP/s, % of each ceiling and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32, help="num_frames of the ViViT-B/16x2 geometry")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed rounds after one warm-up round")
    args = parser.parse_args()

    import torch

    from vivit_deploy.bench.ceiling import cpu_ceilings
    from vivit_deploy.model.config import preset
    from vivit_deploy.export import export_onnx
    from vivit_deploy.model.modeling import VivitForVideoClassification
    from vivit_deploy.runtimes import load_runtime

    config = preset("vivit-b-16x2", num_frames=args.frames)
    gflop = args.batch * config.flops_per_clip() / 1e9
    print(f"ViViT-B/16x2 geometry, {args.frames}x224x224, batch {args.batch}: {gflop:.0f} GFLOP per forward; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    ceilings = cpu_ceilings(n=4096, reps=5)
    print("fp32 ceilings (4096^2 matmul): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceilings.items()))

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "vivit-b"
        VivitForVideoClassification(config).save_pretrained(checkpoint)
        started = time.perf_counter()
        onnx_path = Path(tmp) / "vivit-b.onnx"
        export_onnx(checkpoint, onnx_path, validate=False)
        print(f"exported in {time.perf_counter() - started:.0f} s ({onnx_path.stat().st_size / 1e6:.0f} MB)")

        x = np.random.default_rng(0).standard_normal((args.batch, *config.input_shape), dtype=np.float32)
        runners = {}
        ort_runtime = load_runtime(onnx_path, device="cpu")
        runners["onnxruntime cpu"] = ort_runtime.run
        ours = load_runtime(checkpoint, "torch", device="cpu", attn_implementation="sdpa")
        runners["vivit_deploy torch sdpa"] = ours.run
        try:
            import transformers

            theirs = transformers.VivitForVideoClassification.from_pretrained(checkpoint, attn_implementation="sdpa").eval()
            tx = torch.from_numpy(x)

            def run_transformers(_x):
                with torch.inference_mode():
                    return theirs(pixel_values=tx).logits.numpy()

            runners[f"transformers {transformers.__version__} sdpa"] = run_transformers
        except ImportError:
            print("transformers is not installed: comparing with our own torch model only")

        outputs = {name: fn(x) for name, fn in runners.items()}  # warm-up round, also the parity check
        reference = outputs["vivit_deploy torch sdpa"]
        times: dict[str, list[float]] = {name: [] for name in runners}
        for round_ in range(args.iters):
            for name, fn in runners.items():
                times[name].append(_time(lambda: fn(x)))
            print(f"  round {round_ + 1}/{args.iters}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
                  file=sys.stderr)

    best_ceiling = max(ceilings.values())
    print(f"\n{'backend':<32} {'best s':>7} {'median s':>9} {'GFLOP/s':>8} {'% best ceiling':>15} {'% torch ceiling':>16} {'max |diff|':>11}")
    for name, t in times.items():
        best = min(t)
        rate = gflop / best
        diff = np.abs(outputs[name] - reference).max()
        print(f"{name:<32} {best:7.2f} {np.median(t):9.2f} {rate:8.0f} {rate / best_ceiling:15.0%} "
              f"{rate / ceilings['torch']:16.0%} {diff:11.1e}")
    ort_best = min(times["onnxruntime cpu"])
    print()
    for name, t in times.items():
        if name != "onnxruntime cpu":
            print(f"onnxruntime cpu speedup over {name}: {min(t) / ort_best:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
