"""Throughput of the corpus job (`vivit-deploy classify`) against its own stages and against `predict`.

    python scripts/bench_classify.py                              # demo model, 600 small videos: decode-bound
    python scripts/bench_classify.py --size 360x640 --frames 120 --count 60
    python scripts/bench_classify.py --config vivit-b-16x2 --count 6 --size 240x320 --frames 64 --no-predict
    python scripts/bench_classify.py --config vivit-b-16x2 --device cuda --precision fp16 --count 200

One run measures, on the same videos and the same loaded runtime:
- decode + preprocess alone: the job's decoding processes over the corpus, nothing else;
- inference alone: the runtime over the already-decoded clips, in batches of --batch-size;
- the pipeline: the job's local executor (decoding processes feeding batched inference, rows written);
  its videos/s against the slower of the two stages above (the goal is at least 90%);
- the commands, start-up included: `vivit-deploy predict V1 ... VN` (one process, one video after
  another) against `vivit-deploy classify DIR -o out.jsonl` (the goal is at least 1.8x on 2 cores when
  decoding is the slower stage).
Every figure comes from this run on this machine; the CPU's name is printed with them. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=None, help="measure these videos instead of generating a corpus")
    parser.add_argument("--count", type=int, default=600, help="videos to generate")
    parser.add_argument("--size", default="48x64", help="HxW of the generated videos")
    parser.add_argument("--frames", type=int, default=16, help="frames per generated video (30 fps)")
    parser.add_argument("--model", default=None, help="checkpoint dir, Hub id or .onnx [default: the demo model]")
    parser.add_argument("--config", default=None, help="a preset with random weights instead, e.g. vivit-b-16x2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes [default: the job's]")
    parser.add_argument("--predict", action=argparse.BooleanOptionalAction, default=True,
                        help="also time `vivit-deploy predict` against `vivit-deploy classify` as commands")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of decode alone and pipeline; best counts")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()

    from vivit_deploy.runtimes.cpu import cpu_name
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.pipeline import default_workers
    from vivit_deploy.pipeline.inputs import expand_inputs
    from vivit_deploy.pipeline.local import DecodePool, available_cores, run_local, start_pool
    from vivit_deploy.pipeline.model import describe_model
    from vivit_deploy.pipeline.results import ResultStore
    from vivit_deploy.pipeline.stages import ClipLoader, ClipSpec, ResultSettings
    from vivit_deploy.runtimes import load_runtime

    work = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    try:
        if args.videos is None:
            from vivit_deploy.demo.motion import write_corpus

            height, width = (int(v) for v in args.size.split("x"))
            print(f"generating {args.count} videos of {args.frames} frames at {height}x{width} ...", file=sys.stderr)
            videos_dir = work / "videos"
            write_corpus(videos_dir, args.count, height=height, width=width, frames=args.frames)
        else:
            videos_dir = args.videos
        source = args.model or str(demo_model_dir())
        label = source
        if args.config:
            from vivit_deploy.bench.plan import random_checkpoint

            source, label = random_checkpoint(args.config, work / "model", progress=lambda m: print(m, file=sys.stderr))
            source = str(source)
        items = expand_inputs([videos_dir])
        info = describe_model(source)
        runtime = load_runtime(source, device=args.device, precision=args.precision)
        workers = args.workers or default_workers(runtime.device)
        spec = ClipSpec(info.config.num_frames)
        print(f"{len(items)} videos, {label}, {runtime.backend} on {runtime.device} ({runtime.precision}), "
              f"{workers} decoding processes, batch {args.batch_size}", file=sys.stderr)

        threads = max(1, available_cores() // workers)
        settings = ResultSettings(source, info.sha256, runtime.backend, runtime.precision, "uniform", 1, 4, 5)
        decode_rates, pipeline_rates, busy, inference_s, times = [], [], [], None, None
        for round_ in range(args.rounds):  # interleaved rounds, best of each: a noisy neighbour hurts all alike
            # decode + preprocess alone. Rates run from the first result to the last, so the processes'
            # start-up (imports, kernels) is left out here and in the pipeline alike; the commands below
            # include it.
            clips, stamps = [], []
            loader = ClipLoader(spec, info.preprocessor, decode_threads=threads)
            with DecodePool(loader, workers, threads_per_worker=threads) as pool:
                for decoded in pool.map_unordered(items):
                    stamps.append(time.perf_counter())
                    if decoded.pixel_values is not None and round_ == 0:
                        clips.append(decoded.pixel_values)
            decode_rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))

            if round_ == 0:  # inference alone, warm (one untimed batch first), on the decoded clips
                import numpy as np

                stacked = np.concatenate(clips)
                runtime.run_batches(stacked[: args.batch_size], args.batch_size)
                started = time.perf_counter()
                runtime.run_batches(stacked, args.batch_size)
                inference_s = time.perf_counter() - started
                del stacked, clips

            # the pipeline: the same runtime, fresh decoding processes, rows written as parts
            store = ResultStore(work / "pipeline.jsonl", settings, resume=False).open()
            batches = []  # (time, videos) as each batch is written
            pool = start_pool(ClipLoader(spec, info.preprocessor), workers)
            started = time.perf_counter()
            times = run_local(items, pool, runtime, store, settings, batch_size=args.batch_size,
                              progress=lambda videos, _: batches.append((time.perf_counter(), videos)))
            busy.append(times.inference / (time.perf_counter() - started))
            pipeline_rates.append(sum(v for _, v in batches[1:]) / (batches[-1][0] - batches[0][0]))
            store.finalize({})
        runtime.close()

        n = len(items)
        rates = {"decode + preprocess alone": max(decode_rates), "inference alone": n / inference_s,
                 "pipeline (run_local)": max(pipeline_rates)}
        slower = min(rates["decode + preprocess alone"], rates["inference alone"])
        result = {
            "cpu": cpu_name(), "cores": available_cores(), "videos": n, "model": label, "backend": runtime.backend,
            "device": runtime.device, "precision": runtime.precision, "workers": workers, "batch_size": args.batch_size,
            "videos_per_s": rates, "pipeline_over_slower_stage": rates["pipeline (run_local)"] / slower,
            "rounds": {"decode": decode_rates, "pipeline": pipeline_rates, "inference_busy_share": busy},
            "pipeline_stage_seconds": {"decode": times.decode, "preprocess": times.preprocess,
                                       "inference": times.inference, "write": times.write},
        }
        if args.predict:
            exe = [sys.executable, "-m", "vivit_deploy.cli"]
            model = [] if args.model is None and not args.config else ["--model", source]
            common = model + ["--device", args.device] + ([] if args.precision is None else ["--precision", args.precision])
            paths = [item.path for item in items]
            started = time.perf_counter()
            subprocess.run(exe + ["predict", *paths, "--json", *common], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            predict_s = time.perf_counter() - started
            started = time.perf_counter()
            subprocess.run(exe + ["classify", str(videos_dir), "-o", str(work / "cli.jsonl"), "--batch-size",
                                  str(args.batch_size), *common] + ([] if args.workers is None else ["--workers", str(workers)]),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            classify_s = time.perf_counter() - started
            result["commands_s"] = {"predict": predict_s, "classify": classify_s}
            result["classify_over_predict"] = predict_s / classify_s

        print(f"\n{n} videos ({args.size if args.videos is None else videos_dir}), {label}, {runtime.backend} "
              f"{runtime.precision} on {runtime.device}; {cpu_name()}, {available_cores()} cores; {workers} decoding "
              f"processes, batch {args.batch_size}\n")
        print("| stage | videos/s |\n| --- | ---: |")
        for name, rate in rates.items():
            print(f"| {name} | {rate:.3g} |")
        print(f"\npipeline / slower stage: **{result['pipeline_over_slower_stage']:.2f}** (best of {args.rounds} "
              f"interleaved rounds; decode {', '.join(f'{r:.3g}' for r in decode_rates)}, pipeline "
              f"{', '.join(f'{r:.3g}' for r in pipeline_rates)} videos/s)")
        print(f"inference busy during the pipeline (start-up included): {max(busy):.0%} of its wall time; bound when "
              f"both stages share the CPU, 1/(1/decode + 1/inference): {1 / (1 / rates['decode + preprocess alone'] + 1 / rates['inference alone']):.3g} videos/s")
        if args.predict:
            print(f"\n| command (start-up included) | s |\n| --- | ---: |\n| `vivit-deploy predict` ({n} videos, one call) "
                  f"| {predict_s:.1f} |\n| `vivit-deploy classify` | {classify_s:.1f} |\n\n"
                  f"classify over predict: **{result['classify_over_predict']:.2f}x**")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
