"""VideoMAE as one model file: transformers' parameter names, its checkpoints of transformers 4 and 5, the same outputs
as transformers' VideoMAEForVideoClassification and VideoMAEModel on random weights, and one-line errors for
checkpoints that do not fit."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from vivit_deploy.errors import CheckpointError, ConfigError
from tests.conftest import assert_outputs_equal, transformers_saved
from vivit_deploy.model.checkpoint import load_model

transformers = pytest.importorskip("transformers", reason="transformers (the parity reference) is not installed")

SMALL = dict(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=4, intermediate_size=64, num_labels=3)
CASES = {
    "mean-pooling": {},
    "first-token": {"use_mean_pooling": False},
    "tubelet-4": {"num_frames": 8, "tubelet_size": 4},
    "not-square": {"image_size": [32, 48]},
    "no-qv-bias": {"qv_bias": False, "hidden_act": "gelu_new"},
}


def theirs_saved(tmp_path, base: bool = False, **overrides):
    """transformers' VideoMAE with random weights (larger than its initialiser's, so every part shows), saved."""
    cls = transformers.VideoMAEModel if base else transformers.VideoMAEForVideoClassification
    return transformers_saved(cls, transformers.VideoMAEConfig(**{**SMALL, **overrides}), tmp_path,
                              attn_implementation="eager")


def clips(config, n: int = 2, seed: int = 0) -> torch.Tensor:
    h, w = (config.image_size, config.image_size) if isinstance(config.image_size, int) else config.image_size
    return torch.randn(n, config.num_frames, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_logits_hidden_states_and_attentions_equal_transformers(overrides, tmp_path):
    from vivit_deploy import VideoMAEForVideoClassification

    theirs = theirs_saved(tmp_path, **overrides)
    ours = load_model(tmp_path)
    assert type(ours) is VideoMAEForVideoClassification and ours.config.model_type == "videomae"
    x = clips(theirs.config)
    with torch.no_grad():
        expected = theirs(x, output_hidden_states=True, output_attentions=True)
        mine = ours(x, output_hidden_states=True, output_attentions=True)
        fast = VideoMAEForVideoClassification.from_pretrained(tmp_path)(x).logits  # SDPA, the default path
    assert_outputs_equal(mine, expected)
    torch.testing.assert_close(fast, expected.logits, atol=1e-5, rtol=1e-5)


def test_the_bare_encoder_and_labels_losses_equal_transformers(tmp_path):
    theirs = theirs_saved(tmp_path / "base", base=True, use_mean_pooling=False)
    ours = load_model(tmp_path / "base")
    assert type(ours).__name__ == "VideoMAEModel"
    x = clips(theirs.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).last_hidden_state, theirs(x).last_hidden_state, atol=1e-5, rtol=1e-5)
    classifier = theirs_saved(tmp_path / "cls")
    mine = load_model(tmp_path / "cls")
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(mine(x, labels=labels).loss, classifier(x, labels=labels).loss, atol=1e-5, rtol=1e-5)
    base_of_classifier = load_model(tmp_path / "cls", head="base")  # a classifier's checkpoint read as the encoder
    with torch.no_grad():
        torch.testing.assert_close(base_of_classifier(x).last_hidden_state,
                                   classifier.videomae(x).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_a_transformers_4_checkpoint_with_q_and_v_bias_parameters_loads(tmp_path):
    """transformers 4 kept the query and value biases as ``q_bias``/``v_bias``; 5 keeps them in the Linear layers."""
    from safetensors.torch import load_file, save_file

    theirs = theirs_saved(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    old = {k.replace("attention.attention.query.bias", "attention.attention.q_bias")
            .replace("attention.attention.value.bias", "attention.attention.v_bias"): v for k, v in state.items()}
    assert any(k.endswith("q_bias") for k in old)
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    x = clips(theirs.config)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(x).logits, theirs(x).logits, atol=1e-5, rtol=1e-5)


def test_our_checkpoint_is_one_transformers_loads(tmp_path):
    theirs = theirs_saved(tmp_path / "t", use_mean_pooling=False)
    ours = load_model(tmp_path / "t")
    ours.save_pretrained(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["model_type"] == "videomae" and written["tubelet_size"] == 2 and written["patch_size"] == 8
    again = transformers.VideoMAEForVideoClassification.from_pretrained(tmp_path / "ours").eval()
    x = clips(theirs.config)
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, theirs(x).logits, atol=1e-6, rtol=1e-6)


def test_checkpoints_that_do_not_fit_are_one_line_errors(tmp_path):
    theirs_saved(tmp_path / "v")
    vivit = transformers.VivitForVideoClassification(transformers.VivitConfig(
        image_size=32, num_frames=4, tubelet_size=[2, 8, 8], hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=3))
    vivit.save_pretrained(tmp_path / "vivit")
    mixed = tmp_path / "mixed"  # a VideoMAE config.json with ViViT's weights
    mixed.mkdir()
    (mixed / "config.json").write_text((tmp_path / "v" / "config.json").read_text())
    (mixed / "model.safetensors").write_bytes((tmp_path / "vivit" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="weights do not fit the model in config.json; missing keys: .*videomae") as e:
        load_model(mixed)
    assert "\n" not in str(e.value)
    config = json.loads((tmp_path / "v" / "config.json").read_text())
    (mixed / "config.json").write_text(json.dumps({**config, "model_type": "videomae_v3"}))
    with pytest.raises(ConfigError, match="model_type 'videomae_v3' is not a model vivit_deploy computes"):
        load_model(mixed)


def test_another_geometry_computes_its_own_sinusoidal_table(tmp_path):
    from vivit_deploy.model.videomae import sinusoid_table

    theirs = theirs_saved(tmp_path)
    ours = load_model(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = transformers.models.videomae.modeling_videomae.get_sinusoid_encoding_table(24, 32)
    torch.testing.assert_close(sinusoid_table(24, 32), reference, atol=0, rtol=0)
    longer = ours.at_geometry(num_frames=8)
    assert longer.config.num_frames == 8 and longer.videomae.embeddings.position_embeddings.shape == (1, 64, 32)
    config = transformers.VideoMAEConfig(**{**SMALL, "num_frames": 8})
    bigger = transformers.VideoMAEForVideoClassification(config).eval()
    bigger.load_state_dict(theirs.state_dict(), strict=False)  # the same weights; positions are not weights
    x = clips(config)
    with torch.no_grad():
        torch.testing.assert_close(longer(x).logits, bigger(x).logits, atol=1e-5, rtol=1e-5)
    assert ours.at_geometry() is ours
    np.testing.assert_array_equal(ours.config.grid, (2, 4, 4))


def test_a_videomae_checkpoint_exports_and_runs_on_every_cpu_backend_and_through_predict(tmp_path):
    """The same commands as for ViViT: vivit-export (fp32, and int8 calibrated on videos), the runtimes, predict with
    the checkpoint's own VideoMAE processor file."""
    import importlib.util

    from click.testing import CliRunner

    from vivit_deploy.cli import main
    from vivit_deploy.demo import SAMPLES, default_sample
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.video.reading import read_video

    theirs = theirs_saved(tmp_path / "ckpt")
    processor = transformers.VideoMAEImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path / "ckpt")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "probe points: 12 hidden states" in result.stdout
    x = clips(theirs.config, n=3).numpy()
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).logits.numpy()
    backends = ["torch", "onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for backend in backends:
        source = tmp_path / ("ckpt" if backend == "torch" else "m.onnx")
        with load_runtime(source, backend, device="cpu") as runtime:
            assert runtime.config.model_type == "videomae" and runtime.preprocessor.processor_type.startswith("VideoMAE")
            np.testing.assert_allclose(runtime.run(x), expected, atol=1e-4)
    # a video through predict: our reader's frames, preprocessed by transformers' own VideoMAE processor and run by
    # transformers' model, against predict with the checkpoint (our processor, read from its file) and the file
    video = default_sample()
    frames = read_video(video, theirs.config.num_frames, sampling="uniform")
    pixels = processor(list(frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = torch.softmax(theirs(pixels).logits, -1)[0].numpy()
    for model in (tmp_path / "ckpt", tmp_path / "m.onnx"):
        result = CliRunner().invoke(main, ["predict", str(video), "--model", str(model), "--json", "-", "--top-k", "3"])
        assert result.exit_code == 0, result.output
        top = json.loads(result.stdout)[0]["predictions"]
        assert top[0]["label"] == theirs.config.id2label[int(want.argmax())]
        assert abs(top[0]["probability"] - float(want.max())) < 1e-4
    result = CliRunner().invoke(main, ["export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "i8.onnx"), "--precision",
                                       "int8", "--calibration", str(SAMPLES)])
    assert result.exit_code == 0, result.output
    assert "weight MatMuls read int8 Q/DQ" in result.stdout
