"""Conv3d or reshape + MatMul for the tubelet embedding: which exported graph runs faster on the CPU backends.

    python scripts/bench_tubelet.py                    # ViViT-B/16x2 geometry, 32 frames, batch 2, ~5 min on 2 cores
    python scripts/bench_tubelet.py --frames 8 --rounds 5

Exports the same random ViViT-B weights twice (``export_onnx(tubelet="conv")`` and ``tubelet="matmul"``),
checks both give the same logits, then times ONNX Runtime fp32 and OpenVINO fp32 on each, interleaved
(conv, matmul, conv, matmul, ...) so that the machine's drift hits both alike, and also the
embedding alone (a graph cut at the tubelet projection's output). Prints medians and the ratio; asserts
nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np


def embedding_only(path: Path, out: Path) -> Path:
    """The graph up to the tubelet tokens (before the CLS token joins them)."""
    import onnx
    from onnx import utils

    from vivit_deploy.export.graph_scopes import module_output

    model = onnx.load(str(path))
    tokens = module_output(model.graph, "vivit.embeddings.patch_embeddings")
    onnx.save(utils.Extractor(model).extract_model(["pixel_values"], [tokens]), str(out))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per graph and backend, interleaved")
    args = parser.parse_args()

    import onnxruntime as ort
    import openvino as ov

    from vivit_deploy.bench.measure import time_calls
    from vivit_deploy.bench.plan import random_checkpoint
    from vivit_deploy.runtimes.cpu import describe_cpu
    from vivit_deploy.export import export_onnx

    print(f"CPU: {describe_cpu()}; python {shlex.join(sys.argv)}\n")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        checkpoint, label = random_checkpoint("vivit-b-16x2", work / "ckpt", num_frames=args.frames)
        files = {}
        for tubelet in ("conv", "matmul"):
            files[tubelet] = work / f"{tubelet}.onnx"
            export_onnx(checkpoint, files[tubelet], tubelet=tubelet, max_batch=args.batch, validate=False)
            files[f"{tubelet} embedding"] = embedding_only(files[tubelet], work / f"{tubelet}-embedding.onnx")
        x = np.random.default_rng(0).standard_normal((args.batch, args.frames, 3, 224, 224), dtype=np.float32)

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        core = ov.Core()
        runners = {}
        for name, path in files.items():
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            runners[(name, "onnxruntime")] = lambda x, s=session: s.run(None, {"pixel_values": x})[0]
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            runners[(name, "openvino")] = lambda x, c=compiled: c(x)[0]
        same = np.abs(runners[("conv", "onnxruntime")](x) - runners[("matmul", "onnxruntime")](x)).max()
        print(f"{label}, batch {args.batch}: max |logits(conv) - logits(matmul)| = {same:.2e} (ONNX Runtime)\n")
        times: dict = {key: [] for key in runners}
        for call in runners.values():
            call(x)  # warm-up
        for _ in range(args.rounds):
            for key, call in runners.items():
                times[key] += time_calls(call, x, 1, cuda=False, tick=lambda: None)
        print("| graph | backend | median s | speed of matmul over conv |")
        print("| --- | --- | ---: | ---: |")
        for key in runners:
            median = float(np.median(times[key]))
            name, backend = key
            other = key if name.startswith("conv") else (name.replace("matmul", "conv"), backend)
            ratio = "" if name.startswith("conv") else f"{float(np.median(times[other])) / median:.3f}x"
            print(f"| {name} | {backend} | {median:.4f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
