"""The arithmetic ceiling of this machine, measured in the same run as the model: a large matrix product.

On the CPU, three libraries do the product (torch, numpy, ONNX Runtime's MatMul) because which one
is fastest depends on the processor (torch's MKL is slow on AMD CPUs, ONNX Runtime's MLAS is not);
the best of them is the ceiling. On a GPU it is torch's product in the run's precision (fp32 with TF32
off, since the fp32 backends compute in true fp32). A model's achieved rate over the ceiling says how
much of the machine it uses; ViViT's attention (inner dimension 64, a softmax over 3137 tokens) keeps
it well under 100%.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def _best_seconds(fn: Callable[[], object], reps: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - started)
    return best


def cpu_ceilings(n: int = 4096, reps: int = 3, precision: str = "fp32") -> dict[str, float]:
    """GFLOP/s of an n x n fp32 matrix product in torch, numpy and (when installed) ONNX Runtime;
    for fp16 / bf16, torch's product in that type (the others have no fast half-precision product)."""
    import torch

    if precision != "fp32":
        from vivit_deploy.runtimes.torch_runtime import torch_dtype

        generator = torch.Generator().manual_seed(0)
        ta, tb = (torch.randn((n, n), generator=generator).to(torch_dtype(precision)) for _ in range(2))
        return {f"torch {precision}": 2 * n**3 / _best_seconds(lambda: ta @ tb, reps) / 1e9}
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fns: dict[str, Callable[[], object]] = {"torch": lambda: ta @ tb, "numpy": lambda: a @ b}
    from vivit_deploy.runtimes import BACKENDS

    if BACKENDS["onnxruntime"].unavailable("cpu") is None:  # MLAS, often the fastest fp32 product on AMD
        from vivit_deploy.runtimes.ort_runtime import matmul_session

        session = matmul_session(n)
        fns["onnxruntime"] = lambda: session.run(None, {"A": a, "B": b})
    return {name: 2 * n**3 / _best_seconds(fn, reps) / 1e9 for name, fn in fns.items()}


def cuda_ceiling(precision: str, device: str = "cuda", n: int = 8192, reps: int = 10) -> dict[str, float]:
    """GFLOP/s of an n x n matrix product through torch on ``device`` in ``precision`` (fp32 without TF32)."""
    import torch

    from vivit_deploy.runtimes.torch_runtime import torch_dtype

    dtype = torch_dtype(precision)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), device=device, dtype=dtype, generator=generator)
    b = torch.randn((n, n), device=device, dtype=dtype, generator=generator)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        seconds = _best_seconds(lambda: a @ b, reps, sync=torch.cuda.synchronize)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return {f"torch {precision}": 2 * n**3 / seconds / 1e9}


def measure_ceiling(device: str, precision: str) -> dict[str, float]:
    """GFLOP/s per library for this run's device and precision."""
    if device.startswith("cuda"):
        return cuda_ceiling(precision, device)
    return cpu_ceilings(precision=precision)
