"""The paper's three models at ViViT-B's width on this CPU: latency per backend and precision, and FLOPs.

    python scripts/bench_variants.py                        # Models 1, 2, 3 at 32 frames of 224x224, batch 1
    python scripts/bench_variants.py --frames 16 --iters 5

Model 1 is ``--config vivit-b-16x2`` (joint space-time attention over 3137 tokens), Model 2 ``vivit-b-fe`` (12
spatial layers over each of the 16 time steps, then 4 temporal layers), Model 3 ``vivit-b-fsa`` (12 blocks, each
attending over space, then over time): random weights, the same width (768), heads (12) and MLP (3072). Each runs
through ``vivit-deploy bench`` (ONNX Runtime and OpenVINO; fp32, bf16 where the backend runs it, int8 calibrated on
random clips: its speed, not its accuracy), one after another in this run, so the ratios to Model 1 compare numbers
taken on the same machine minutes apart. Prints the CPU, the commands and a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = (("Model 1 (joint)", "vivit-b-16x2"), ("Model 2 (factorised encoder)", "vivit-b-fe"),
          ("Model 3 (factorised self-attention)", "vivit-b-fsa"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--precision", default="fp32,bf16,int8")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()

    from vivit_deploy.runtimes.cpu import describe_cpu

    print(f"CPU: {describe_cpu()}; python {shlex.join(sys.argv)}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for title, preset in MODELS:
            out = Path(work) / f"{preset}.json"
            command = ["vivit-deploy", "bench", "--config", preset, "--frames", str(args.frames), "--image-size",
                       str(args.image_size), "--device", "cpu", "--backends", args.backends, "--precision",
                       args.precision, "--batch-sizes", "1", "--warmup", str(args.warmup), "--iters", str(args.iters),
                       "--no-peers", "--no-stages", "--no-ceiling", "--json", str(out)]
            print(f"\n{title}: {shlex.join(command)}", flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            results[title] = json.loads(out.read_text())
    columns = sorted({name for data in results.values() for name in data["results"] if not name.startswith("torch")})
    print(f"\nbatch 1, {args.frames} frames of {args.image_size}x{args.image_size}, p50 latency in ms (and against "
          "Model 1's on the same backend and precision)\n")
    print("| model | GFLOP per clip | " + " | ".join(columns) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in columns) + " |")
    first = next(iter(results.values()))
    for title, data in results.items():
        cells = []
        for name in columns:
            row = data["results"].get(name)
            base = first["results"].get(name)
            if row is None:
                cells.append("-")
                continue
            ms = row["rows"][0]["p50_ms"]
            ratio = base["rows"][0]["p50_ms"] / ms if base is not None else float("nan")
            cells.append(f"{ms:.0f} ({ratio:.2f}x)")
        print(f"| {title} | {data['model']['gflop_per_clip']:.0f} | " + " | ".join(cells) + " |")
    for title, data in results.items():
        for name, why in (data.get("skipped") or {}).items():
            print(f"- {title}: {name} not measured: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
