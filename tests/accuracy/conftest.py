"""Models built to break in a known layer: fp16 overflow in layer 2's MLP, an int8 outlier channel in layer 1's MLP input.

Both start from the same tiny random transformers checkpoint with 4 layers, so each failure is the only thing that
differs from a model that exports cleanly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import hf_checkpoint

OUTLIER_CHANNEL = 7


@pytest.fixture(scope="session")
def four_layer_checkpoint(tmp_path_factory) -> Path:
    return hf_checkpoint(tmp_path_factory.mktemp("four-layers"), num_hidden_layers=4)


@pytest.fixture(scope="session")
def calibration_npz(tmp_path_factory, four_layer_checkpoint) -> Path:
    """16 random clips (seed 1) to calibrate and validate on, saved as compare --save-inputs does."""
    from vivit_deploy.accuracy.inputs import random_inputs
    from vivit_deploy.model.checkpoint import load_config

    path = tmp_path_factory.mktemp("calibration") / "clips.npz"
    random_inputs(load_config(four_layer_checkpoint), 16, seed=1).save(path)
    return path


def _modified(source: Path, directory: Path, change) -> Path:
    import torch

    from vivit_deploy.model.checkpoint import load_model

    model = load_model(source)
    with torch.no_grad():
        change(model.vivit.encoder.layer)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def fp16_overflow_checkpoint(tmp_path_factory, four_layer_checkpoint) -> Path:
    """Layer 2's first MLP product scaled up 6e4 (its output past fp16's 65504, its weights still inside) and the
    second scaled down as much: fine in fp32."""
    def change(layers):
        mlp = layers[2]
        mlp.intermediate.dense.weight *= 6e4
        mlp.intermediate.dense.bias *= 6e4
        mlp.output.dense.weight /= 6e4

    return _modified(four_layer_checkpoint, tmp_path_factory.mktemp("fp16-overflow"), change)


def _mlp_heavy(layers):
    layers[1].output.dense.weight *= 10  # layer 1's MLP carries much of the residual stream


@pytest.fixture(scope="session")
def int8_base_checkpoint(tmp_path_factory, four_layer_checkpoint) -> Path:
    """The model the outlier is added to; it exports to int8 within tolerance."""
    return _modified(four_layer_checkpoint, tmp_path_factory.mktemp("int8-base"), _mlp_heavy)


@pytest.fixture(scope="session")
def int8_outlier_checkpoint(tmp_path_factory, four_layer_checkpoint) -> Path:
    """``int8_base_checkpoint`` with one channel of layer 1's MLP input made 100x larger and the MLP's first product
    reading it 100x smaller: the same function in fp32, and one per-tensor int8 scale the channel dominates."""
    def change(layers):
        _mlp_heavy(layers)
        layer = layers[1]
        layer.layernorm_after.weight[OUTLIER_CHANNEL] *= 100
        layer.layernorm_after.bias[OUTLIER_CHANNEL] *= 100
        layer.intermediate.dense.weight[:, OUTLIER_CHANNEL] /= 100

    return _modified(four_layer_checkpoint, tmp_path_factory.mktemp("int8-outlier"), change)
