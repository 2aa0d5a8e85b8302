"""Engine building: the plan per TensorRT version, profiles and sidecars (everywhere), real builds (with TensorRT)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tests.conftest import requires_tensorrt
from vivit_deploy.errors import BackendUnavailableError, ConfigError, ModelFileError
from vivit_deploy.export.trt_build import (
    Profile, build_engine, check_profile, check_sidecar, make_sidecar, plan_build, read_sidecar, sidecar_path,
)
from vivit_deploy.metadata import read_onnx_metadata


@pytest.mark.parametrize(
    ("version", "engine", "graph", "typed", "flag"),
    [
        ("11.4.1", "fp16", "fp16", True, False),
        ("11.0.0", "fp32", "fp32", True, False),
        ("10.13.0.35", "fp16", "fp16", True, False),
        ("10.12.0", "fp16", "fp16", True, False),
        ("10.8.0", "fp16", "fp32", False, True),
        ("10.8.0", "fp16", "fp16", False, True),
        ("10.3.0", "fp32", "fp32", False, False),
    ],
)
def test_build_plan_per_version(version, engine, graph, typed, flag):
    plan = plan_build(version, engine, graph)
    assert (plan.strongly_typed, plan.fp16_flag) == (typed, flag)


@pytest.mark.parametrize(("version", "typed", "int8_flag"), [("11.2.0", True, False), ("10.12.0", True, False),
                                                              ("10.8.0", False, True)])
def test_int8_engines_use_explicit_quantization(version, typed, int8_flag):
    plan = plan_build(version, "int8", "int8")
    assert (plan.strongly_typed, plan.fp16_flag, plan.int8_flag) == (typed, False, int8_flag)
    with pytest.raises(ConfigError, match="an int8 engine is built from the int8 Q/DQ graph"):
        plan_build(version, "int8", "fp32")
    with pytest.raises(ConfigError, match="that graph only builds an int8 engine"):
        plan_build(version, "fp16", "int8")
    fp8 = plan_build(version, "fp8", "fp8")
    assert (fp8.strongly_typed, fp8.fp8_flag, fp8.int8_flag) == (typed, int8_flag, False)


def test_build_plan_refusals():
    with pytest.raises(ConfigError, match="strongly typed, from an fp16 graph: export one with"):
        plan_build("11.1.0", "fp16", "fp32")
    with pytest.raises(ConfigError, match="an fp32 engine needs the fp32 graph"):
        plan_build("10.8.0", "fp32", "fp16")
    with pytest.raises(BackendUnavailableError, match="TensorRT 8.6.1 is not supported; .* 10.x and 11.x"):
        plan_build("8.6.1", "fp16", "fp16")


def test_profile_comes_from_the_flags_inside_the_file_limits(demo_onnx):
    metadata = read_onnx_metadata(demo_onnx)  # batch 1..32
    assert check_profile(1, None, None, metadata) == Profile(1, 8, 32)
    assert check_profile(2, 4, 16, metadata) == Profile(2, 4, 16)
    with pytest.raises(ConfigError, match="1 <= min <= opt <= max"):
        check_profile(4, 2, 8, metadata)
    with pytest.raises(ConfigError, match=r"outside what the ONNX file allows \(1..32\)"):
        check_profile(1, 8, 64, metadata)


def test_sidecar_round_trip_and_refusals(demo_onnx, tmp_path):
    metadata = read_onnx_metadata(demo_onnx)
    sidecar = make_sidecar(metadata, tensorrt_version="10.13.0", gpu_name="NVIDIA H100 80GB HBM3",
                           compute_capability="9.0", precision="fp16", profile=Profile(1, 4, 8),
                           onnx_sha256="0" * 64, build={})
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine bytes")
    with pytest.raises(ModelFileError, match="no sidecar m.engine.json next to the engine"):
        read_sidecar(engine)
    sidecar_path(engine).write_text(json.dumps(sidecar))
    loaded = read_sidecar(engine)
    from vivit_deploy.runtimes.trt_runtime import engine_metadata

    _, engine_meta = engine_metadata(engine)
    assert engine_meta.input.batch_range == "1..8" and engine_meta.precision == "fp16"
    assert engine_meta.id2label == metadata.id2label and engine_meta.preprocessor == metadata.preprocessor
    with pytest.raises(Exception, match=r"batch 9 is outside the range this model takes \(1..8\)"):
        engine_meta.input.validate(np.zeros((9, 8, 3, 32, 32), np.float32))
    check_sidecar(loaded, tensorrt_version="10.13.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", engine="m")
    with pytest.raises(ModelFileError, match="built with TensorRT 10.13.0, this is TensorRT 11.0.0"):
        check_sidecar(loaded, tensorrt_version="11.0.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", engine="m")
    with pytest.raises(ModelFileError, match=r"built for NVIDIA H100 80GB HBM3 \(compute 9.0\), this GPU is NVIDIA A100"):
        check_sidecar(loaded, tensorrt_version="10.13.0", gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0", engine="m")
    sidecar_path(engine).write_text("{}")
    with pytest.raises(ModelFileError, match="not a vivit_deploy engine sidecar"):
        read_sidecar(engine)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_without_tensorrt_the_build_says_how_to_get_it(demo_onnx_fp16, tmp_path):
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed: `pip install tensorrt"):
        build_engine(demo_onnx_fp16, tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


# ---- with TensorRT and a GPU -----------------------------------------------------------------------

@pytest.mark.tensorrt
@requires_tensorrt
def test_engines_build_with_sidecars_and_the_second_build_reuses_the_timing_cache(demo_engines, demo_onnx, tmp_path):
    for precision in ("fp32", "fp16"):
        report = demo_engines[precision]
        sidecar = read_sidecar(report.engine)
        assert sidecar["precision"] == precision and sidecar["profile"] == {"min": 1, "opt": 8, "max": 8}
    cache = demo_engines["cache"]
    size = cache.stat().st_size
    assert size > 0
    again = build_engine(demo_onnx, tmp_path / "again.engine", max_batch=8, timing_cache=cache)
    assert again.engine.is_file() and cache.stat().st_size >= size
