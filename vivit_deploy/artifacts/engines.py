"""TensorRT engine files: the two editions of TensorRT that make and run them, and the sidecar beside each.

Two editions of NVIDIA's library build engines from our ONNX files, with one Python API and different
rules. What differs is data in :data:`EDITIONS`, read by the builder (``export/trt_build.py``), the
runtime (``runtimes/trt_runtime.py``), ``check-trt`` and ``triton-repo``; none of them copies code per
edition:

- **TensorRT** 10.x / 11.x (``import tensorrt``): builds on the GPU it will run on, for that GPU; a
  timing cache speeds up rebuilds; strongly typed from 11 (and 10.12+ with the ``STRONGLY_TYPED``
  creation flag), precision flags (FP16/INT8/FP8) on 10.0-10.11. Triton's ``tensorrt_plan`` backend
  runs its engines. Its wheels come from NVIDIA's own index.
- **TensorRT for RTX** 1.x (``import tensorrt_rtx``, PyPI ``tensorrt-rtx-cu13``): builds ahead of time
  with no GPU, for named compute capabilities (7.5, 8.0, 8.6, 8.9, 12.0, 12.1: no Hopper), always
  strongly typed, no precision flags, no timing cache (setting one makes the build look for a GPU);
  kernels are compiled on the GPU when the engine loads, with a runtime cache. Triton's TensorRT
  backend cannot load these engines.

The sidecar (``model.engine.json``) records which edition and version built an engine, for which
GPU or targets, with the model's metadata and the build report; a runtime reads it before the
engine bytes, so an engine is never handed to the wrong edition, version or GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vivit_deploy.errors import BackendUnavailableError, ConfigError, ModelFileError
from vivit_deploy.artifacts.metadata import DeployMetadata

SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = 2  # 2: "edition" and "targets"; format 1 (before TensorRT for RTX) is read as TensorRT
EDITION_CHOICES = ("auto", "tensorrt", "rtx")


@dataclass(frozen=True)
class Edition:
    """What one edition of TensorRT is, as the builder and the runtime need to know it."""

    name: str  # "tensorrt" or "rtx": the sidecar's "edition", --trt's value
    title: str  # for messages
    module: str  # the Python module
    install: str  # how to get it, for the error when it is missing
    majors: tuple[int, ...]  # the major versions vivit_deploy builds with
    strongly_typed_from: tuple[int, int] | None  # (major, minor) from which networks are strongly typed; None: always.
    # Before it, precision comes from BuilderFlag.FP16/INT8/FP8 (``plan_build``)
    creation_flag_from: tuple[int, int] | None  # from which the STRONGLY_TYPED creation flag is needed (10.12); None: never
    timing_cache: bool  # ITimingCache speeds up rebuilds (RTX: setting one makes the build look for a GPU)
    builds_without_gpu: bool  # ahead-of-time builds for named compute capabilities
    targets: tuple[str, ...] = ()  # compute capabilities it builds for, ahead of time
    default_targets: tuple[str, ...] = ()  # what a build targets when none is named
    fp8_from: str = "8.9"  # fp8 kernels need this compute capability or newer
    triton_backend: bool = False  # Triton's tensorrt_plan backend loads its engines


EDITIONS: dict[str, Edition] = {
    "tensorrt": Edition(
        name="tensorrt", title="TensorRT", module="tensorrt",
        install="`pip install tensorrt-cu12` (or -cu13) from NVIDIA's index (https://pypi.nvidia.com); "
                "vivit_deploy supports TensorRT 10.x and 11.x",
        majors=(10, 11), strongly_typed_from=(10, 12), creation_flag_from=(10, 12),
        timing_cache=True, builds_without_gpu=False, triton_backend=True,
    ),
    "rtx": Edition(
        name="rtx", title="TensorRT for RTX", module="tensorrt_rtx",
        install="pip install 'vivit-deploy[tensorrt-rtx]' (PyPI tensorrt-rtx-cu13)",
        majors=(1,), strongly_typed_from=None, creation_flag_from=None,
        timing_cache=False, builds_without_gpu=True,
        # trt.ComputeCapability of the 1.7 bindings; the defaults are NVIDIA's (docs: "8.0, 8.6, 8.9, 12.0")
        targets=("7.5", "8.0", "8.6", "8.9", "12.0", "12.1"), default_targets=("8.0", "8.6", "8.9", "12.0"),
    ),
}


def edition(name: str) -> Edition:
    if name not in EDITIONS:
        raise ConfigError(f"unknown TensorRT edition {name!r}; choose one of {', '.join(EDITIONS)}")
    return EDITIONS[name]


def installed(name: str) -> bool:
    return importlib.util.find_spec(edition(name).module) is not None


def import_edition(name: str):
    """The edition's Python module; a one-line error naming how to install it when it is missing."""
    ed = edition(name)
    try:
        return importlib.import_module(ed.module)
    except ImportError as exc:
        raise BackendUnavailableError(f"{ed.title} is not installed: {ed.install}") from exc


def choose_edition(choice: str = "auto") -> Edition:
    """``auto``: TensorRT 10/11 where it imports, else TensorRT for RTX; or the one named."""
    if choice not in EDITION_CHOICES:
        raise ConfigError(f"trt= must be one of {', '.join(EDITION_CHOICES)}, got {choice!r}")
    if choice != "auto":
        return edition(choice)
    for name in ("tensorrt", "rtx"):
        if installed(name):
            return EDITIONS[name]
    raise BackendUnavailableError(
        "neither TensorRT nor TensorRT for RTX is installed: pip install 'vivit-deploy[tensorrt-rtx]' (builds "
        f"without a GPU, for RTX/Ada/Ampere/Turing GPUs), or {EDITIONS['tensorrt'].install}"
    )


def parse_version(version: str, title: str = "TensorRT") -> tuple[int, int]:
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError as exc:
        raise BackendUnavailableError(f"cannot read the {title} version {version!r}") from exc
    return major, minor


def check_version(ed: Edition, version: str) -> tuple[int, int]:
    major, minor = parse_version(version, ed.title)
    if major not in ed.majors:
        supported = " and ".join(f"{m}.x" for m in ed.majors)
        raise BackendUnavailableError(f"{ed.title} {version} is not supported; vivit_deploy builds engines with {ed.title} {supported}")
    return major, minor


# ---- compute capabilities (TensorRT for RTX builds for named ones) --------------------------------

def _cc_key(cc: str) -> tuple[int, int]:
    major, minor = cc.split(".")
    return int(major), int(minor)


def parse_targets(text: str | None, ed: Edition, precision: str) -> tuple[str, ...]:
    """The compute capabilities to build for: ``"8.6,8.9"`` checked against what ``ed`` targets, or its
    defaults (for an fp8 graph only those with fp8 kernels, 8.9 and newer)."""
    if text is None or not str(text).strip():
        if not ed.builds_without_gpu:
            return ()
        defaults = ed.default_targets
        if precision == "fp8":
            defaults = tuple(cc for cc in defaults if _cc_key(cc) >= _cc_key(ed.fp8_from))
        return defaults
    if not ed.builds_without_gpu:
        raise ConfigError(f"compute_capabilities= is for TensorRT for RTX's ahead-of-time builds; {ed.title} builds "
                          "for the GPU it runs on (use trt=rtx, or build on the target GPU)")
    chosen: list[str] = []
    for part in str(text).split(","):
        value = part.strip().lower().removeprefix("sm")
        if value.isdigit() and len(value) >= 2:  # "sm86" / "86" -> "8.6", "120" -> "12.0"
            value = f"{value[:-1]}.{value[-1]}"
        try:
            _cc_key(value)
        except ValueError:
            raise ConfigError(f"compute_capabilities= {part.strip()!r} is not a compute capability like 8.6") from None
        if value not in ed.targets:
            hopper = " (Hopper, H100/H200, is not a TensorRT for RTX target)" if value.startswith("9.") else ""
            raise ConfigError(f"compute_capabilities= {value}: {ed.title} builds for {', '.join(ed.targets)}{hopper}")
        if value not in chosen:
            chosen.append(value)
    return tuple(sorted(chosen, key=_cc_key))


def compute_capability_enum(trt, cc: str):
    """``trt.ComputeCapability.SM86`` for "8.6"."""
    major, minor = _cc_key(cc)
    return getattr(trt.ComputeCapability, f"SM{major}{minor}")


# ---- the GPU (through torch, which brings the CUDA runtime) --------------------------------------

def gpu_identity(device_index: int = 0, needed_for: str = "TensorRT") -> tuple[str, str]:
    """(name, "major.minor" compute capability) of a CUDA device, via torch."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"{needed_for} needs a CUDA GPU, and none is visible here "
                                      "(torch.cuda.is_available() is False)")
    major, minor = torch.cuda.get_device_capability(device_index)
    return torch.cuda.get_device_name(device_index), f"{major}.{minor}"


# ---- the sidecar ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    min: int
    opt: int
    max: int


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def make_sidecar(
    metadata: DeployMetadata, *, edition_name: str = "tensorrt", tensorrt_version: str, gpu_name: str | None,
    compute_capability: str | None, targets: tuple[str, ...] = (), precision: str, profile: Profile,
    onnx_sha256: str, build: dict[str, Any],
) -> dict[str, Any]:
    """The record written next to an engine: which edition built it, for which GPU or targets, the build
    report, and the model's metadata with the engine's batch profile."""
    spec = replace(metadata.input, min_batch=profile.min, max_batch=profile.max)
    engine_metadata = replace(metadata, input=spec, precision=precision)
    return {
        "format_version": SIDECAR_FORMAT,
        "edition": edition(edition_name).name,
        "tensorrt": tensorrt_version,
        "gpu": None if gpu_name is None else {"name": gpu_name, "compute_capability": compute_capability},
        "targets": list(targets) or ([compute_capability] if compute_capability else []),
        "precision": precision,
        "profile": asdict(profile),
        "onnx_sha256": onnx_sha256,
        "build": build,
        "metadata": engine_metadata.to_props(),
    }


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ModelFileError(
            f"{engine_path}: no sidecar {path.name} next to the engine; build engines with "
            "`vivit-deploy build-engine`, which records the TensorRT edition and version, the GPU or targets and "
            "the model metadata there"
        )
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
        if sidecar["format_version"] not in (1, SIDECAR_FORMAT):
            raise ValueError(f"format {sidecar['format_version']!r}")
        for key in ("tensorrt", "gpu", "precision", "profile", "metadata"):
            sidecar[key]
        sidecar.setdefault("edition", "tensorrt")  # format 1 came before TensorRT for RTX
        edition(sidecar["edition"])
        if not sidecar.get("targets"):
            gpu = sidecar["gpu"] or {}
            sidecar["targets"] = [gpu["compute_capability"]] if gpu.get("compute_capability") else []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: not a vivit_deploy engine sidecar ({exc})") from exc
    return sidecar


def engine_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], DeployMetadata]:
    """The sidecar of an engine and the model metadata in it (input spec with the engine's batch profile)."""
    sidecar = read_sidecar(path)
    return sidecar, DeployMetadata.from_props(sidecar["metadata"], source=f"{path} sidecar")


def describe_build(sidecar: dict[str, Any]) -> str:
    """"TensorRT for RTX 1.7.1.116 for compute 8.6, 8.9" / "TensorRT 10.13.0 for NVIDIA H100 (compute 9.0)"."""
    ed = edition(sidecar["edition"])
    gpu = sidecar.get("gpu")
    where = (f"{gpu['name']} (compute {gpu['compute_capability']})" if gpu and gpu.get("name")
             else "compute " + ", ".join(sidecar.get("targets") or ["?"]))
    return f"{ed.title} {sidecar['tensorrt']} for {where}"


def check_sidecar(sidecar: dict[str, Any], *, edition_name: str = "tensorrt", tensorrt_version: str, gpu_name: str,
                  compute_capability: str, engine: str) -> None:
    """Refuse an engine built by another edition or version of TensorRT, or for another GPU, before TensorRT
    is asked to deserialize it (neither edition's engines are forward compatible)."""
    ed = edition(edition_name)
    built_by = edition(sidecar.get("edition", "tensorrt"))
    if built_by.name != ed.name:
        raise ModelFileError(f"{engine} was built by {built_by.title}, not {ed.title}: each edition runs only its own engines")
    built = sidecar["tensorrt"]
    if built != tensorrt_version:
        raise ModelFileError(
            f"{engine} was built with {ed.title} {built}, this is {ed.title} {tensorrt_version}: engines are tied to "
            "the version that built them; rebuild it with `vivit-deploy build-engine` here"
        )
    if ed.builds_without_gpu:
        targets = sidecar.get("targets") or []
        if compute_capability not in targets:
            if compute_capability in ed.targets:
                remedy = f"rebuild with --compute-capability {compute_capability}"
            else:
                remedy = (f"{ed.title} does not target compute capability {compute_capability} at all; run the ONNX "
                          "file with another backend, or build an engine with TensorRT 10/11 on this GPU")
            raise ModelFileError(f"{engine} was built for compute capability {', '.join(targets) or '?'}; this GPU, "
                                 f"{gpu_name}, is {compute_capability}: {remedy}")
        return
    gpu = sidecar["gpu"] or {}
    if gpu.get("compute_capability") != compute_capability or gpu.get("name") != gpu_name:
        raise ModelFileError(
            f"{engine} was built for {gpu.get('name')} (compute {gpu.get('compute_capability')}), this GPU is "
            f"{gpu_name} (compute {compute_capability}); rebuild the engine on this GPU"
        )
