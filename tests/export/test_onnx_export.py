"""vivit-export: the graph it writes, its validation, its metadata, and what it refuses."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from vivit_deploy.model.checkpoint import load_model
from vivit_deploy.demo import demo_model_dir, sample_videos
from vivit_deploy.errors import ConfigError, ExportError
from vivit_deploy.export import export_onnx
from vivit_deploy.export.graph_checks import summarize
from vivit_deploy.artifacts.metadata import read_onnx_metadata
from vivit_deploy.video.preprocessing import VideoPreprocessor
from vivit_deploy.runtimes import load_runtime
from vivit_deploy.video.reading import read_video

ACCEPTANCE_ATOL = 1e-4


def _torch_logits(source, x: np.ndarray) -> np.ndarray:
    model = load_model(source)
    with torch.no_grad():
        return model(torch.from_numpy(x)).logits.numpy()


@pytest.mark.parametrize("which", ["demo", "tiny"])
def test_fp32_graph_matches_pytorch_at_batch_1_and_3_from_one_file(which, demo_onnx, tiny_onnx, tiny_checkpoint):
    path, source = (demo_onnx, demo_model_dir()) if which == "demo" else (tiny_onnx, tiny_checkpoint)
    onnx.checker.check_model(str(path), full_check=True)
    with load_runtime(path, device="cpu") as runtime:
        for batch in (1, 3):
            x = np.random.default_rng(batch).standard_normal((batch, *runtime.config.input_shape), dtype=np.float32)
            diff = np.abs(runtime.run(x) - _torch_logits(source, x)).max()
            assert diff <= ACCEPTANCE_ATOL, (batch, diff)


def test_graph_is_what_tensorrt_and_onnxruntime_run_well(demo_onnx):
    model = onnx.load(str(demo_onnx))
    summary = summarize(model)
    layers = 4
    assert summary.opset >= 17 and summary.op_counts["LayerNormalization"] == 2 * layers + 1
    assert summary.attention_blocks == summary.prescaled_attention_blocks == layers
    assert not {"IsNaN", "Where", "ReduceMean"} & set(summary.op_counts)
    assert set(summary.weight_types) <= {"float", "int64"} and "double" not in summary.weight_types
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"
    assert not model.graph.initializer or all(not i.HasField("data_location") or i.data_location == 0 for i in model.graph.initializer)
    assert len(list(demo_onnx.parent.glob("*.data"))) == 0  # weights inline, one file


def test_fp16_graph_has_fp32_io_and_keeps_every_top1_on_the_demo_samples(demo_onnx_fp16):
    summary = summarize(onnx.load(str(demo_onnx_fp16)))
    assert set(summary.input_types.values()) == set(summary.output_types.values()) == {"float"}
    assert summary.weight_types.get("float16", 0) > 100_000 and summary.weight_types.get("float", 0) < 1000
    preprocessor = VideoPreprocessor.from_pretrained(demo_model_dir())
    videos = sample_videos()
    x = np.concatenate([preprocessor(read_video(path, 8)[None]) for path, _ in videos])
    with load_runtime(demo_onnx_fp16, device="cpu") as runtime:
        assert runtime.precision == "fp16"
        fp16 = runtime.run(x)
    reference = _torch_logits(demo_model_dir(), x)
    assert (fp16.argmax(1) == reference.argmax(1)).all()
    assert np.abs(fp16 - reference).max() < 1e-2


def test_metadata_round_trip_rebuilds_labels_and_preprocessing(demo_onnx):
    metadata = read_onnx_metadata(demo_onnx)
    assert metadata.config == load_model(demo_model_dir()).config
    assert metadata.preprocessor == VideoPreprocessor.from_pretrained(demo_model_dir()).config
    assert metadata.id2label == {0: "moving left", 1: "moving right", 2: "moving up", 3: "moving down"}
    assert metadata.input.max_batch == 32 and metadata.precision == "fp32"
    versions = metadata.provenance["versions"]
    assert {"torch", "onnx", "vivit-deploy"} <= set(versions)
    props = {p.key: p.value for p in onnx.load(str(demo_onnx), load_external_data=False).metadata_props}
    assert json.loads(props["vivit_deploy.config"])["num_frames"] == 8


def test_checkpoint_without_preprocessor_config_records_defaults_for_its_input(tiny_onnx):
    metadata = read_onnx_metadata(tiny_onnx)
    assert metadata.preprocessor.crop_size == {"height": 32, "width": 32}
    assert metadata.preprocessor.size == {"shortest_edge": 37}


def test_static_batch_and_opset_20(tmp_path):
    path = tmp_path / "static.onnx"
    report = export_onnx(demo_model_dir(), path, static_batch=True, max_batch=2, opset=20)
    assert report.passed and [r.batch for r in report.validation] == [2]
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 2
    assert report.summary.op_counts.get("Gelu") == 4  # one op from opset 20
    with load_runtime(path) as runtime:
        assert runtime.input_spec.static_batch == 2
        assert runtime.run_batches(np.zeros((3, 8, 3, 32, 32), np.float32)).shape == (3, 4)


def test_failed_validation_leaves_no_file(tmp_path, monkeypatch):
    from vivit_deploy.accuracy import tolerances

    monkeypatch.setitem(tolerances.TOLERANCES, "fp32", tolerances.Tolerance(atol=0, rtol=0, min_cosine=1.0, min_top1=1.0))
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an older file the user keeps")
    with pytest.raises(ExportError, match="failed its checks"):
        export_onnx(demo_model_dir(), path)
    assert path.read_bytes() == b"an older file the user keeps"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(opset=17), ConfigError, "opset= must be in 18..23"),
        (dict(precision="int4"), ConfigError, "precision= must be one of"),
        (dict(precision="int8"), ConfigError, "int8 needs calibration data"),
        (dict(max_batch=0), ConfigError, "max_batch= must be at least 1"),
        (dict(smooth_quant=1.5), ConfigError, "smooth_quant= must be in"),
        (dict(precision="fp16", attention_products=("qk",)), ConfigError, "attention_products= applies to"),
    ],
)
def test_bad_options(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        export_onnx(demo_model_dir(), tmp_path / "m.onnx", **kwargs)


def test_bad_output_paths(tmp_path):
    with pytest.raises(ConfigError, match="must end in .onnx"):
        export_onnx(demo_model_dir(), tmp_path / "model.bin")
    with pytest.raises(FileNotFoundError, match="output directory does not exist"):
        export_onnx(demo_model_dir(), tmp_path / "missing" / "model.onnx")


def test_export_at_another_geometry_runs_what_the_interpolated_model_computes(tmp_path):
    """--frames/--image-size: the positions resized once into the file, which records both geometries; the file equals
    the checkpoint run with interpolate_pos_encoding=True, and the preprocessor config follows the size."""
    path = tmp_path / "demo-4x24.onnx"
    export_onnx(demo_model_dir(), path, num_frames=4, image_size=24)
    metadata = read_onnx_metadata(path)
    assert metadata.config.input_shape == (4, 3, 24, 24)
    assert metadata.config.extra["trained_geometry"] == {"num_frames": 8, "image_size": 32}
    assert metadata.preprocessor.crop_size == {"height": 24, "width": 24}
    assert metadata.preprocessor.size == {"shortest_edge": 24}  # the demo resizes to its crop: so does this
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 24, 24)).astype(np.float32)
    model = load_model(demo_model_dir())
    with torch.no_grad():
        expected = model(torch.from_numpy(x), interpolate_pos_encoding=True).logits.numpy()
    with load_runtime(path) as runtime:
        np.testing.assert_allclose(runtime.run(x), expected, atol=1e-4)
    with load_runtime(demo_model_dir(), "torch", frames=4, image_size=24) as runtime:
        np.testing.assert_allclose(runtime.run(x), expected, atol=1e-5)
        assert runtime.preprocessor.crop_size == {"height": 24, "width": 24}
