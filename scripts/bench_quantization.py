"""Which int8 graph to export: accuracy on the demo model, speed on ViViT-B, per quantization choice.

    python scripts/bench_quantization.py                  # ~6 min on 2 cores
    python scripts/bench_quantization.py --frames 32 --clips 500

Variants (``vivit_deploy.export.quantize.quantize`` with other arguments, plus ONNX Runtime's own
dynamic quantization): the export's choice (weight MatMuls, Q/K/V fused, int8 symmetric activations),
the same with the patch Conv3d, without the Q/K/V fusion, with uint8 activations, and
``quantize_dynamic`` on the weight MatMuls. For each:
- the demo model (calibrated on 64 synthetic clips of a seed no data set uses): accuracy on --clips
  held-out synthetic clips and on the 12 sample videos, top-1 agreement and worst cosine against fp32;
- ViViT-B/16x2 random weights at --frames frames, batch 2 (calibrated on random clips, for speed only):
  ONNX Runtime CPU median of --iters calls against fp32 in the same run, and how many weight MatMuls
  the session still runs as DequantizeLinear + fp32 MatMul.
Prints a markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def median_seconds(session, x, iters: int) -> float:
    """Median of ``iters`` timed calls after one untimed call."""
    from vivit_deploy.bench.measure import time_calls

    call = lambda x: session.run(None, {"pixel_values": x})  # noqa: E731
    call(x)
    return float(np.median(time_calls(call, x, iters, cuda=False, tick=lambda: None)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1000, help="held-out synthetic clips for the demo model")
    parser.add_argument("--frames", type=int, default=8, help="frames of the ViViT-B geometry for the speed figures")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vivit_deploy.bench.plan import random_checkpoint
    from vivit_deploy.accuracy.inputs import synthetic_inputs, video_inputs
    from vivit_deploy.accuracy.statistics import logit_stats
    from vivit_deploy.demo import demo_model_dir, sample_videos
    from vivit_deploy.export import export_onnx
    from vivit_deploy.export.quantize import optimized_leftovers, quantize
    from vivit_deploy.video.preprocessing import VideoPreprocessor
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.demo.motion import CALIBRATION_SEED
    from vivit_deploy.runtimes.cpu import describe_cpu

    variants = {
        "export's choice: weight MatMuls, QKV fused, int8 sym.": {},
        "+ patch Conv3d": {"ops": ("MatMul", "Conv")},
        "QKV not fused": {"fuse_qkv": False},
        "uint8 activations (not a TensorRT type)": {"precision": "uint8"},
    }
    work = Path(tempfile.mkdtemp(prefix="bench-quant-"))
    print(f"{describe_cpu()}; onnxruntime {ort.__version__}", file=sys.stderr)

    def build(fp32: Path, clips: np.ndarray, note: str) -> dict[str, Path]:
        model = onnx.load(str(fp32))
        files = {"fp32": fp32}
        for i, (name, kwargs) in enumerate(variants.items()):
            proto, _ = quantize(model, clips, note, "pixel_values", **kwargs)
            for prop in model.metadata_props:
                proto.metadata_props.add(key=prop.key, value=prop.value if prop.key != "vivit_deploy.precision" else "int8")
            files[name] = fp32.with_name(f"{fp32.stem}-v{i}.onnx")
            onnx.save(proto, str(files[name]))
        dynamic = fp32.with_name(f"{fp32.stem}-dynamic.onnx")
        quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
        files["ORT quantize_dynamic (weight MatMuls)"] = dynamic
        return files

    # accuracy: the demo model
    demo_fp32 = work / "demo.onnx"
    export_onnx(demo_model_dir(), demo_fp32)
    reference = load_runtime(demo_model_dir(), device="cpu")
    pre = VideoPreprocessor(reference.preprocessor)
    calibration = synthetic_inputs(reference.config, pre, 64, seed=CALIBRATION_SEED).pixel_values
    heldout = synthetic_inputs(reference.config, pre, args.clips)
    samples = video_inputs(sample_videos(), reference.config, pre, "samples")
    accuracy = {}
    ref_heldout = reference.run_batches(heldout.pixel_values, 32)
    for name, path in build(demo_fp32, calibration, "64 synthetic clips").items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        run = lambda x: np.concatenate([session.run(None, {"pixel_values": x[i:i + 32]})[0] for i in range(0, len(x), 32)])
        out = run(heldout.pixel_values)
        stats = logit_stats(ref_heldout, out, heldout.labels)
        sample_acc = float((run(samples.pixel_values).argmax(1) == samples.labels).mean())
        accuracy[name] = (stats.accuracy, sample_acc, stats.top1_agreement, stats.min_cosine)

    # speed: ViViT-B geometry
    checkpoint, label = random_checkpoint("vivit-b-16x2", work / "vivit-b", num_frames=args.frames)
    big_fp32 = work / "vivit-b.onnx"
    export_onnx(checkpoint, big_fp32, max_batch=8, validate=False)
    rng = np.random.default_rng(0)
    shape = (args.frames, 3, 224, 224)
    files = build(big_fp32, rng.standard_normal((8, *shape), dtype=np.float32), "8 random clips")
    x = rng.standard_normal((2, *shape), dtype=np.float32)
    speed = {}
    for name, path in files.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        leftovers = optimized_leftovers(path)["dequantize_then_fp32_matmul"] if name != "fp32" else 0
        speed[name] = (median_seconds(session, x, args.iters), leftovers)

    print(f"\n{describe_cpu()}, onnxruntime {ort.__version__}; demo model on {args.clips} held-out synthetic clips and the 12 "
          f"samples; speed: {label}, batch 2, median of {args.iters}\n")
    print("| variant | demo accuracy (held-out) | demo accuracy (samples) | top-1 agreement | min cosine | "
          "ViViT-B s | vs fp32 | DQ -> fp32 MatMul left |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    base = speed["fp32"][0]
    for name in files:
        acc, sample_acc, agree, cosine = accuracy[name]
        seconds, leftovers = speed[name]
        print(f"| {name} | {acc:.1%} | {sample_acc:.0%} | {agree:.1%} | {cosine:.5f} | {seconds:.2f} | "
              f"{base / seconds:.2f}x | {leftovers} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
