"""int8 toward its floor on ViViT-B: which levers make it faster, and what each costs in accuracy.

    python scripts/bench_int8_levers.py                       # ViViT-B/16x2 random weights, 32 frames, ~15 min on 2 cores
    python scripts/bench_int8_levers.py --frames 8 --iters 2  # quicker, fewer tokens (attention matters less)
    python scripts/bench_int8_levers.py --iters 7 --no-transformers --nncf-clips 0 \
        --only "openvino int8 smooth; openvino int8 smooth qk, rest bf16"     # a few paths, more calls each
    python scripts/bench_int8_levers.py --merge-tokens 300 --nncf-clips 0 \
        --only "openvino bf16; openvino int8 smooth qk, rest bf16; transformers fp32 sdpa"   # merged files

Every path runs in a process of its own (its memory is its own), batch 2, a warm-up call then --iters timed calls,
on held-out synthetic clips of the demo task rendered at the model's geometry (the kind the int8 files are
calibrated on, another seed). Paths: ONNX Runtime and OpenVINO on the fp32 export; OpenVINO bf16; our int8 export
without and with SmoothQuant (alpha 0.5), with the attention products Q·Kᵀ (and P·V) quantized too; NNCF's
``nncf.quantize(..., model_type=TRANSFORMER)`` on the fp32 file (where nncf is installed); transformers' fp32 sdpa as
the reference of the speed-up goal. ``--merge-tokens R`` exports every file with token merging (ToMe, r per layer) and
takes the cosine against our PyTorch model merging the same; transformers runs unmerged (the goal's reference).
Prints one table: median seconds, ratios to ONNX Runtime fp32, OpenVINO fp32 and
transformers fp32, and the worst logit cosine against our PyTorch fp32 model. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run_one(spec: dict) -> dict:
    """In a child process: load one path, warm up, time it, return the median and the logits of every clip."""
    clips = np.load(spec["clips"])["pixel_values"]
    batch = spec["batch"]
    if spec["backend"] == "transformers":
        import torch
        import transformers

        model = transformers.VivitForVideoClassification.from_pretrained(spec["file"], attn_implementation="sdpa").eval()

        def call(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).logits.numpy()
    else:
        from vivit_deploy.runtimes import load_runtime

        kwargs = {"precision": spec["precision"]} if spec.get("precision") else {}
        runtime = load_runtime(spec["file"], spec["backend"], device="cpu", **kwargs)
        call = runtime.run
    logits = np.concatenate([call(clips[i:i + batch]) for i in range(0, len(clips), batch)])  # also the warm-up
    times = []
    for _ in range(spec["iters"]):
        started = time.perf_counter()
        call(clips[:batch])
        times.append(time.perf_counter() - started)
    return {"median": float(np.median(times)), "logits": logits.tolist()}


def measure(spec: dict, work: Path) -> dict:
    out = work / "result.json"
    code = ("import json, sys; sys.path.insert(0, {root!r}); from scripts.bench_int8_levers import run_one; "
            "json.dump(run_one(json.loads({spec!r})), open({out!r}, 'w'))").format(
        root=str(Path(__file__).resolve().parents[1]), spec=json.dumps(spec), out=str(out))
    subprocess.run([sys.executable, "-c", code], check=True)
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--calibration-clips", type=int, default=8)
    parser.add_argument("--heldout-clips", type=int, default=4)
    parser.add_argument("--no-transformers", action="store_true", help="skip transformers' fp32 (its slow reference)")
    parser.add_argument("--nncf-clips", type=int, default=4,
                        help="calibration clips for NNCF (0: leave it out); its statistics take ~2.5 GB a ViViT-B clip")
    parser.add_argument("--merge-tokens", type=int, default=None,
                        help="token merging's r in every layer of every exported file (transformers runs unmerged)")
    parser.add_argument("--only", default="",
                        help="path titles as the table prints them, separated by ';' (default: every path)")
    args = parser.parse_args()
    only = [t.strip() for t in args.only.split(";") if t.strip()]

    from vivit_deploy.accuracy.inputs import CompareInputs
    from vivit_deploy.accuracy.statistics import logit_stats
    from vivit_deploy.bench.plan import random_checkpoint
    from vivit_deploy.runtimes.cpu import describe_cpu
    from vivit_deploy.export import export_onnx
    from vivit_deploy.video.preprocessing import VideoPreprocessor
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.demo.motion import CALIBRATION_SEED, HELDOUT_SEED, labelled_clips

    levers = (("int8", dict(smooth_quant=0.0)), ("int8 smooth", dict(smooth_quant=0.5)),
              ("int8 smooth qk", dict(smooth_quant=0.5, attention_products=("qk",))),
              ("int8 smooth qk pv", dict(smooth_quant=0.5, attention_products=("qk", "pv"))))
    quantized = [n for n, _ in levers] + (["nncf int8"] if args.nncf_clips else [])
    paths = [("onnxruntime fp32", "fp32", "onnxruntime", None), ("openvino fp32", "fp32", "openvino", "fp32"),
             ("openvino bf16", "fp32", "openvino", "bf16")]
    for name in quantized:
        paths += [(f"onnxruntime {name}", name, "onnxruntime", None), (f"openvino {name}", name, "openvino", "fp32"),
                  (f"openvino {name}, rest bf16", name, "openvino", "bf16")]
    if not args.no_transformers:
        paths.append(("transformers fp32 sdpa", None, "transformers", None))
    unknown = [t for t in only if t not in [p[0] for p in paths]]
    if unknown:
        parser.error(f"--only: no path {unknown}; the paths are {[p[0] for p in paths]}")
    # both fp32 rows always run: the ratios are taken against them, in this run
    paths = [p for p in paths if not only or p[0] in only or p[0] in ("onnxruntime fp32", "openvino fp32")]
    print(f"CPU: {describe_cpu()}; python {shlex.join(sys.argv)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vivit-int8-") as work:
        work = Path(work)
        checkpoint, label = random_checkpoint("vivit-b-16x2", work / "ckpt", num_frames=args.frames)
        merging = {} if args.merge_tokens is None else {"merge_tokens": args.merge_tokens}
        with load_runtime(checkpoint, "torch", device="cpu", **merging) as reference:
            pre = VideoPreprocessor(reference.preprocessor)
            for name, count, seed in (("calibration", args.calibration_clips, CALIBRATION_SEED),
                                      ("heldout", args.heldout_clips, HELDOUT_SEED)):
                pixels, labels = labelled_clips(count, seed, args.frames, pre)
                CompareInputs(pixels, labels, tuple(f"{name}{i}" for i in range(count)), name).save(work / f"{name}.npz")
            heldout = CompareInputs.load(work / "heldout.npz").pixel_values
            expected = reference.run_batches(heldout, 2)
        needed = {p[1] for p in paths}
        files = {"fp32": export_onnx(checkpoint, work / "fp32.onnx", max_batch=2, validate=False, **merging).path}
        for name, options in [(n, o) for n, o in levers if n in needed]:
            print(f"exporting {name} ...", flush=True)
            files[name] = export_onnx(checkpoint, work / f"{name.replace(' ', '-')}.onnx", precision="int8", max_batch=2,
                                      calibration=work / "calibration.npz", validate=False, **options,
                                      **merging).path
        if "nncf int8" in needed:
            try:
                print("quantizing with NNCF ...", flush=True)
                files["nncf int8"] = nncf_quantize(files["fp32"], work / "calibration.npz", work / "nncf.onnx",
                                                   args.nncf_clips)
            except ImportError:
                print("nncf is not installed: its rows are left out", flush=True)
                paths = [p for p in paths if p[1] != "nncf int8"]
        rows = {}
        for title, name, backend, precision in paths:
            print(f"timing {title} ...", flush=True)
            spec = {"file": str(checkpoint if name is None else files[name]), "backend": backend, "precision": precision,
                    "clips": str(work / "heldout.npz"), "batch": 2, "iters": args.iters}
            result = measure(spec, work)
            rows[title] = (result["median"], logit_stats(expected, np.array(result["logits"], np.float32)).min_cosine)
    ort32, ov32 = rows["onnxruntime fp32"][0], rows["openvino fp32"][0]
    hf = rows.get("transformers fp32 sdpa", (None,))[0]
    merged = "" if args.merge_tokens is None else f", our files merging r = {args.merge_tokens} per layer"
    print(f"\n{label}, batch 2, {args.heldout_clips} held-out synthetic clips, calibrated on {args.calibration_clips} "
          f"others{merged}\n")
    print("| path | median s | over ORT fp32 | over OpenVINO fp32 | over transformers fp32 | worst logit cosine |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for title, (seconds, cosine) in rows.items():
        vs_hf = f"{hf / seconds:.2f}x" if hf else "-"
        print(f"| {title} | {seconds:.2f} | {ort32 / seconds:.2f}x | {ov32 / seconds:.2f}x | {vs_hf} | {cosine:.5f} |")
    return 0


def nncf_quantize(fp32: Path, calibration: Path, out: Path, clips: int) -> Path:
    """NNCF's post-training quantization of our fp32 file (SmoothQuant and fast bias correction, its transformer
    preset), with our metadata carried over so that our runtimes load it."""
    import nncf
    import onnx

    from vivit_deploy.accuracy.inputs import CompareInputs

    clips = CompareInputs.load(calibration).pixel_values[:clips]
    model = onnx.load(str(fp32))
    props = list(model.metadata_props)
    dataset = nncf.Dataset([clips[i:i + 1] for i in range(len(clips))], lambda x: {"pixel_values": x})
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(clips))
    del quantized.metadata_props[:]
    for prop in props:
        entry = quantized.metadata_props.add()
        entry.key, entry.value = prop.key, "int8" if prop.key == "vivit_deploy.precision" else prop.value
    onnx.save(quantized, str(out))
    return out


if __name__ == "__main__":
    sys.exit(main())
