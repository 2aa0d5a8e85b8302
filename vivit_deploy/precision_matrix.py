"""Every backend x precision that can run here, and the files each needs: what `compare` checks when
no candidate is named.

A variant is a runtime backend in one precision on one device (ONNX Runtime int8, OpenVINO bf16,
PyTorch bf16, ...). ``available_variants`` says which run on this machine and why the others do not
(a missing library, no bf16 units, no GPU); ``prepare_files`` exports the ONNX files (fp32, fp16,
int8) and engines they load into a working directory. PyTorch fp32 is the reference, not a variant.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vivit_deploy.cpu_info import cpu_has_bf16
from vivit_deploy.errors import ConfigError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Variant:
    label: str  # how reports name it
    backend: str  # runtime backend
    artifact: str  # "checkpoint", "onnx-fp32", "onnx-fp16", "onnx-int8", "engine-fp16", "engine-int8"
    precision: str | None  # the runtime's precision argument (None: the file's own)
    device: str


def available_variants(device: str = "cpu") -> tuple[list[Variant], dict[str, str]]:
    """The variants that can run here (reference device ``device``), and label -> why not for the others."""
    run: list[Variant] = []
    skipped: dict[str, str] = {}
    cuda = device.startswith("cuda")
    torch_precisions = ("fp16", "bf16") if cuda else ("bf16",)
    run += [Variant(f"pytorch {p}{' cuda' if cuda else ''}", "torch", "checkpoint", p, device) for p in torch_precisions]

    if importlib.util.find_spec("onnxruntime") is None:
        skipped["onnxruntime"] = "onnxruntime is not installed"
    else:
        # fp8 runs on ONNX Runtime's CPU as fp8-rounded Q/DQ around fp32 products: its numerics, not its speed
        run += [Variant(f"onnxruntime {p}", "onnxruntime", f"onnx-{p}", None, "cpu") for p in ("fp32", "fp16", "int8", "fp8")]
        if cuda:
            import onnxruntime

            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                run += [Variant(f"onnxruntime cuda {p}", "onnxruntime", f"onnx-{p}", None, device) for p in ("fp32", "fp16")]
            else:
                skipped["onnxruntime cuda"] = "this onnxruntime has no CUDA provider"

    if importlib.util.find_spec("openvino") is None:
        skipped["openvino"] = "OpenVINO is not installed (pip install 'vivit-deploy[openvino]')"
    else:
        run += [Variant("openvino fp32", "openvino", "onnx-fp32", "fp32", "cpu"),
                Variant("openvino int8", "openvino", "onnx-int8", "fp32", "cpu")]
        if cpu_has_bf16():
            run += [Variant("openvino bf16", "openvino", "onnx-fp32", "bf16", "cpu"),
                    Variant("openvino int8-bf16", "openvino", "onnx-int8", "bf16", "cpu")]
        else:
            skipped["openvino bf16"] = "this CPU has no bf16 units (AVX512-BF16 or AMX)"

    if not cuda:
        skipped["tensorrt"] = "needs a CUDA device (--device cuda)"
    elif importlib.util.find_spec("tensorrt") is None:
        skipped["tensorrt"] = "tensorrt is not installed (see docs/tensorrt.md)"
    else:
        run += [Variant(f"tensorrt {p}", "tensorrt", f"engine-{p}", None, device) for p in ("fp16", "int8", "fp8")]
    return run, skipped


def prepare_files(
    checkpoint: str | os.PathLike,
    variants: list[Variant],
    workdir: Path,
    *,
    calibration: str | os.PathLike | None,
    max_batch: int = 8,
    progress: Progress | None = None,
) -> tuple[dict[str, Path], list[Variant], dict[str, str]]:
    """Export (and build) what ``variants`` load; int8 ones are dropped, with the reason, when there is
    no ``calibration`` data. Returns artifact -> file, the variants kept, and the ones dropped."""
    from vivit_deploy.export import export_onnx

    progress = progress or (lambda message: None)
    files: dict[str, Path] = {"checkpoint": Path(checkpoint)}
    kept, dropped = [], {}
    needed = {v.artifact for v in variants}
    for precision in ("fp32", "fp16", "int8", "fp8"):
        wanted = f"onnx-{precision}" in needed or f"engine-{precision}" in needed
        if not wanted:
            continue
        if precision in ("int8", "fp8") and calibration is None:
            continue
        path = workdir / f"model-{precision}.onnx"
        progress(f"exporting {checkpoint} to ONNX ({precision}) ...")
        export_onnx(checkpoint, path, precision=precision, max_batch=max_batch,
                    calibration=calibration if precision in ("int8", "fp8") else None, validate=False)
        files[f"onnx-{precision}"] = path
    for precision in ("fp16", "int8", "fp8"):
        if f"engine-{precision}" in needed and f"onnx-{precision}" in files:
            from vivit_deploy.export.trt_build import build_engine

            progress(f"building a TensorRT {precision} engine (minutes) ...")
            path = workdir / f"model-{precision}.engine"
            build_engine(files[f"onnx-{precision}"], path, max_batch=max_batch, timing_cache=workdir / "timing.cache",
                         progress=progress)
            files[f"engine-{precision}"] = path
    for variant in variants:
        if variant.artifact in files:
            kept.append(variant)
        elif variant.artifact.endswith(("int8", "fp8")):
            dropped[variant.label] = f"{variant.artifact[-4:]} needs calibration data (--calibration DIR_OR_NPZ)"
        else:
            raise ConfigError(f"no {variant.artifact} file for {variant.label}")
    return files, kept, dropped
