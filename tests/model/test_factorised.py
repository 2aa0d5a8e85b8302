"""Models 2 and 3 (factorised encoder, factorised self-attention): parity with vit-pytorch, the converter and its
refusals, every export path, per-layer drift, and Model 2's streams that encode each time step once."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import FACTORISED, factorised_checkpoint, requires_rtx
from vivit_deploy.accuracy.inputs import random_inputs
from vivit_deploy.cli import export_command, main
from vivit_deploy.errors import ConfigError
from vivit_deploy.export import export_onnx
from vivit_deploy.model.checkpoint import load_config, load_model
from vivit_deploy.model.config import VivitConfig, preset
from vivit_deploy.convert.vit_pytorch import config_from_args, convert
from vivit_deploy.runtimes import load_runtime

ARGS = dict(image_size=32, image_patch_size=8, frames=8, frame_patch_size=2, num_classes=5, dim=32, spatial_depth=2,
            temporal_depth=1, heads=4, mlp_dim=64, dim_head=16)


def _vit_pytorch_vivit():
    """vit_pytorch/vivit.py, loaded alone: the package's __init__ imports torchvision (for other models), which does
    not import beside a CPU build of torch; ViViT itself needs torch and einops only."""
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or importlib.util.find_spec("einops") is None:
        pytest.skip("vit-pytorch and einops are not installed (pip install --no-deps vit-pytorch einops)")
    path = Path(spec.submodule_search_locations[0]) / "vivit.py"
    module_spec = importlib.util.spec_from_file_location("vit_pytorch_vivit", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _vit_pytorch_checkpoint(directory: Path, seed: int = 0, **changes) -> tuple[Path, Path, torch.nn.Module]:
    """A vit-pytorch ViViT with random weights (LayerNorms too): its arguments and state_dict as a user saves them."""
    vivit = _vit_pytorch_vivit()
    args = {**ARGS, **changes}
    torch.manual_seed(seed)
    model = vivit.ViViT(**args).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "args.json").write_text(json.dumps(args))
    torch.save(model.state_dict(), directory / "weights.pt")
    return directory / "args.json", directory / "weights.pt", model


# ---- parity with vit-pytorch --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["factorized_encoder", "factorized_self_attention"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_converted_checkpoints_give_vit_pytorchs_logits(tmp_path, variant, pool):
    changes = dict(variant=variant, pool=pool)
    if variant == "factorized_self_attention":
        changes["temporal_depth"] = ARGS["spatial_depth"]
    args, weights, reference = _vit_pytorch_checkpoint(tmp_path / "vp", **changes)
    result = CliRunner().invoke(main, ["convert", "vit-pytorch", "--args", str(args), "--weights", str(weights),
                                       "-o", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "ckpt")
    x = torch.randn(3, 8, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x.permute(0, 2, 1, 3, 4))  # vit-pytorch takes (B, C, T, H, W)
        got = model(x).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    config = load_config(tmp_path / "ckpt")
    assert config.variant == variant.replace("factorized", "factorised") and config.pooling == pool
    assert config.extra["converted_from"] == "vit-pytorch"
    note = json.loads((tmp_path / "ckpt" / "preprocessor_config.json").read_text())["note"]
    assert "transformers' defaults" in note  # and says so
    with load_runtime(tmp_path / "ckpt", "torch", device="cpu") as runtime:  # the runtime contract's path
        np.testing.assert_allclose(runtime.run(x.numpy()), expected.numpy(), atol=1e-5)


def test_one_head_as_wide_as_the_tokens_has_no_output_projection_in_vit_pytorch(tmp_path):
    args, weights, reference = _vit_pytorch_checkpoint(tmp_path, heads=1, dim_head=32)
    convert(args, weights, tmp_path / "ckpt")
    x = torch.randn(2, 8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "ckpt")(x).logits, reference(x.permute(0, 2, 1, 3, 4)),
                                   atol=1e-5, rtol=0)


# ---- bad checkpoints are one-line errors ---------------------------------------------------------------------------

def _convert(args, weights, out):
    result = CliRunner().invoke(main, ["convert", "vit-pytorch", "--args", str(args), "--weights", str(weights),
                                       "-o", str(out)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert not (Path(out) / "model.safetensors").exists()
    return errors[0]


def test_bad_vit_pytorch_checkpoints_are_one_line_errors(tmp_path):
    encoder_args, encoder_weights, _ = _vit_pytorch_checkpoint(tmp_path / "fe")
    fsa_args, fsa_weights, _ = _vit_pytorch_checkpoint(tmp_path / "fsa", variant="factorized_self_attention",
                                                       temporal_depth=2)
    out = tmp_path / "out"
    assert "hold factorized_transformer.layers.0.0.norm.bias (and 33 more) of the other variant, but the arguments say " \
           "variant='factorized_encoder'" in _convert(encoder_args, fsa_weights, out)
    assert "of the other variant" in _convert(fsa_args, encoder_weights, out)
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**ARGS, "dim": 64}))
    assert "weights have other shapes than the arguments give: mlp_head.weight (weights (5, 32), arguments (5, 64))" \
        in _convert(wider, encoder_weights, out)
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({**ARGS, "heads": 2}))
    assert "to_qkv.weight has shape (192, 32); the arguments give 2 heads of 16" in _convert(heads, encoder_weights, out)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({**ARGS, "depth": 3}))
    assert "ViViT(...) takes no argument depth" in _convert(unknown, encoder_weights, out)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    assert "not a state dict torch.load can read with weights_only=True" in _convert(encoder_args, junk, out)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # the model object rather than its state_dict
    assert "it holds torch.nn.modules.linear.Linear, not only tensors: save model.state_dict(), not the model" in \
        _convert(encoder_args, tmp_path / "module.pt", out)
    state = torch.load(encoder_weights, weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pt")
    assert "1 weights the arguments do not explain (extra.weight)" in _convert(encoder_args, tmp_path / "extra.pt", out)
    del state["extra.weight"], state["mlp_head.bias"]
    torch.save(state, tmp_path / "missing.pt")
    assert "the arguments' model has weights the file lacks (classifier.bias)" in _convert(
        encoder_args, tmp_path / "missing.pt", out)


def test_configs_of_the_variants_check_themselves():
    with pytest.raises(ConfigError, match="temporal_layers >= 1"):
        VivitConfig(variant="factorised_encoder")
    with pytest.raises(ConfigError, match="Model 1 .variant 'joint'. pools its CLS token"):
        VivitConfig(pooling="mean")
    with pytest.raises(ConfigError, match="take whole tubelets"):
        VivitConfig(variant="factorised_self_attention", num_frames=31)
    with pytest.raises(ConfigError, match="spatial_depth == temporal_depth"):
        config_from_args({**ARGS, "variant": "factorized_self_attention", "temporal_depth": 3})
    config = preset("vivit-b-fe")
    assert config.num_layers == 16 and config.layer_title(12) == "temporal layer 0" and config.attention_layers == 16
    assert VivitConfig.from_dict(config.to_dict()) == config and config.to_dict()["model_type"] == "vivit_factorised"
    model1 = preset("vivit-b-16x2").to_dict()
    assert "variant" not in model1 and model1["model_type"] == "vivit"  # transformers' config.json, as before
    fsa = preset("vivit-b-fsa")
    assert fsa.num_layers == 24 and fsa.layer_kind(0) == "space" and fsa.layer_title(3) == "block 1, time"


def test_flops_per_variant_follow_the_sequences_each_attends_over():
    joint, encoder, fsa = preset("vivit-b-16x2"), preset("vivit-b-fe"), preset("vivit-b-fsa")
    assert joint.flops_per_clip() == pytest.approx(903.05e9, rel=1e-4)  # unchanged: 12 layers over 3137 tokens
    d, m = 768, 3072
    spatial = 16 * (2 * 197 * 4 * d * d + 4 * 197 * 197 * d) + 2 * 16 * 197 * 2 * d * m  # one layer, 16 steps
    temporal = 2 * 17 * 4 * d * d + 4 * 17 * 17 * d + 2 * 17 * 2 * d * m
    embed, head = 2 * 16 * 196 * d * 3 * 2 * 16 * 16, 2 * d * 400
    assert encoder.flops_per_clip() == pytest.approx(embed + 12 * spatial + 4 * temporal + head)
    assert encoder.flops_per_clip() < fsa.flops_per_clip() < joint.flops_per_clip()


# ---- every path Model 1 has ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(FACTORISED))
@pytest.mark.slow
def test_fp16_and_int8_exports_pass_and_run_on_every_cpu_backend(variant, factorised_checkpoints, tmp_path):
    checkpoint = factorised_checkpoints[variant]
    config = load_config(checkpoint)
    calibration = tmp_path / "calibration.npz"
    random_inputs(config, 16, seed=1).save(calibration)
    fp16 = export_onnx(checkpoint, tmp_path / "fp16.onnx", precision="fp16")
    int8 = export_onnx(checkpoint, tmp_path / "int8.onnx", precision="int8", calibration=calibration)
    assert fp16.passed and int8.passed
    assert fp16.summary.attention_blocks == config.num_layers  # one attention block per layer, each fusable
    layers_with_mlp = sum(config.layer_kind(i) != "space" for i in range(config.num_layers))
    assert int8.summary.quantized_matmuls == 2 * config.num_layers + 2 * layers_with_mlp
    x = random_inputs(config, 2, seed=3).pixel_values
    with load_runtime(checkpoint, "torch", device="cpu") as reference:
        expected = reference.run(x)
    for path, atol in ((tmp_path / "fp16.onnx", 5e-2), (tmp_path / "int8.onnx", 0.2)):
        for backend in ("onnxruntime", "openvino"):
            if backend == "openvino" and importlib.util.find_spec("openvino") is None:
                continue
            with load_runtime(path, backend) as runtime:
                np.testing.assert_allclose(runtime.run(x), expected, atol=atol)


@requires_rtx
@pytest.mark.parametrize("variant", list(FACTORISED))
@pytest.mark.slow
def test_tensorrt_for_rtx_builds_each_variant_and_says_what_fused(variant, factorised_checkpoints, tmp_path):
    from vivit_deploy.export.trt_build import build_engine

    config = load_config(factorised_checkpoints[variant])
    export_onnx(factorised_checkpoints[variant], tmp_path / "fp16.onnx", precision="fp16", max_batch=4)
    report = build_engine(tmp_path / "fp16.onnx", tmp_path / "m.engine", trt="rtx", compute_capabilities="8.9",
                          max_batch=4)
    # every layer's attention (over space or over time) is found, and NVIDIA's builder fuses each into one kernel
    assert report.attention_blocks == config.num_layers and len(report.fused_attention) == config.num_layers
    assert f"attention: {config.num_layers} of {config.num_layers} blocks fused into one kernel" in report.format()


@pytest.mark.slow
def test_keep_fp32_units_fit_each_variant(factorised_checkpoints, tmp_path):
    fsa, fe = factorised_checkpoints["factorised_self_attention"], factorised_checkpoints["factorised_encoder"]
    result = CliRunner().invoke(export_command, [str(fsa), "-o", str(tmp_path / "m.onnx"), "--precision", "fp16",
                                                 "--keep-fp32", "0.mlp"])
    assert result.exit_code != 0 and "layer 0 (block 0, space) attends over space and has no MLP; the block's MLP is " \
                                      "in layer 1" in result.stderr
    result = CliRunner().invoke(export_command, [str(fsa), "-o", str(tmp_path / "m.onnx"), "--precision", "fp16",
                                                 "--keep-fp32", "spatial_norm"])
    assert result.exit_code != 0 and "only the factorised encoder (Model 2) has a spatial norm" in result.stderr
    report = export_onnx(fsa, tmp_path / "a.onnx", precision="fp16", keep_fp32="0,1.mlp,head")
    assert report.passed and report.kept_fp32 == ("0", "1.mlp", "head")
    report = export_onnx(fe, tmp_path / "b.onnx", precision="fp16", keep_fp32="head,spatial_norm,2,embeddings")
    assert report.passed and report.kept_fp32 == ("embeddings", "spatial_norm", "2", "head")


@pytest.mark.slow
def test_compare_layers_names_the_layers_of_each_variant(factorised_checkpoints, factorised_onnx):
    from vivit_deploy.accuracy.layers import layer_drift
    from vivit_deploy.accuracy.tolerances import tolerance_for

    for variant, checkpoint in factorised_checkpoints.items():
        config = load_config(checkpoint)
        x = random_inputs(config, 2).pixel_values
        with load_runtime(checkpoint, "torch", device="cpu", probes=True) as reference, \
                load_runtime(factorised_onnx[variant], probes=True) as candidate:
            report = layer_drift(reference, candidate, x, tolerance_for("fp32"))
        assert report.passed and len(report.layers) == config.num_layers
        table = report.format_table()
        if variant == "factorised_encoder":
            assert "2 (temporal layer 0)" in table and "spatial norm" in table and report.spatial_norm.cosine > 0.99999
        else:
            assert "0 (block 0, space)" in table and set(report.layers[0].parts) == {"layernorm_before", "attention",
                                                                                      "block"}


@pytest.mark.slow
def test_every_command_takes_a_converted_checkpoint(factorised_checkpoints, factorised_onnx, tmp_path):
    from vivit_deploy.demo import sample_videos

    video = str(sample_videos()[0][0])
    checkpoint = str(factorised_checkpoints["factorised_encoder"])
    onnx_file = str(factorised_onnx["factorised_self_attention"])
    for args in (["predict", video, "--model", checkpoint, "--json", "-"],
                 ["predict", video, "--model", onnx_file, "--backend", "openvino", "--json", "-"],
                 ["classify", video, "--model", onnx_file, "-o", str(tmp_path / "r.jsonl")],
                 ["compare", "--model", checkpoint, "--torch", "bf16", "--samples", "2"],
                 ["triton-repo", onnx_file, "-o", str(tmp_path / "repo"), "--platform", "python", "--no-ensemble"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
    assert (tmp_path / "repo" / "vivit" / "config.pbtxt").is_file()
    result = CliRunner().invoke(main, ["predict", video, "--model", checkpoint, "--frames", "4"])
    assert result.exit_code != 0 and "run at the geometry they were trained at" in result.stderr


# ---- Model 2's streams encode each time step once ------------------------------------------------------------------

@pytest.fixture(scope="module")
def reusable_model2(tmp_path_factory) -> dict[str, Path]:
    """Model 2 with the paper's separate positions, and its int8 export (with its two part files)."""
    directory = factorised_checkpoint(tmp_path_factory.mktemp("model2"), "factorised_encoder", positions="separate")
    calibration = directory / "calibration.npz"
    random_inputs(load_config(directory), 16, seed=1).save(calibration)
    report = export_onnx(directory, directory / "int8.onnx", precision="int8", calibration=calibration)
    assert [Path(p).name for p in report.step_parts] == ["int8.steps.onnx", "int8.windows.onnx"]
    return {"torch": directory, "onnxruntime": directory / "int8.onnx", "openvino": directory / "int8.onnx"}


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
@pytest.mark.slow
def test_a_stream_that_reuses_steps_gives_the_recomputed_windows(reusable_model2, backend, tmp_path):
    if backend == "openvino":
        pytest.importorskip("openvino")
    from vivit_deploy.demo.motion import write_phases
    from vivit_deploy.streaming import StreamClassifier

    video = write_phases(tmp_path / "stream.mp4", [(0, 1), (2, 1), (1, 1)], fps=8)  # 6 s, read as a stream
    with load_runtime(reusable_model2[backend], backend, device="cpu") as runtime:
        parts = runtime.step_parts()
        assert parts is not None and (parts.step_frames, parts.steps_per_window) == (2, 4)
        runs = {}
        for reuse in (True, False):
            classifier = StreamClassifier(runtime, [str(video)], window=2.0, hop=0.5, reuse=reuse, top_k=4)
            records = [r for r in classifier if "window" in r]
            runs[reuse] = (records, classifier.summary()[str(video)])
    (cached, summary), (recomputed, plain) = runs[True], runs[False]
    assert len(cached) == len(recomputed) == 9
    for a, b in zip(cached, recomputed):
        assert (a["start"], a["end"], a["label"]) == (b["start"], b["end"], b["label"])
        np.testing.assert_allclose([p["probability"] for p in a["top_k"]], [p["probability"] for p in b["top_k"]],
                                   atol=1e-6)
    # 2 s windows of 4 steps every 0.5 s (one step): the first window encodes 4, every later one 1
    assert summary["encoded_steps"] == 4 + 8 and summary["reused_steps"] == 9 * 4 - 12
    assert "encoded_steps" not in plain


@pytest.mark.slow
def test_windows_taken_together_encode_their_shared_steps_once(reusable_model2):
    from vivit_deploy.streaming import StreamClassifier
    from vivit_deploy.streaming.windows import Window

    with load_runtime(reusable_model2["torch"], "torch", device="cpu") as runtime:
        source = "rtsp://127.0.0.1:9/never-opened"
        classifier = StreamClassifier(runtime, [source], window=2.0, hop=0.5)  # 8 frames of 4 steps, 1 step a hop
        rng = np.random.default_rng(0)
        frames = [rng.standard_normal(runtime.config.input_shape[1:]).astype(np.float32) for _ in range(10)]
        windows = [Window(index=i, start=i / 2, end=i / 2 + 2, times=[], frames=frames[2 * i:2 * i + 8]) for i in (0, 1)]
        logits = classifier._logits_from_steps([(source, w, 0) for w in windows])
        stats = classifier.stats[source]
        assert (stats.encoded_steps, stats.reused_steps) == (4 + 1, 3)  # the second window shares 3 of its 4 steps
        np.testing.assert_allclose(logits, runtime.run(np.stack([np.stack(w.frames) for w in windows])), atol=1e-5)


@pytest.mark.slow
def test_a_file_for_one_clip_at_a_time_gets_its_parts_too(reusable_model2, tmp_path):
    # the parts are traced at 2 windows: a whole model limited to batch 1 must not make that example out of range
    report = export_onnx(reusable_model2["torch"], tmp_path / "one.onnx", max_batch=1)
    assert [Path(p).name for p in report.step_parts] == ["one.steps.onnx", "one.windows.onnx"]
    with load_runtime(tmp_path / "one.onnx") as runtime:
        clip = np.random.default_rng(0).standard_normal((1, *runtime.config.input_shape)).astype(np.float32)
        parts = runtime.step_parts()
        steps = clip.reshape(-1, parts.step_frames, *clip.shape[2:])
        np.testing.assert_allclose(parts.classify(parts.encode(steps)[None]), runtime.run(clip), atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.slow
def test_parts_are_only_taken_with_their_own_file(reusable_model2, backend, tmp_path):
    import shutil

    if backend == "openvino":
        pytest.importorskip("openvino")

    from vivit_deploy.errors import ModelFileError

    source = reusable_model2[backend]
    for name in (source.name, "int8.steps.onnx", "int8.windows.onnx"):
        shutil.copy(source.parent / name, tmp_path / name)
    with load_runtime(tmp_path / source.name, backend) as runtime:
        assert runtime.step_parts() is not None
    import onnx

    changed = onnx.load(tmp_path / source.name)
    changed.doc_string = "edited after export"  # still a valid model, but no longer the file the parts came with
    onnx.save(changed, tmp_path / source.name)
    with load_runtime(tmp_path / source.name, backend) as runtime, \
            pytest.raises(ModelFileError, match="belongs to another export"):
        runtime.step_parts()
    (tmp_path / "int8.steps.onnx").unlink()
    with load_runtime(tmp_path / source.name, backend) as runtime:
        assert runtime.step_parts() is None  # no parts: the stream encodes windows whole


def test_models_whose_steps_depend_on_their_place_encode_windows_whole(factorised_checkpoints):
    with load_runtime(factorised_checkpoints["factorised_encoder"], "torch", device="cpu") as runtime:
        assert runtime.config.positions == "per_step" and runtime.step_parts() is None
    with pytest.raises(ConfigError, match="depend on its index in the clip"):
        load_model(factorised_checkpoints["factorised_encoder"]).step_tokens(torch.zeros(1, 2, 3, 32, 32))


@pytest.mark.slow
def test_a_model_and_its_parts_appear_together_or_not_at_all(tmp_path, monkeypatch):
    """The parts are staged and validated before anything is moved in: a part that fails leaves neither the whole
    model nor a part (before, the whole model was in place first and a stream then encoded whole windows quietly)."""
    import vivit_deploy.runtimes.ort_runtime as ort_runtime

    directory = factorised_checkpoint(tmp_path / "model2", "factorised_encoder", positions="separate")
    out = tmp_path / "out"
    out.mkdir()

    def broken_session(*args, **kwargs):
        raise RuntimeError("the parts' session could not start")

    monkeypatch.setattr(ort_runtime, "cpu_session", broken_session)
    with pytest.raises(RuntimeError, match="could not start"):
        export_onnx(directory, out / "m.onnx")
    assert list(out.iterdir()) == []  # no model, no part, no staged file left behind


def test_publish_moves_every_file_or_none(tmp_path):
    from vivit_deploy.files import publish

    (tmp_path / "model.onnx").write_text("old model")
    (tmp_path / ".staged-model").write_text("new model")
    (tmp_path / ".staged-part").write_text("new part")
    with pytest.raises(FileNotFoundError):  # the second move's source is missing: the first is undone
        publish([(tmp_path / ".staged-part", tmp_path / "model.steps.onnx"),
                 (tmp_path / ".missing", tmp_path / "model.windows.onnx"),
                 (tmp_path / ".staged-model", tmp_path / "model.onnx")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert (tmp_path / "model.onnx").read_text() == "old model"
    (tmp_path / ".staged-model").write_text("new model")
    (tmp_path / ".staged-part").write_text("new part")
    publish([(tmp_path / ".staged-part", tmp_path / "model.steps.onnx"), (tmp_path / ".staged-model", tmp_path / "model.onnx")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.steps.onnx"]
    assert (tmp_path / "model.onnx").read_text() == "new model"
