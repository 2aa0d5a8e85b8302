"""`vivit-deploy bench`: speed and memory of every backend in one run, with the ratios between them.

    from vivit_deploy.bench import BenchSettings, run_bench

    report = run_bench(BenchSettings(config="vivit-b-16x2", device="cuda", precision="fp16"))
    print(report.to_markdown())

plan.py decides what runs and prepares the files (building, kept apart from measuring); measure.py
times one backend in a child process of its own; ceiling.py measures the machine's matrix-product
rate in the same run; stages.py times decode / preprocess / inference on video files; report.py
turns it all into markdown, JSON and a plot. Nothing here asserts a speed: it reports.
"""

from vivit_deploy.bench.plan import BENCH_BACKENDS, DEFAULT_BACKENDS, BenchSettings, parse_batch_sizes, parse_list
from vivit_deploy.bench.report import BenchReport
from vivit_deploy.bench.run import run_bench

__all__ = ["BENCH_BACKENDS", "DEFAULT_BACKENDS", "BenchReport", "BenchSettings", "parse_batch_sizes", "parse_list", "run_bench"]
