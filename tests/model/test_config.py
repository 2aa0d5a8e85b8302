from __future__ import annotations

import json

import pytest

from vivit_deploy.model.config import VivitConfig, preset
from vivit_deploy.errors import ConfigError


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_frames=1, tubelet_size=(2, 8, 8)), "hold no whole 2x8x8 tubelet"),
        (dict(problem_type="ranking"), "problem_type must be one of"),
        (dict(hidden_act="swish"), "hidden_act 'swish' is not supported"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
        (dict(tubelet_size=(2, 8)), "tubelet_size must be three integers"),
        (dict(image_size=(32, 32, 3)), "image_size must be"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(id2label={0: "a", 2: "b"}), "id2label keys"),
    ],
)
def test_invalid_configs_fail_at_construction(overrides, message):
    with pytest.raises(ConfigError, match=message):
        preset("tiny", **overrides)


def test_geometry_of_vivit_b():
    config = preset("vivit-b-16x2")
    assert config.num_patches == 3136 and config.num_labels == 400
    assert config.input_shape == (32, 3, 224, 224)
    assert 0.85e12 < config.flops_per_clip() < 0.95e12  # about 0.9 TFLOP per clip


def test_config_json_round_trip_keeps_unknown_keys():
    data = {**preset("tiny").to_dict(), "architectures": ["VivitForVideoClassification"], "transformers_version": "5.0"}
    config = VivitConfig.from_dict(data)
    assert config.extra["architectures"] == ["VivitForVideoClassification"]
    assert config.to_dict() == dict(sorted(data.items()))
    assert VivitConfig.from_dict(json.loads(config.to_json_string())) == config


def test_transformers_config_json_is_read(tiny_checkpoint):
    config = VivitConfig.from_json_file(tiny_checkpoint / "config.json")
    assert config.num_labels == 5 and config.tubelet_size == (2, 8, 8) and config.image_size == 32


def test_other_model_types_are_refused():
    with pytest.raises(ConfigError, match="'vit' model, not ViViT"):
        VivitConfig.from_dict({"model_type": "vit"})


def test_config_is_frozen():
    config = preset("tiny")
    with pytest.raises(AttributeError):
        config.hidden_size = 64
