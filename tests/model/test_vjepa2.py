"""V-JEPA 2's classifier as one model file: transformers' parameter names, its checkpoints (the pre-training predictor
they carry left out), the same outputs as transformers' VJEPA2ForVideoClassification on random weights in several
configs, its 3D rotary positions at another geometry, and the paths every model takes (export, runtimes)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from vivit_deploy.errors import CheckpointError, ConfigError
from tests.conftest import assert_outputs_equal, transformers_saved
from vivit_deploy.model.checkpoint import load_model

transformers = pytest.importorskip("transformers", reason="transformers (the parity reference) is not installed")

# 2 frames a tubelet, 8 px patches: 2 x 4 x 4 = 32 tokens; heads 12 wide (three rotated parts of 4, none left over)
SMALL = dict(crop_size=32, frames_per_clip=4, tubelet_size=2, patch_size=8, hidden_size=48, num_attention_heads=4,
             num_hidden_layers=3, num_pooler_layers=1, mlp_ratio=4.0, num_labels=5, pred_hidden_size=16,
             pred_num_attention_heads=2, pred_num_hidden_layers=1)
CASES = {
    "base": {},
    "width-left-unrotated": {"hidden_size": 64},  # heads of 16: 3 x 4 rotated, 4 channels left as they are
    "odd-head-width": {"hidden_size": 36},  # heads of 9: 3 x 2 rotated, 3 left
    "no-probe-self-attention": {"num_pooler_layers": 0, "mlp_ratio": 2.5, "qkv_bias": False},
    "tubelet-4-more-frames": {"frames_per_clip": 8, "tubelet_size": 4, "num_pooler_layers": 2},
}


def theirs_saved(tmp_path, base: bool = False, **overrides):
    """transformers' V-JEPA 2 with random weights (larger than its initialiser's, so every part shows), saved; its
    checkpoint holds the predictor too."""
    cls = transformers.VJEPA2Model if base else transformers.VJEPA2ForVideoClassification
    return transformers_saved(cls, transformers.VJEPA2Config(**{**SMALL, **overrides}), tmp_path,
                              attn_implementation="eager")


def clips(config, n: int = 2, seed: int = 0) -> torch.Tensor:
    size = config.crop_size
    return torch.randn(n, config.frames_per_clip, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_logits_hidden_states_attentions_and_loss_equal_transformers(overrides, tmp_path):
    from safetensors import safe_open

    from vivit_deploy import VJEPA2ForVideoClassification

    theirs = theirs_saved(tmp_path, **overrides)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert any(k.startswith("vjepa2.predictor.") for k in f.keys())  # what the loader leaves out
    ours = load_model(tmp_path)
    assert type(ours) is VJEPA2ForVideoClassification and ours.config.model_type == "vjepa2"
    x = clips(theirs.config)
    labels = torch.tensor([1, 4])
    with torch.no_grad():
        expected = theirs(x, labels=labels, output_hidden_states=True, output_attentions=True)
        mine = ours(x, labels=labels, output_hidden_states=True, output_attentions=True)
        fast = VJEPA2ForVideoClassification.from_pretrained(tmp_path)(x).logits  # SDPA, the default path
    assert_outputs_equal(mine, expected)
    assert len(mine.hidden_states) == theirs.config.num_hidden_layers + 1
    torch.testing.assert_close(fast, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.loss, expected.loss, atol=1e-5, rtol=1e-5)


def test_the_bare_encoder_loads_from_either_checkpoint_and_ours_loads_in_transformers(tmp_path):
    theirs = theirs_saved(tmp_path / "base", base=True)
    ours = load_model(tmp_path / "base")
    assert type(ours).__name__ == "VJEPA2Model"
    x = clips(theirs.config)
    with torch.no_grad():
        want = theirs(x, skip_predictor=True).last_hidden_state
        torch.testing.assert_close(ours(x).last_hidden_state, want, atol=1e-5, rtol=1e-5)
    classifier = theirs_saved(tmp_path / "cls")
    encoder_of_classifier = load_model(tmp_path / "cls", head="base")
    with torch.no_grad():
        torch.testing.assert_close(encoder_of_classifier(x).last_hidden_state,
                                   classifier.vjepa2(x, skip_predictor=True).last_hidden_state, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="predictor .* is not built"):
        ours(x, skip_predictor=False)
    # our checkpoint (no predictor) in transformers: the predictor is initialised there, the classifier is ours
    mine = load_model(tmp_path / "cls")
    mine.save_pretrained(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["model_type"] == "vjepa2" and written["crop_size"] == 32 and written["frames_per_clip"] == 4
    assert written["tubelet_size"] == 2 and written["patch_size"] == 8 and "intermediate_size" not in written
    assert written["pred_hidden_size"] == 16  # the predictor's keys are kept for transformers
    again = transformers.VJEPA2ForVideoClassification.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, classifier(x).logits, atol=1e-6, rtol=1e-6)


def test_checkpoints_and_configs_that_do_not_fit_are_one_line_errors(tmp_path):
    from vivit_deploy import VJEPA2Config

    theirs_saved(tmp_path / "v")
    videomae = transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=48, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=192, num_labels=5))
    videomae.save_pretrained(tmp_path / "videomae")
    mixed = tmp_path / "mixed"  # a V-JEPA 2 config.json with VideoMAE's weights
    mixed.mkdir()
    (mixed / "config.json").write_text((tmp_path / "v" / "config.json").read_text())
    (mixed / "model.safetensors").write_bytes((tmp_path / "videomae" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="weights do not fit the model in config.json; missing keys: pooler.*unexpected keys: .*videomae") as e:
        load_model(mixed)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="square frame"):
        VJEPA2Config(image_size=(32, 48))
    with pytest.raises(ConfigError, match="mlp_ratio must be a positive number"):
        VJEPA2Config(mlp_ratio=0)
    with pytest.raises(ConfigError, match="not V-JEPA 2"):
        VJEPA2Config.from_dict({"model_type": "videomae"})
    model = load_model(tmp_path / "v")
    with pytest.raises(ConfigError, match="does not apply to V-JEPA 2"):
        model.set_token_merging(4)
    with pytest.raises(ConfigError, match="square frames"):
        model.at_geometry(image_size=(32, 48))


def test_another_geometry_lays_the_rotary_positions_over_its_own_grid(tmp_path):
    """No learned positions to resize: at 48 px and 8 frames the rotary positions count over a 6-patch grid, which is
    what transformers computes when config.json says crop_size 48 (the same weights)."""
    from vivit_deploy.model.vjepa2 import rotary_tables

    theirs = theirs_saved(tmp_path)
    ours = load_model(tmp_path)
    bigger = ours.at_geometry(num_frames=8, image_size=48)
    assert bigger.config.grid == (4, 6, 6) and ours.config.grid == (2, 4, 4) and bigger.config.rope_grid == 6
    reference = transformers.VJEPA2ForVideoClassification(transformers.VJEPA2Config(
        **{**SMALL, "crop_size": 48, "frames_per_clip": 8})).eval()
    reference.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 8, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(bigger(x).logits, reference(x).logits, atol=1e-5, rtol=1e-5)
    cos, sin = rotary_tables(bigger.config, 144)
    assert cos.shape == sin.shape == (144, 12)  # 3 axes x 4 channels of a 12-wide head
    assert ours.at_geometry() is ours


def test_every_part_the_tools_name_is_a_module_of_the_model(tmp_path):
    """Per-layer drift, the range watch, --keep-fp32 and the exporter find V-JEPA 2's parts by its own names."""
    from vivit_deploy.model.probes import (FC1, MLP_HIDDEN, POOLER, QKV, QUERY, locate_parameter, model_parts,
                                           part_path)

    theirs_saved(tmp_path)
    model = load_model(tmp_path)
    config = model.config
    names = dict(model.named_modules())
    parts = model_parts(config, tuple(p for p in (QUERY, FC1, MLP_HIDDEN, "block", "attention", "output",
                                                  "layernorm_before", "layernorm_after")))
    assert all(p.path in names for p in parts), [p.path for p in parts if p.path not in names]
    assert part_path("layernorm_before", 1, config) == "vjepa2.encoder.layer.1.norm1"
    assert part_path("output", 1, config) == "vjepa2.encoder.layer.1.mlp"
    assert part_path("final_norm", config=config) == "vjepa2.encoder.layernorm"
    assert part_path(POOLER, config=config) in names and QKV not in [p.name for p in parts]
    assert locate_parameter("vjepa2.encoder.layer.2.mlp.fc2.weight", config) == (2, "output", "vjepa2.encoder.layer.2.mlp.fc2")
    assert locate_parameter("vjepa2.encoder.layer.0.norm1.bias", config)[:2] == (0, "layernorm_before")
    assert locate_parameter("pooler.self_attention_layers.0.mlp.fc1.weight", config)[:2] == (-1, POOLER)
    assert locate_parameter("vjepa2.encoder.embeddings.patch_embeddings.proj.weight", config)[:2] == (-1, "embeddings")
    model.set_attn_implementation("eager")
    assert {m.attn_implementation for m in model._attention_modules()} == {"eager"}
    assert len(model._attention_modules()) == config.attention_blocks


def test_exports_run_the_model_on_every_cpu_backend_and_through_torch_export(tmp_path):
    """fp32 on PyTorch, ONNX Runtime and OpenVINO within 1e-4 of transformers; fp16 and an int8 file (calibrated on
    videos; the probe stays float, as the classifier) pass their checks; torch.export takes the model."""
    from vivit_deploy.demo import SAMPLES
    from vivit_deploy.export import export_onnx
    from vivit_deploy.runtimes import load_runtime

    theirs = theirs_saved(tmp_path / "ckpt", num_hidden_layers=4)
    report = export_onnx(tmp_path / "ckpt", tmp_path / "m.onnx")
    assert report.passed, report.format()
    assert "6 MatMul -> Softmax -> MatMul blocks" in report.format()  # 4 layers, the probe's self- and cross-attention
    x = clips(theirs.config, n=3)
    with torch.no_grad():
        expected = theirs(x).logits.numpy()
    backends = ["torch", "onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for backend in backends:
        with load_runtime(tmp_path / ("ckpt" if backend == "torch" else "m.onnx"), backend, device="cpu") as runtime:
            assert runtime.config.model_type == "vjepa2"
            np.testing.assert_allclose(runtime.run(x.numpy()), expected, atol=1e-4)
    int8 = export_onnx(tmp_path / "ckpt", tmp_path / "i8.onnx", precision="int8", calibration=SAMPLES,
                       calibration_clips=4)
    assert int8.passed and "16 weight MatMuls read int8 Q/DQ" in int8.format(), int8.format()
    fp16 = export_onnx(tmp_path / "ckpt", tmp_path / "h.onnx", precision="fp16", keep_fp32="head")
    assert fp16.passed, fp16.format()
    exported = torch.export.export(load_model(tmp_path / "ckpt"), (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x).logits, torch.from_numpy(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_tensorrt_for_rtx_builds_it_and_fuses_every_attention_block(tmp_path):
    """NVIDIA's parser and builder (no GPU needed) take the fp16 file; every attention block fuses: the encoder's
    (rotary Q and K feed them) and the probe's."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed: pip install 'vivit-deploy[tensorrt-rtx]'")
    from vivit_deploy.export import export_onnx
    from vivit_deploy.export.trt_build import build_engine

    theirs_saved(tmp_path / "ckpt", hidden_size=96, num_attention_heads=4)
    onnx_file = export_onnx(tmp_path / "ckpt", tmp_path / "m-fp16.onnx", precision="fp16").path
    report = build_engine(onnx_file, tmp_path / "m.engine", trt="rtx", compute_capabilities="8.9")
    assert report.attention_blocks == 5, report.format()
    assert len(report.fused_attention) == 5, report.format()
