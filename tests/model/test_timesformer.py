"""TimeSformer as one model file: transformers' parameter names and checkpoints, the same outputs as transformers'
TimesformerForVideoClassification and TimesformerModel on random weights for every attention type, and exports
that every CPU backend runs."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from vivit_deploy.errors import ConfigError
from tests.conftest import assert_outputs_equal, transformers_saved
from vivit_deploy.model.checkpoint import load_model

transformers = pytest.importorskip("transformers", reason="transformers (the parity reference) is not installed")

SMALL = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, num_labels=3)
ATTENTION = ["divided_space_time", "joint_space_time", "space_only"]


def theirs_saved(tmp_path, base: bool = False, **overrides):
    cls = transformers.TimesformerModel if base else transformers.TimesformerForVideoClassification
    return transformers_saved(cls, transformers.TimesformerConfig(**{**SMALL, **overrides}), tmp_path)


def clips(config, n: int = 2) -> torch.Tensor:
    return torch.randn(n, config.num_frames, 3, config.image_size, config.image_size,
                       generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("attention_type", ATTENTION)
def test_logits_hidden_states_attentions_and_loss_equal_transformers(attention_type, tmp_path):
    from vivit_deploy import TimesformerForVideoClassification

    theirs = theirs_saved(tmp_path, attention_type=attention_type)
    ours = load_model(tmp_path, attn_implementation="eager")
    assert type(ours) is TimesformerForVideoClassification and ours.config.attention_type == attention_type
    x, labels = clips(theirs.config), None
    if attention_type != "space_only":
        labels = torch.tensor([0, 2])
    with torch.no_grad():
        expected = theirs(x, labels=labels, output_hidden_states=True, output_attentions=True)
        mine = ours(x, labels=labels, output_hidden_states=True, output_attentions=True)
        fast = load_model(tmp_path)(x).logits  # SDPA
    assert_outputs_equal(mine, expected)
    torch.testing.assert_close(fast, expected.logits, atol=1e-5, rtol=1e-5)
    if labels is not None:
        torch.testing.assert_close(mine.loss, expected.loss, atol=1e-5, rtol=1e-5)


def test_the_bare_encoder_and_our_checkpoint_round_trip(tmp_path):
    theirs = theirs_saved(tmp_path / "base", base=True)
    ours = load_model(tmp_path / "base")
    assert type(ours).__name__ == "TimesformerModel"
    x = clips(theirs.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).last_hidden_state, theirs(x).last_hidden_state, atol=1e-5, rtol=1e-5)
    classifier = theirs_saved(tmp_path / "cls", attention_type="joint_space_time")
    load_model(tmp_path / "cls").save_pretrained(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["model_type"] == "timesformer" and written["patch_size"] == 8 and "tubelet_size" not in written
    again = transformers.TimesformerForVideoClassification.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, classifier(x).logits, atol=1e-6, rtol=1e-6)


def test_space_only_pools_its_per_frame_logits_into_one_row_per_clip(tmp_path):
    """transformers' "space_only" gives a row of logits per frame; every tool here takes a row per clip: the mean of
    the clip's frames (what the exported file and the runtimes return)."""
    theirs = theirs_saved(tmp_path, attention_type="space_only")
    ours = load_model(tmp_path)
    x = clips(theirs.config)
    with torch.no_grad():
        per_frame = theirs(x).logits
        assert per_frame.shape == (2 * 4, 3)
        torch.testing.assert_close(ours.clip_logits(x), per_frame.reshape(2, 4, 3).mean(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention_type", ATTENTION)
def test_exports_run_the_model_on_every_cpu_backend(attention_type, tmp_path):
    from vivit_deploy.export import export_onnx
    from vivit_deploy.runtimes import load_runtime

    theirs = theirs_saved(tmp_path / "ckpt", attention_type=attention_type)
    report = export_onnx(tmp_path / "ckpt", tmp_path / "m.onnx")
    assert report.passed, report.format()
    x = clips(theirs.config, n=3)
    with torch.no_grad():
        expected = theirs(x).logits
    if attention_type == "space_only":
        expected = expected.reshape(3, 4, 3).mean(1)
    backends = ["torch", "onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for backend in backends:
        with load_runtime(tmp_path / ("ckpt" if backend == "torch" else "m.onnx"), backend, device="cpu") as runtime:
            assert runtime.config.model_type == "timesformer"
            np.testing.assert_allclose(runtime.run(x.numpy()), expected.numpy(), atol=1e-4)


def test_what_does_not_apply_is_a_one_line_error(tmp_path):
    theirs_saved(tmp_path)
    model = load_model(tmp_path)
    with pytest.raises(ConfigError, match="needs the same patches in every frame"):
        model.set_token_merging(4)
    with pytest.raises(ConfigError, match="attention_type must be one of"):
        from vivit_deploy import TimesformerConfig

        TimesformerConfig(attention_type="axial")


def test_another_geometry_resizes_the_positions_as_its_own_code_does(tmp_path):
    """TimeSformer's embeddings resize the space and time positions by nearest neighbour when the input differs:
    ours resizes them once (at_geometry) to the same values, and the whole model then runs there (transformers' divided
    blocks reshape by the configured frame count, so its model stops at the embeddings)."""
    theirs = theirs_saved(tmp_path)
    ours = load_model(tmp_path)
    x = torch.randn(2, 8, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    bigger = ours.at_geometry(num_frames=8, image_size=48)
    assert bigger.config.num_frames == 8 and bigger.config.grid == (8, 6, 6) and ours.config.num_frames == 4
    with torch.no_grad():
        torch.testing.assert_close(bigger.timesformer.embeddings(x), theirs.timesformer.embeddings(x), atol=0, rtol=0)
        assert bigger(x).logits.shape == (2, 3)
    assert ours.at_geometry() is ours


@pytest.mark.slow
@pytest.mark.parametrize("family", ["videomae", "timesformer"])
def test_tensorrt_for_rtx_builds_both_models_and_fuses_every_attention_block(family, tmp_path):
    """NVIDIA's parser and builder (no GPU needed) take the fp16 files of both models; the build report counts the
    attention blocks fused into one kernel: all of them (VideoMAE's 2, TimeSformer's divided 2 per layer)."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed: pip install 'vivit-deploy[tensorrt-rtx]'")
    from vivit_deploy.export import export_onnx
    from vivit_deploy.export.trt_build import build_engine

    if family == "videomae":
        config = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                             num_labels=3)
        model, blocks = transformers.VideoMAEForVideoClassification(config), 2
    else:
        config = transformers.TimesformerConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                                num_labels=3)
        model, blocks = transformers.TimesformerForVideoClassification(config), 4
    model.save_pretrained(tmp_path / "ckpt")
    onnx_file = export_onnx(tmp_path / "ckpt", tmp_path / "m-fp16.onnx", precision="fp16").path
    report = build_engine(onnx_file, tmp_path / "m.engine", trt="rtx", compute_capabilities="8.9")
    assert report.attention_blocks == blocks and len(report.fused_attention) == blocks, report.format()
