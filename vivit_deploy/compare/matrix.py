"""Every backend x precision that can run here, and the files each needs: what `compare` checks when
no candidate is named.

A variant is a runtime backend in one precision on one device (ONNX Runtime int8, OpenVINO bf16,
PyTorch bf16, ...). ``available_variants`` says which run on this machine and why the others do not
(a missing library, no bf16 units, no GPU); ``prepare_files`` exports the ONNX files (fp32, fp16,
int8, fp8) and engines they load into a working directory, with ``export_files``, which bench uses
too. PyTorch fp32 is the reference, not a variant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from vivit_deploy.errors import ConfigError
from vivit_deploy.artifacts.metadata import PRECISIONS, QUANTIZED_PRECISIONS

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Variant:
    label: str  # how reports name it
    backend: str  # runtime backend
    artifact: str  # "checkpoint", "onnx-fp32", "onnx-fp16", "onnx-int8", "engine-fp16", "engine-int8"
    precision: str | None  # the runtime's precision argument (None: the file's own)
    device: str


def available_variants(device: str = "cpu") -> tuple[list[Variant], dict[str, str]]:
    """The variants that can run here (reference device ``device``), and label -> why not for the others: each
    registered backend says which of its precisions it runs (``Runtime.compare_variants``)."""
    from vivit_deploy.runtimes import BACKENDS

    run: list[Variant] = []
    skipped: dict[str, str] = {}
    for cls in BACKENDS.values():  # a remote model (Triton) has none: it is compared when named
        variants, why_not = cls.compare_variants(device)
        skipped.update(why_not)
        for label, precision, where in variants:
            artifact = "checkpoint" if cls.artifact == "checkpoint" else f"{cls.artifact}-{cls.file_precision(precision)}"
            run.append(Variant(label, cls.backend, artifact, cls.load_precision(precision), where))
    return run, skipped


def engine_build_options(workdir: Path, device: str = "cuda") -> dict:
    """How ``export_files`` builds engines with the edition ``build_engine`` picks: with a shared timing cache
    (TensorRT 10/11), or ahead of time for this GPU's compute capability (TensorRT for RTX, no timing cache)."""
    from vivit_deploy.artifacts.engines import choose_edition, gpu_identity
    from vivit_deploy.runtimes.base import device_index

    edition = choose_edition("auto")
    if edition.timing_cache:
        return {"timing_cache": workdir / "timing.cache"}
    return {"compute_capabilities": gpu_identity(device_index(device))[1]}


DEMO_CALIBRATION_CLIPS = 64


def write_demo_calibration(config, preprocessor, path: Path) -> Path:
    """What int8/fp8 are calibrated on for the demo model when no --calibration is given: labelled clips of
    its motion task, of a seed no evaluation set uses, saved as an .npz the export reads."""
    from vivit_deploy.accuracy.inputs import synthetic_inputs
    from vivit_deploy.demo.motion import CALIBRATION_SEED

    synthetic_inputs(config, preprocessor, DEMO_CALIBRATION_CLIPS, seed=CALIBRATION_SEED).save(path)
    return path


def export_files(
    checkpoint: str | os.PathLike,
    workdir: Path,
    *,
    onnx: Iterable[str] = (),
    engines: Iterable[str] = (),
    calibration: Callable[[], str | os.PathLike] | None = None,
    max_batch: int = 8,
    opt_batch: int | None = None,
    given: dict[str, Path] | None = None,
    label: str | None = None,
    progress: Progress | None = None,
    merge_tokens: int | tuple[int, ...] | None = None,
) -> dict[str, Path]:
    """Export the ONNX files of precisions ``onnx`` and build the TensorRT engines of precisions ``engines``
    (each from the ONNX file of its precision, exported too) into ``workdir``; ``merge_tokens``: with token merging.

    Returns "onnx-P" / "engine-P" -> file, starting from ``given`` (files already at hand, not made
    again). ``calibration`` is called once, when the first int8 or fp8 file is exported, for the videos
    or .npz to calibrate on.
    """
    from vivit_deploy.export import export_onnx

    progress = progress or (lambda message: None)
    files = dict(given or {})
    engines = [p for p in PRECISIONS if p in set(engines) and f"engine-{p}" not in files]
    wanted = set(onnx) | set(engines)
    calibration_data = None
    for precision in PRECISIONS:
        if precision not in wanted or f"onnx-{precision}" in files:
            continue
        if precision in QUANTIZED_PRECISIONS and calibration_data is None:
            if calibration is None:
                raise ConfigError(f"{precision} needs calibration data (calibration= a directory of videos or an .npz)")
            calibration_data = calibration()
        path = workdir / f"model-{precision}.onnx"
        progress(f"exporting {label or checkpoint} to ONNX ({precision}) ...")
        export_onnx(checkpoint, path, precision=precision, max_batch=max_batch, merge_tokens=merge_tokens,
                    calibration=calibration_data if precision in QUANTIZED_PRECISIONS else None, validate=False)
        files[f"onnx-{precision}"] = path
    for precision in engines:
        from vivit_deploy.export.trt_build import build_engine

        path = workdir / f"model-{precision}.engine"
        progress(f"building a TensorRT {precision} engine (minutes) ...")
        build_engine(files[f"onnx-{precision}"], path, max_batch=max_batch, opt_batch=opt_batch, progress=progress,
                     **engine_build_options(workdir))
        files[f"engine-{precision}"] = path
    return files


def prepare_files(
    checkpoint: str | os.PathLike,
    variants: list[Variant],
    workdir: Path,
    *,
    calibration: str | os.PathLike | None,
    max_batch: int = 8,
    progress: Progress | None = None,
) -> tuple[dict[str, Path], list[Variant], dict[str, str]]:
    """Export (and build) what ``variants`` load; int8 and fp8 ones are dropped, with the reason, when
    there is no ``calibration`` data. Returns artifact -> file, the variants kept, and the ones dropped."""
    needed = {v.artifact for v in variants}
    usable = [p for p in PRECISIONS if calibration is not None or p not in QUANTIZED_PRECISIONS]
    files = export_files(
        checkpoint, workdir, onnx=[p for p in usable if f"onnx-{p}" in needed],
        engines=[p for p in usable if f"engine-{p}" in needed],
        calibration=None if calibration is None else lambda: calibration, max_batch=max_batch, progress=progress,
    )
    files["checkpoint"] = Path(checkpoint)
    kept, dropped = [], {}
    for variant in variants:
        if variant.artifact in files:
            kept.append(variant)
        elif variant.artifact.endswith(QUANTIZED_PRECISIONS):
            dropped[variant.label] = f"{variant.artifact[-4:]} needs calibration data (calibration= a directory of videos or an .npz)"
        else:
            raise ConfigError(f"no {variant.artifact} file for {variant.label}")
    return files, kept, dropped
