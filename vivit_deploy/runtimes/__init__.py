"""One runtime interface for every backend.

    from vivit_deploy.runtimes import load_runtime

    with load_runtime("model.onnx") as runtime:          # ONNX Runtime, from the file suffix
        logits = runtime.run(pixel_values)               # (B, T, C, H, W) float32 -> (B, num_labels) float32

``load_runtime`` picks the backend from the target: ``.onnx`` -> ONNX Runtime (``backend="openvino"``
runs it with OpenVINO), ``.engine`` / ``.plan`` -> TensorRT, ``triton://host:port/model`` -> a model on a
Triton server, a checkpoint directory or Hub id -> PyTorch. The backend modules import their libraries only when a runtime is created, so a
missing library breaks only its own backend.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from vivit_deploy.errors import ConfigError
from vivit_deploy.runtimes.base import BACKENDS, SCHEMES, SUFFIXES, Runtime, RuntimeClosedError, register_backend
# registering the backends, in the order compare's matrix and reports list them:
from vivit_deploy.runtimes import torch_runtime, ort_runtime, openvino_runtime, trt_runtime  # noqa: F401
from vivit_deploy.runtimes import triton_runtime  # noqa: F401  (registers triton://)


def expected_precision(backend: str, file_precision: str | None, asked: str | None) -> str:
    """The precision a ``backend`` runtime will report for a model of ``file_precision`` (None: a checkpoint)
    loaded with ``precision=asked``, without loading it: what a corpus job's rows and a Triton config name."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; available: {sorted(BACKENDS)}")
    return BACKENDS[backend].reported_precision(file_precision, asked)


def backend_for(target: str | os.PathLike) -> str:
    """The backend name a target implies: a URL scheme (triton://), a registered file suffix, else PyTorch
    (checkpoint dir or Hub id)."""
    scheme = str(target).split("://", 1)[0].lower() if "://" in str(target) else None
    if scheme is not None:
        if scheme not in SCHEMES:
            raise ConfigError(f"{target}: no backend serves {scheme}:// (known: {', '.join(s + '://' for s in SCHEMES)})")
        return SCHEMES[scheme]
    suffix = Path(target).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if Path(target).is_file():
        known = ", ".join(f"{s} -> {b}" for s, b in sorted(SUFFIXES.items()))
        raise ConfigError(f"{target}: cannot tell which backend runs a {suffix or 'suffix-less'} file ({known}, "
                          "a checkpoint directory or Hub id -> torch)")
    return "torch"


def load_runtime(
    target: str | os.PathLike,
    backend: str | None = None,
    *,
    device: str = "auto",
    precision: str | None = None,
    **options: Any,
) -> Runtime:
    """Load ``target`` with ``backend`` (default: from the target) on ``device``.

    ``precision`` is the compute precision where the backend chooses it (PyTorch: fp32/fp16/bf16);
    for an ONNX file it must match the file unless the TensorRT provider builds fp16 engines.
    Other keyword ``options`` go to the backend (see each runtime class).
    """
    name = backend or backend_for(target)
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; available: {sorted(BACKENDS)}")
    cls = BACKENDS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"backend {name!r} does not take option(s) {unknown}; it takes {sorted(accepted - {'source', 'path'})}")
    return cls(target, device=device, precision=precision, **options)


__all__ = ["BACKENDS", "Runtime", "RuntimeClosedError", "backend_for", "load_runtime", "register_backend"]
