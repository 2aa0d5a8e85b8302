"""Token merging (ToMe, Bolya et al., ICLR 2023) in Model 1, against a reference written here from the paper's
description, not from the model's code: token by token, in float64, with plain loops for the matching."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vivit_deploy.errors import ConfigError
from vivit_deploy.model.checkpoint import new_model
from vivit_deploy.model.config import VivitConfig
from vivit_deploy.model.config import merged_token_counts
from vivit_deploy.model.modeling import token_merging_schedule

CONFIG = dict(num_frames=4, image_size=32, tubelet_size=(2, 8, 8), hidden_size=32, num_hidden_layers=3,
              num_attention_heads=4, intermediate_size=64)  # 2 x 4 x 4 = 32 patches + the class token


def _model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = VivitConfig(**{**CONFIG, **overrides})
    model = new_model(config).eval()
    with torch.no_grad():  # weights larger than the initialiser's, so tokens differ and the matching means something
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _gelu(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def reference_layers(sd: dict, config, x: np.ndarray, layers, schedule, proportional: bool):
    """The paper's algorithm on one sequence of tokens ``x`` (N, D), through the transformer layers ``layers`` (their
    weights under ``vivit.encoder.layer.{i}.`` of ``sd``) with r = ``schedule[j]`` in the j-th: attention over the
    tokens (each token's log size added to its scores when ``proportional``), the residual, then r pairs merged, then
    the MLP. Matching: tokens at even places form set A (the first token, the class token, never merged), odd places
    set B; each A token keeps its most similar B token by the cosine of the keys averaged over the heads; the r A tokens
    with the most similar matches merge into them; a merged token is the size-weighted mean; the A tokens left keep
    their order, then come the B tokens. Returns the tokens and each one's size (how many inputs it stands for)."""
    eps, heads = config.layer_norm_eps, config.num_attention_heads
    approximate = "tanh" if config.hidden_act in ("gelu_fast", "gelu_new", "gelu_pytorch_tanh") else "none"
    size = np.ones(len(x))
    for i, r in zip(layers, schedule):
        p = f"vivit.encoder.layer.{i}."
        h = _layer_norm(x, sd[p + "layernorm_before.weight"], sd[p + "layernorm_before.bias"], eps)
        q, k, v = (h @ sd[p + f"attention.attention.{n}.weight"].T + sd[p + f"attention.attention.{n}.bias"]
                   for n in ("query", "key", "value"))
        hd = q.shape[1] // heads
        attended = np.zeros_like(q)
        for head in range(heads):
            part = slice(head * hd, (head + 1) * hd)
            scores = q[:, part] @ k[:, part].T / math.sqrt(hd)
            if proportional:
                scores = scores + np.log(size)[None, :]
            scores = np.exp(scores - scores.max(1, keepdims=True))
            attended[:, part] = (scores / scores.sum(1, keepdims=True)) @ v[:, part]
        x = x + attended @ sd[p + "attention.output.dense.weight"].T + sd[p + "attention.output.dense.bias"]
        r = min(r, (len(x) - 1) // 2)
        if r:
            keys = k.reshape(len(k), heads, hd).mean(1)
            keys = keys / np.linalg.norm(keys, axis=1, keepdims=True)
            a_places, b_places = list(range(0, len(x), 2)), list(range(1, len(x), 2))
            best = {}
            for a in a_places[1:]:  # the class token never merges
                similarity = [float(keys[a] @ keys[b]) for b in b_places]
                j = int(np.argmax(similarity))  # the first of equal maxima
                best[a] = (similarity[j], b_places[j])
            ranked = sorted(best, key=lambda a: -best[a][0])  # stable: equal scores keep token order
            merged_a = set(ranked[:r])
            totals = {b: (x[b] * size[b], size[b]) for b in b_places}
            for a in merged_a:
                b = best[a][1]
                totals[b] = (totals[b][0] + x[a] * size[a], totals[b][1] + size[a])
            kept = [a for a in a_places if a not in merged_a]
            x = np.array([x[a] for a in kept] + [totals[b][0] / totals[b][1] for b in b_places])
            size = np.array([size[a] for a in kept] + [totals[b][1] for b in b_places])
        h = _layer_norm(x, sd[p + "layernorm_after.weight"], sd[p + "layernorm_after.bias"], eps)
        h = _gelu(h @ sd[p + "intermediate.dense.weight"].T + sd[p + "intermediate.dense.bias"], approximate)
        x = x + h @ sd[p + "output.dense.weight"].T + sd[p + "output.dense.bias"]
    return x, size


def reference_logits(model, pixel_values: torch.Tensor, schedule, proportional: bool) -> np.ndarray:
    """Model 1 by ``reference_layers``, one clip at a time, then the final norm and the classifier on the class token."""
    config = model.config
    sd = {k: v.double().numpy() for k, v in model.state_dict().items()}
    with torch.no_grad():
        tokens = model.vivit.embeddings(pixel_values).double().numpy()  # the embeddings are not what is under test
    out = []
    for x in tokens:
        x, _ = reference_layers(sd, config, x, range(config.num_hidden_layers), schedule, proportional)
        x = _layer_norm(x, sd["vivit.layernorm.weight"], sd["vivit.layernorm.bias"], config.layer_norm_eps)
        out.append(x[0] @ sd["classifier.weight"].T + sd["classifier.bias"])
    return np.array(out)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_merging_is_the_unmerged_model_bit_for_bit(attn):
    model = _model()
    model.set_attn_implementation(attn)
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        before = model(x).logits
        model.set_token_merging(0)
        assert torch.equal(model(x).logits, before)
        model.set_token_merging([0, 0])
        assert torch.equal(model(x).logits, before) and model.merge_tokens == (0, 0, 0)


@pytest.mark.parametrize("schedule", [4, 8, 16, [10, 0, 3], [2, 7]])
@pytest.mark.parametrize("proportional", [True, False])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_merge_equals_the_papers_algorithm(schedule, proportional, attn):
    model = _model(seed=1)
    model.set_attn_implementation(attn)
    model.set_token_merging(schedule, proportional_attention=proportional)
    x = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(x).logits.double().numpy()
    expected = reference_logits(model, x, model.merge_tokens, proportional)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4)


def test_each_layer_hands_on_the_token_count_its_schedule_says():
    model = _model()
    model.set_token_merging([10, 100, 3])  # 33 tokens: 10 merge, then at most half of the 22 left besides the class token
    with torch.no_grad():
        out = model(torch.randn(1, 4, 3, 32, 32), output_hidden_states=True)
    counts = merged_token_counts(33, model.merge_tokens)
    assert counts == (23, 12, 9) and [h.shape[1] for h in out.hidden_states] == [33, *counts]


def test_the_source_map_says_which_patches_each_token_holds():
    model = _model()
    model.set_token_merging(8)
    with torch.no_grad():
        sources = []
        x = model.vivit.embeddings(torch.randn(2, 4, 3, 32, 32))
        model.vivit.encoder(x, sources=sources)
    [source] = sources
    assert source.shape == (2, 33 - 8 - 8 - 8, 33)
    assert torch.equal(source.sum(1), torch.ones(2, 33))  # every input token in exactly one output token
    assert torch.equal(source[:, 0, 0], torch.ones(2))  # the class token stays first and alone


@pytest.mark.parametrize("bad, message", [
    (-1, "must not be negative"), (2.5, "takes a whole number"), ("300", "takes a whole number"), ([1, 2, 3, 4], "3 layers"),
    ([1, True], "whole numbers"), (True, "takes a whole number"),
])
def test_bad_schedules_are_one_line_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        token_merging_schedule(bad, 3)
    with pytest.raises(ConfigError, match="merge_tokens="):
        _model().set_token_merging(bad)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_model_2_merges_within_each_time_step_as_the_paper_does_and_a_stream_reuses_steps_exactly(pooling):
    config = VivitConfig(**{**CONFIG, "num_frames": 8, "variant": "factorised_encoder", "temporal_layers": 2,
                            "positions": "separate", "pooling": pooling})
    torch.manual_seed(0)
    model = new_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unmerged = model(x).logits
        model.set_token_merging(0)
        assert torch.equal(model(x).logits, unmerged)  # r = 0 is the unmerged model bit for bit
        model.set_token_merging(5)
        assert model.merge_tokens == (5, 5, 5, 0, 0)  # the spatial layers merge, the temporal ones hold a token per step
        cls = pooling == "cls"
        assert config.token_counts(model.merge_tokens) == ((12, 7, 4) if cls else (11, 6, 4)) + (4 + cls,) * 2
        steps = x.reshape(8, 2, 3, 32, 32)
        tokens = model.step_tokens(steps)  # (8 steps, D)
        embedded = model.vivit.embeddings(steps)[:, 0].double().numpy()
    sd = {k: v.double().numpy() for k, v in model.state_dict().items()}
    for step, expected in zip(embedded, tokens.numpy()):
        mine, size = reference_layers(sd, config, step, range(3), (5, 5, 5), proportional=True)
        mine = _layer_norm(mine, sd["vivit.encoder.spatial_norm.weight"], sd["vivit.encoder.spatial_norm.bias"],
                           config.layer_norm_eps)
        pooled = mine[0] if cls else (mine * size[:, None]).sum(0) / size.sum()  # the mean over the patches
        np.testing.assert_allclose(expected, pooled, atol=1e-4)
    one_by_one = torch.cat([model.step_tokens(steps[i : i + 1]) for i in range(8)]).reshape(2, 4, -1)
    with torch.no_grad():
        assert (model.window_logits(one_by_one) - model(x).logits).abs().max() < 1e-6  # a stream's reuse is exact
    with pytest.raises(ConfigError, match="temporal layers hold one token per time step"):
        model.set_token_merging([1, 1, 1, 1, 0])


def test_model_3_says_why_it_does_not_merge():
    model = new_model(VivitConfig(**{**CONFIG, "variant": "factorised_self_attention"}))
    model.set_token_merging(0)
    with pytest.raises(ConfigError, match="pairs each patch position across the frames"):
        model.set_token_merging(4)


def test_ties_merge_the_earlier_token_into_the_first_best_match():
    """Keys with exact ties: A tokens 2, 4 and 6 are equally close to B tokens 3 and 5. The earliest A token merges
    first (r = 1: token 2), into the first of its equal best matches (token 3)."""
    from vivit_deploy.model.modeling import bipartite_soft_matching

    close, far = [1.0, 0.0], [0.0, 1.0]
    metric = torch.tensor([[[0.6, 0.8], far, close, close, close, close, close]])  # token 0 is the class token
    values = torch.arange(7, dtype=torch.float32).reshape(1, 7, 1) * 10  # each token's value: its place x 10
    merged = bipartite_soft_matching(metric, 1)(values, "sum")[0, :, 0].tolist()
    assert merged == [0, 40, 60, 10, 30 + 20, 50]  # A tokens that stay (0, 4, 6), then B tokens 1, 3 (+2), 5
    merged = bipartite_soft_matching(metric, 2)(values, "sum")[0, :, 0].tolist()
    assert merged == [0, 60, 10, 30 + 20 + 40, 50]  # then token 4, into token 3 again


@pytest.mark.slow
def test_a_merged_model_2_exports_with_its_step_parts_and_runs_the_merge_on_every_cpu_backend(tmp_path):
    """Model 2 merging in its spatial encoder: the whole file and the step encoder a stream reuses steps through carry
    the merge; ONNX Runtime and OpenVINO give PyTorch's merge."""
    import importlib.util

    from vivit_deploy.artifacts.metadata import read_onnx_metadata
    from vivit_deploy.export import export_onnx
    from vivit_deploy.model.checkpoint import save_pretrained
    from vivit_deploy.runtimes import load_runtime

    config = VivitConfig(**{**CONFIG, "num_frames": 8, "variant": "factorised_encoder", "temporal_layers": 1,
                            "positions": "separate"}, id2label={0: "a", 1: "b"})
    torch.manual_seed(0)
    model = new_model(config).eval()
    save_pretrained(model, tmp_path / "checkpoint")
    report = export_onnx(tmp_path / "checkpoint", tmp_path / "m2.onnx", merge_tokens=4)
    assert report.passed and len(report.step_parts) == 2  # the parts are validated against PyTorch too
    assert read_onnx_metadata(tmp_path / "m2.onnx").merge_tokens == (4, 4, 4, 0)
    model.set_token_merging(4)
    x = np.random.default_rng(0).standard_normal((3, 8, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).logits.numpy()
    backends = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for backend in backends:
        with load_runtime(tmp_path / "m2.onnx", backend, device="cpu") as runtime:
            assert runtime.merge_tokens == (4, 4, 4, 0)
            np.testing.assert_allclose(runtime.run(x), expected, atol=1e-4)


@pytest.mark.slow
def test_a_merged_export_runs_the_pytorch_merge_on_every_cpu_backend(tmp_path):
    """vivit-export --merge-tokens: static shapes (each layer's token count fixed by r), the schedule and the counts
    in the file's metadata, and ONNX Runtime and OpenVINO within 1e-4 of PyTorch's merge (fp32)."""
    import importlib.util

    from click.testing import CliRunner

    from vivit_deploy.artifacts.metadata import read_onnx_metadata
    from vivit_deploy.cli import export_command
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.runtimes import load_runtime

    path = tmp_path / "merged.onnx"
    result = CliRunner().invoke(export_command, [str(demo_model_dir()), "-o", str(path), "--merge-tokens", "8,8,4"])
    assert result.exit_code == 0, result.output
    assert "token merging (ToMe): r per layer 8, 8, 4, 0; tokens after each layer 57, 49, 45, 45" in result.stdout
    metadata = read_onnx_metadata(path)
    assert metadata.merge_tokens == (8, 8, 4, 0) and metadata.token_counts == (57, 49, 45, 45)
    x = np.random.default_rng(0).standard_normal((3, *metadata.config.input_shape), dtype=np.float32)
    with load_runtime(demo_model_dir(), "torch", device="cpu", merge_tokens=(8, 8, 4)) as merged:
        expected = merged.run(x)
    with load_runtime(demo_model_dir(), "torch", device="cpu") as unmerged:
        assert np.abs(unmerged.run(x) - expected).max() > 1e-3  # the merge changes the logits: the check means something
    backends = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for backend in backends:
        with load_runtime(path, backend) as runtime:
            assert runtime.merge_tokens == (8, 8, 4, 0)
            np.testing.assert_allclose(runtime.run(x), expected, atol=1e-4, rtol=0)
    # compare against the unmerged checkpoint: the logits are compared, per-layer drift says why it is left out
    from vivit_deploy.cli import main

    compared = CliRunner().invoke(main, ["compare", "--onnx", str(path), "--layers", "--json", "-"])
    assert "Traceback" not in compared.output, compared.output
    report = json.loads(compared.stdout)
    assert any("merges tokens" in why for why in report["layers_skipped"].values()), report["layers_skipped"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_merged_low_precision_files_pass_their_checks_and_tensorrt_for_rtx_builds_them(precision, tmp_path):
    """fp16 and int8 merged files are checked and validated as every export (int8 calibrated on the merged
    sequence: its ranges come from the merged graph); TensorRT for RTX parses and builds the merged graph (the merge
    is a one-hot product, not ScatterElements with a reduction, which its parser rejects) and still fuses every
    attention block, proportional-attention mask included."""
    from tests.conftest import rtx_missing
    from vivit_deploy.demo import demo_model_dir, sample_videos
    from vivit_deploy.export import export_onnx

    calibration = sample_videos()[0][0].parent if precision == "int8" else None
    path = tmp_path / f"merged-{precision}.onnx"
    report = export_onnx(demo_model_dir(), path, precision=precision, calibration=calibration, merge_tokens=8)
    assert report.passed and report.token_counts == (57, 49, 41, 33)
    if precision != "fp16" or rtx_missing() is not None:
        return
    from vivit_deploy.export.trt_build import build_engine

    built = build_engine(path, tmp_path / "merged.engine", trt="rtx", compute_capabilities="8.9")
    assert len(built.fused_attention) == built.attention_blocks == 4


def test_commands_merge_a_checkpoint_and_refuse_to_merge_an_exported_file(demo_onnx):
    from click.testing import CliRunner

    from vivit_deploy.cli import main
    from vivit_deploy.demo import default_sample, demo_model_dir

    video = str(default_sample())
    merged = CliRunner().invoke(main, ["predict", video, "--model", str(demo_model_dir()), "--merge-tokens", "8",
                                       "--json", "-"])
    plain = CliRunner().invoke(main, ["predict", video, "--model", str(demo_model_dir()), "--json", "-"])
    assert merged.exit_code == 0 == plain.exit_code, merged.output
    import json

    top = [json.loads(r.stdout)[0]["predictions"][0] for r in (merged, plain)]
    assert top[0]["label"] == top[1]["label"] and top[0]["probability"] != top[1]["probability"]
    refused = CliRunner().invoke(main, ["predict", video, "--model", str(demo_onnx), "--merge-tokens", "8"])
    assert refused.exit_code == 2 and "--merge-tokens applies to a checkpoint" in refused.stderr


def test_the_merged_patches_picture_paints_each_group_in_its_mean_colour_and_outlines_it():
    from vivit_deploy.compare.html_report import paint_merged

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)  # one tubelet of 2 frames over a 2 x 2 grid of 2 px
    source = np.zeros((4, 5), bool)  # final tokens: the class token, tubelets 1+2 (the top row), 3, 4
    source[0, 0] = source[1, 1] = source[1, 2] = source[2, 3] = source[3, 4] = True
    out = paint_merged(frames, source, (1, 2, 2))
    top = frames[:, :2].astype(np.float64).reshape(-1, 3).mean(axis=0)
    painted = out[:, :1, :].reshape(-1, 3)  # the top row above its outline
    assert np.array_equal(painted, np.broadcast_to(np.rint(top), painted.shape).astype(np.uint8))
    assert (out[:, 1, :] == 0).all()  # outlined from the bottom row (other groups)
    assert (out[:, 2:, 1] == 0).all()  # tubelets 3 and 4 are two groups: a line between them
    assert np.array_equal(out[:, 2:, 2:], frames[:, 2:, 2:]) and np.array_equal(out[:, 2:, :1], frames[:, 2:, :1])


def test_compare_shows_merged_against_unmerged_and_draws_the_merged_patches_of_flipped_clips(tmp_path):
    from click.testing import CliRunner

    from vivit_deploy.cli import main

    page, report = tmp_path / "report.html", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["compare", "--merge-tokens", "32", "--synthetic", "60", "--gate",
                                       "logits,accuracy:50%", "--json", str(report), "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "merges tokens (ToMe, r 32 per layer; tokens after each layer 33, 17, 9, 5) unlike the reference" in result.output
    [candidate] = json.loads(report.read_text())["candidates"]
    assert candidate["name"] == "pytorch fp32 merging r=32" and candidate["merge_tokens"] == [32] * 4
    assert candidate["token_counts"] == [33, 17, 9, 5] and candidate["failures"] == []
    logits_gate = next(g for g in candidate["gates"] if g["gate"] == "logits")
    assert logits_gate["passed"] and "token merging computes other logits" in logits_gate["detail"]
    flips = len(candidate["flips"])
    assert flips > 0  # the demo model loses clips at r = 32: what the pictures are for
    assert page.read_text(encoding="utf-8").count("alt=\"tubelets merged in") == flips
