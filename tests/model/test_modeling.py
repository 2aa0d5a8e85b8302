"""Our model against transformers' on identical weights, and the model's own input checks."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import hf_checkpoint
from vivit_deploy.model.checkpoint import load_model
from vivit_deploy.model.config import VivitConfig, preset
from vivit_deploy.errors import ConfigError, InputShapeError
from vivit_deploy.model.modeling import LogitsOnly, VivitForVideoClassification, VivitModel

ATOL = 1e-5  # fp32 parity bound of the foundation issue

transformers = pytest.importorskip("transformers", reason="transformers (the parity reference) is not installed")


def _reference(directory, base=False):
    cls = transformers.VivitModel if base else transformers.VivitForVideoClassification
    return cls.from_pretrained(directory, attn_implementation="eager").eval()


def _input(config: VivitConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, *config.input_shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"hidden_act": "gelu", "qkv_bias": False},
        {"image_size": [32, 48], "tubelet_size": [1, 16, 8], "hidden_act": "gelu_new"},
        {"hidden_act": "gelu_pytorch_tanh", "num_frames": 6, "tubelet_size": [3, 8, 8], "layer_norm_eps": 1e-12},
    ],
    ids=["default", "erf-gelu-no-qkv-bias", "non-square", "tubelet-3"],
)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("tubelet", ["conv", "matmul"])
def test_classifier_matches_transformers(tmp_path, overrides, attn, tubelet):
    directory = hf_checkpoint(tmp_path, **overrides)
    ours = load_model(directory, attn_implementation=attn)
    ours.vivit.embeddings.patch_embeddings.as_matmul = tubelet == "matmul"  # the export's tubelet projection
    assert isinstance(ours, VivitForVideoClassification)
    x = _input(ours.config)
    with torch.no_grad():
        expected = _reference(directory)(x).logits
        got = ours(x).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= ATOL


def test_base_model_matches_transformers(tiny_base_checkpoint):
    ours = load_model(tiny_base_checkpoint)
    assert isinstance(ours, VivitModel) and ours.pooler is not None
    x = _input(ours.config, batch=3)
    with torch.no_grad():
        expected = _reference(tiny_base_checkpoint, base=True)(x)
        got = ours(x)
    assert (got.last_hidden_state - expected.last_hidden_state).abs().max().item() <= ATOL
    assert (got.pooler_output - expected.pooler_output).abs().max().item() <= ATOL


@pytest.mark.slow
def test_full_vivit_b_geometry_matches_transformers(tmp_path):
    """ViViT-B/16x2 at 224x224, 12 layers, 768 wide, 400 labels; 4 frames instead of 32 to keep it quick."""
    directory = hf_checkpoint(
        tmp_path, image_size=224, num_frames=4, tubelet_size=[2, 16, 16], hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, intermediate_size=3072, num_labels=400, seed=1,
    )
    ours = load_model(directory)
    assert ours.config == preset("vivit-b-16x2", num_frames=4)
    x = _input(ours.config, batch=1)
    with torch.no_grad():
        expected = _reference(directory)(x).logits
        got = ours(x).logits
    assert (got - expected).abs().max().item() <= ATOL


def test_eager_and_sdpa_agree_on_the_same_weights(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    x = _input(model.config, batch=3)
    with torch.no_grad():
        sdpa = model(x).logits
        model.set_attn_implementation("eager")
        assert model.attn_implementation == "eager"
        eager = model(x).logits
    assert (sdpa - eager).abs().max().item() <= ATOL


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_eager_prescales_queries():
    """Q is scaled before Q @ K^T: the pattern TensorRT fuses (no Mul between the MatMul and the Softmax)."""
    config = preset("tiny")
    model = VivitForVideoClassification(config, attn_implementation="eager").eval()
    graph = torch.jit.trace(LogitsOnly(model), _input(config, batch=1)).inlined_graph
    kinds = [node.kind() for node in graph.nodes()]
    softmax = kinds.index("aten::softmax")
    assert kinds[softmax - 1] == "aten::matmul", kinds[softmax - 4 : softmax + 1]


def test_dropout_only_in_training():
    config = preset("tiny", hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    model = VivitForVideoClassification(config).eval()
    x = _input(config, batch=1)
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)
        model.train()
        assert not torch.equal(model(x).logits, model(x).logits)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((4, 3, 32, 32), "5 dimensions"),
        ((1, 2, 3, 32, 32), "frames 2 (expected 4)"),
        ((1, 4, 1, 32, 32), "channels 1 (expected 3)"),
        ((1, 4, 3, 64, 32), "height 64 (expected 32)"),
        ((0, 4, 3, 32, 32), "empty batch"),
    ],
)
def test_wrong_input_shape_names_the_expected_shape(shape, message):
    model = VivitForVideoClassification(preset("tiny")).eval()
    with pytest.raises(InputShapeError) as info:
        model(torch.zeros(shape))
    assert message in str(info.value)
    assert "(batch, 4, 3, 32, 32)" in str(info.value)


def test_integer_input_is_refused():
    model = VivitForVideoClassification(preset("tiny")).eval()
    with pytest.raises(InputShapeError, match="floating point"):
        model(torch.zeros((1, 4, 3, 32, 32), dtype=torch.uint8))


def test_unknown_attention_implementation():
    with pytest.raises(ConfigError, match="attn_implementation"):
        VivitForVideoClassification(preset("tiny"), attn_implementation="flash")
