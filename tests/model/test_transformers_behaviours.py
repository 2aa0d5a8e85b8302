"""What transformers' own ViViT tests check (tests/models/vivit/test_modeling_vivit.py and the common model tests),
held for our classes: tests of ours, on upstream's tiny config, with transformers as the reference where it runs.

Not applicable, with the reason (also in docs/transformers.md): gradient checkpointing (training), flash and flex
attention, device maps and accelerate offloading, torch.fx and TorchScript (off for ViViT upstream too), pruning and
embedding resizing (off upstream), pipelines, and mutating a config after building (ours is frozen: pass
``output_attentions=...`` to forward, or build the config with it).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import replace

import pytest
import torch

from vivit_deploy.errors import CheckpointError, ConfigError, InputShapeError, MetaDeviceError
from vivit_deploy.model.checkpoint import load_model
from vivit_deploy.model.config import VivitConfig
from vivit_deploy.model.modeling import VivitForVideoClassification, VivitModel, interpolate_positions

transformers = pytest.importorskip("transformers", reason="transformers (the reference) is not installed")
# upstream's config floors its 10 px frames to 8: said once by a test of its own, quiet elsewhere
pytestmark = pytest.mark.filterwarnings("ignore:.*are not a whole number of .* tubelets:UserWarning")

# upstream's VivitModelTester: 10x10 frames with 4x4 patches (floored to 8x8 by its Conv3d), width 32, 4 heads
UPSTREAM = dict(image_size=10, num_frames=8, tubelet_size=[2, 4, 4], num_channels=3, hidden_size=32,
                num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, hidden_act="gelu_fast",
                layer_norm_eps=1e-06, qkv_bias=True, num_labels=10)
SEQ = (10 // 4) * (10 // 4) * (8 // 2) + 1  # upstream's seq_length
BATCH = 2


def ours_and_theirs(tmp_path, base=False, **overrides):
    """transformers' model with random weights, saved; ours loaded from the same files."""
    config = transformers.VivitConfig(**{**UPSTREAM, **overrides})
    torch.manual_seed(0)
    cls = transformers.VivitModel if base else transformers.VivitForVideoClassification
    theirs = cls(config).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.2)
    theirs.save_pretrained(tmp_path)
    theirs = cls.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the floor warning: tested on its own below
        ours = load_model(tmp_path, head="base" if base else "classification")
    return ours, theirs


def pixels(batch=BATCH, frames=8, size=10, seed=0):
    return torch.rand((batch, frames, 3, size, size), generator=torch.Generator().manual_seed(seed))


def test_upstream_tiny_config_loads_floors_with_a_warning_and_matches(tmp_path):
    """10x10 frames with 4x4 patches: transformers' Conv3d floors to 2x2 patches; ours does the same and says so."""
    with pytest.warns(UserWarning, match=r"uses 8 frames of 8x8 \(the rest is cut"):
        VivitForVideoClassification(VivitConfig.from_dict(transformers.VivitConfig(**UPSTREAM).to_dict()))
    ours, theirs = ours_and_theirs(tmp_path)
    x = pixels()
    with torch.no_grad():
        assert (ours(x).logits - theirs(x).logits).abs().max() < 1e-5
    ours.vivit.embeddings.patch_embeddings.as_matmul = True  # the exporter's projection floors the same way
    with torch.no_grad():
        assert (ours(x).logits - theirs(x).logits).abs().max() < 1e-5


def test_model_and_classifier_shapes(tmp_path):
    base, _ = ours_and_theirs(tmp_path / "b", base=True)
    classifier, _ = ours_and_theirs(tmp_path / "c")
    with torch.no_grad():
        assert base(pixels()).last_hidden_state.shape == (BATCH, SEQ, 32)
        assert classifier(pixels()).logits.shape == (BATCH, 10)


def test_forward_signature_starts_with_pixel_values_and_head_mask():
    for cls in (VivitModel, VivitForVideoClassification):
        assert list(inspect.signature(cls.forward).parameters)[1:3] == ["pixel_values", "head_mask"]
    assert VivitForVideoClassification.main_input_name == "pixel_values"


def test_input_and_output_embeddings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = VivitForVideoClassification(VivitConfig.from_dict(transformers.VivitConfig(**UPSTREAM).to_dict()))
    assert isinstance(model.get_input_embeddings(), torch.nn.Module) and model.get_output_embeddings() is None


@pytest.mark.parametrize("base", [False, True], ids=["classifier", "model"])
def test_attention_outputs_equal_transformers_and_come_last(tmp_path, base):
    ours, theirs = ours_and_theirs(tmp_path, base=base)
    x = pixels()
    with torch.no_grad():
        mine = ours(x, output_attentions=True)
        reference = theirs(x, output_attentions=True)
        assert len(mine.attentions) == 2 and mine.attentions[0].shape == (BATCH, 4, SEQ, SEQ)
        torch.testing.assert_close(mine.attentions[0], reference.attentions[0], rtol=0, atol=0)  # the first layer: bit for bit
        for a, b in zip(mine.attentions, reference.attentions):  # later ones differ by GELU's rounding only
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        out_len = len(mine)
        both = ours(x, output_attentions=True, output_hidden_states=True)
        assert len(both) == out_len + 1 and both[-1] is both.attentions  # attentions are always last
        by_config = replace(ours.config, output_attentions=True)
        again = copy.deepcopy(ours)
        again.config = by_config
        if not base:
            again.vivit.config = by_config
        assert len(again(x).attentions) == 2  # also set through the config


@pytest.mark.parametrize("base", [False, True], ids=["classifier", "model"])
def test_hidden_states_equal_transformers(tmp_path, base):
    ours, theirs = ours_and_theirs(tmp_path, base=base)
    x = pixels()
    with torch.no_grad():
        mine = ours(x, output_hidden_states=True).hidden_states
        reference = theirs(x, output_hidden_states=True).hidden_states
    assert len(mine) == 3 == len(reference) and mine[0].shape == (BATCH, SEQ, 32)
    for a, b in zip(mine, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_outputs_index_like_tuples_and_dicts(tmp_path):
    ours, _ = ours_and_theirs(tmp_path)
    x = pixels()
    with torch.no_grad():
        out = ours(x, labels=torch.tensor([1, 2]))
        plain = ours(x, labels=torch.tensor([1, 2]), return_dict=False)
    assert list(out.keys()) == ["loss", "logits"] and list(out) == ["loss", "logits"]
    assert out[0] is out.loss and out["logits"] is out.logits and out[1:] == (out.logits,)
    assert isinstance(plain, tuple) and torch.equal(plain[1], out.logits)
    with pytest.raises(KeyError, match="'attentions' is not set"):
        out["attentions"]


def test_losses_of_every_problem_type_equal_transformers(tmp_path):
    for problem, labels in (("single_label_classification", torch.tensor([3, 7])),
                            ("multi_label_classification", torch.rand(BATCH, 10).round()),
                            ("regression", torch.randn(BATCH, 10))):
        ours, theirs = ours_and_theirs(tmp_path / problem, problem_type=problem)
        x = pixels()
        with torch.no_grad():
            torch.testing.assert_close(ours(x, labels=labels).loss, theirs(x, labels=labels).loss, rtol=1e-5, atol=1e-6)
    ours, theirs = ours_and_theirs(tmp_path / "auto")  # no problem_type: chosen from the labels' dtype
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels(), labels=torch.tensor([1, 2])).loss,
                                   theirs(pixels(), labels=torch.tensor([1, 2])).loss)


def test_head_mask_equals_transformers_where_it_has_one(tmp_path):
    ours, _ = ours_and_theirs(tmp_path)
    mask = torch.ones(2, 4)
    mask[0, 1] = 0
    x = pixels()
    with torch.no_grad():
        masked = ours(x, head_mask=mask, output_attentions=True)
        plain = ours(x)
    assert masked.attentions[0][:, 1].abs().max() == 0  # the masked head's probabilities are zero
    assert not torch.allclose(masked.logits, plain.logits)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, head_mask=torch.ones(4)).logits, plain.logits, rtol=0, atol=1e-6)
    with pytest.raises(InputShapeError, match="head_mask must have shape"):
        ours(x, head_mask=torch.ones(3))


def test_determinism_batching_and_training_step(tmp_path):
    ours, _ = ours_and_theirs(tmp_path)
    x = pixels(batch=3)
    with torch.no_grad():
        first, second = ours(x).logits, ours(x).logits
        one_by_one = torch.cat([ours(x[i:i + 1]).logits for i in range(3)])
    assert torch.equal(first, second)
    torch.testing.assert_close(one_by_one, first, rtol=0, atol=1e-5)
    ours.train()
    out = ours(x, labels=torch.tensor([0, 1, 2]), output_hidden_states=True, output_attentions=True)
    out.hidden_states[0].retain_grad()
    out.attentions[0].retain_grad()
    out.loss.backward()
    assert out.hidden_states[0].grad is not None and out.attentions[0].grad is not None
    assert all(p.grad is not None for p in ours.parameters())


def test_save_and_load_round_trip_both_ways(tmp_path):
    ours, theirs = ours_and_theirs(tmp_path / "t")
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.VivitForVideoClassification.from_pretrained(tmp_path / "ours").eval()
    again = VivitForVideoClassification.from_pretrained(tmp_path / "ours")
    x = pixels()
    with torch.no_grad():
        assert torch.equal(again(x).logits, ours(x).logits)
        torch.testing.assert_close(back(x).logits, ours(x).logits, rtol=0, atol=1e-5)


def test_heads_that_do_not_divide_the_width_compute_as_transformers_5(tmp_path):
    """hidden_size 32 with the default 12 heads: transformers 5 gives each head 2 channels (attention over 24)."""
    ours, theirs = ours_and_theirs(tmp_path, hidden_size=32, num_attention_heads=12)
    with pytest.warns(UserWarning, match="each head gets 2 channels, attention runs over 24 of the 32"):
        VivitModel(ours.config)
    assert ours.vivit.encoder.layer[0].attention.attention.query.weight.shape == (24, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels()).logits, theirs(pixels()).logits, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="a head would have no channels"):
        VivitModel(VivitConfig.from_dict({**transformers.VivitConfig(**UPSTREAM).to_dict(), "num_attention_heads": 64}))


# ---- checkpoints as transformers writes them ------------------------------------------------------------------


def test_renamed_keys_of_transformers_5_load(tmp_path):
    _, theirs = ours_and_theirs(tmp_path / "t")
    theirs.save_pretrained(tmp_path / "renamed", save_original_format=False)
    from safetensors.torch import load_file

    assert any(".layers.0.attention.q_proj." in k for k in load_file(tmp_path / "renamed" / "model.safetensors"))
    ours = load_model(tmp_path / "renamed")
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels()).logits, theirs(pixels()).logits, rtol=0, atol=1e-5)


def test_dtype_strings_auto_and_torch_dtype(tmp_path):
    _, theirs = ours_and_theirs(tmp_path / "t")
    theirs.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert load_model(tmp_path / "bf16", dtype="auto").dtype == torch.bfloat16  # the dtype config.json records
    assert load_model(tmp_path / "bf16", dtype="float16").dtype == torch.float16
    assert load_model(tmp_path / "bf16", torch_dtype=torch.float32).dtype == torch.float32
    assert VivitForVideoClassification.from_pretrained(tmp_path / "bf16", torch_dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype 'int8' is not one of"):
        load_model(tmp_path / "bf16", dtype="int8")
    with pytest.raises(ConfigError, match="give dtype or torch_dtype"):
        load_model(tmp_path / "bf16", dtype="auto", torch_dtype="auto")


def test_loading_inside_the_meta_device_is_refused_as_transformers_refuses(tmp_path):
    ours, _ = ours_and_theirs(tmp_path / "t")
    with torch.device("meta"), pytest.raises(RuntimeError, match="inside `with torch.device\\('meta'\\)`") as raised:
        load_model(tmp_path / "t")
    assert isinstance(raised.value, MetaDeviceError)  # a RuntimeError, as transformers raises, and one of ours
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"), pytest.raises(RuntimeError):  # what code written against transformers catches
        transformers.VivitForVideoClassification.from_pretrained(tmp_path / "t")
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        empty = VivitForVideoClassification(ours.config)  # an empty model there is what meta is for
    assert empty.classifier.weight.is_meta


def test_missing_keys_are_named_from_the_architecture_in_config_json(tmp_path):
    _, theirs = ours_and_theirs(tmp_path / "t")
    from safetensors.torch import save_file

    save_file({"something.else": torch.zeros(3)}, tmp_path / "t" / "model.safetensors")  # one foreign tensor
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "t")
    assert "missing keys: classifier.bias, classifier.weight" in str(error.value)  # the classifier config.json names
    assert "and 32 more" in str(error.value) and "unexpected keys: something.else" in str(error.value)


# ---- other geometries -----------------------------------------------------------------------------------------


def test_interpolate_pos_encoding_keeps_positions_where_the_grid_does_not_change(tmp_path):
    base, theirs = ours_and_theirs(tmp_path, base=True, image_size=32, tubelet_size=[2, 8, 8], num_frames=4)
    x = pixels(frames=4, size=34)  # 34 px still makes a 4x4 grid of 8 px patches: positions as they are
    with torch.no_grad():
        torch.testing.assert_close(base(x, interpolate_pos_encoding=True).last_hidden_state,
                                   base(x[..., :32, :32]).last_hidden_state, rtol=0, atol=0)
        assert base(pixels(frames=4, size=32)).last_hidden_state.shape == (BATCH, 33, 32)
    with pytest.raises(InputShapeError, match="pass interpolate_pos_encoding=True"):
        base(pixels(frames=4, size=48))


def test_interpolated_positions_resize_each_time_step_and_time_linearly():
    t, h, w, d = 2, 3, 3, 5
    grid = torch.randn(1, 1 + t * h * w, d, generator=torch.Generator().manual_seed(0))
    out = interpolate_positions(grid, (t, h, w), (4, h, w))  # time only: linear, align_corners=False
    steps = out[0, 1:].reshape(4, h, w, d)
    before = grid[0, 1:].reshape(t, h, w, d)
    torch.testing.assert_close(steps[0], before[0])
    torch.testing.assert_close(steps[1], 0.75 * before[0] + 0.25 * before[1])
    torch.testing.assert_close(steps[2], 0.25 * before[0] + 0.75 * before[1])
    torch.testing.assert_close(out[0, 0], grid[0, 0])  # the CLS position stays
    spatial = interpolate_positions(grid, (t, h, w), (t, 6, 6)).reshape(-1, d)[1:].reshape(t, 6, 6, d)
    changed = grid.clone()
    changed[0, 1 + h * w:] += 1  # another time step changes: the first step's resize must not see it
    again = interpolate_positions(changed, (t, h, w), (t, 6, 6)).reshape(-1, d)[1:].reshape(t, 6, 6, d)
    torch.testing.assert_close(spatial[0], again[0])
    reference = torch.nn.functional.interpolate(before[0].permute(2, 0, 1)[None], size=(6, 6), mode="bicubic",
                                                align_corners=False)[0].permute(1, 2, 0)
    torch.testing.assert_close(spatial[0], reference)


def test_transformers_interpolation_changes_no_grid_where_ours_does(tmp_path):
    """Upstream's interpolate_pos_encoding compares the configured patch count and, for a square input, returns the
    positions unchanged: 8 frames of 48 px with 8x8x2 tubelets fails there, and runs here."""
    base, theirs = ours_and_theirs(tmp_path, base=True, image_size=32, tubelet_size=[2, 8, 8], num_frames=8)
    x = pixels(frames=8, size=48)
    with torch.no_grad(), pytest.raises(RuntimeError):
        theirs(x, interpolate_pos_encoding=True)
    with torch.no_grad():
        assert base(x, interpolate_pos_encoding=True).last_hidden_state.shape == (BATCH, 1 + 4 * 6 * 6, 32)


def test_at_geometry_bakes_the_positions_and_equals_interpolation(tmp_path):
    ours, _ = ours_and_theirs(tmp_path, image_size=32, tubelet_size=[2, 8, 8], num_frames=8)
    small = ours.at_geometry(num_frames=4, image_size=24)
    assert small.config.input_shape == (4, 3, 24, 24) and ours.config.input_shape == (8, 3, 32, 32)
    assert small.config.extra["trained_geometry"] == {"num_frames": 8, "image_size": 32}
    x = pixels(frames=4, size=24)
    with torch.no_grad():
        torch.testing.assert_close(small(x).logits, ours(x, interpolate_pos_encoding=True).logits, rtol=0, atol=1e-6)
    assert ours.at_geometry() is ours


@pytest.mark.parametrize("base", [False, True], ids=["classifier", "base"])
def test_torch_export_takes_our_models_as_it_takes_transformers(base, tmp_path):
    """transformers' ViViT tests export the model with torch.export: its outputs are pytree nodes. Ours are too, so
    torch.export and AOTInductor users can take them; the exported program returns the same output class."""
    ours, _ = ours_and_theirs(tmp_path, base=base)
    x = torch.randn(2, *ours.config.input_shape, generator=torch.Generator().manual_seed(0))
    exported = torch.export.export(ours, (x,))
    with torch.no_grad():
        out, expected = exported.module()(x), ours(x)
    assert type(out) is type(expected)
    for name in expected.keys():
        torch.testing.assert_close(out[name], expected[name], atol=1e-5, rtol=1e-5)


def test_a_bare_encoders_weights_under_a_classifiers_architectures_is_one_mismatch_not_38_missing_keys(tmp_path):
    """A VivitModel checkpoint whose config.json names VivitForVideoClassification: the error listed 38 of its 40 keys as
    missing and the same ones unprefixed as unexpected; it now says what is wrong once."""
    import json

    ours_and_theirs(tmp_path, base=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["VivitForVideoClassification"]}))
    with pytest.raises(CheckpointError, match="holds a bare encoder's weights .* load it with head='base'") as raised:
        load_model(tmp_path)
    assert "missing keys" not in str(raised.value) and "\n" not in str(raised.value)
    assert type(load_model(tmp_path, head="base")).__name__ == "VivitModel"
