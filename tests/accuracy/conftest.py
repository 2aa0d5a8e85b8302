"""Models built to break in a known part: fp16 overflow in layer 2's MLP, an int8 outlier channel in layer 1's MLP input
(one strong enough to break the residual stream, one that breaks only the MLP's own output), a head and an embedding
that only work in fp32.

All start from the same tiny random transformers checkpoint with 4 layers and compute its function in fp32 (up to
rounding), so each failure is the only thing that differs from a model that exports cleanly.
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
        change(model)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def fp16_overflow_checkpoint(tmp_path_factory, four_layer_checkpoint) -> Path:
    """Layer 2's first MLP product scaled up 6e4 (its output past fp16's 65504, its weights still inside) and the
    second scaled down as much: fine in fp32."""
    def change(model):
        mlp = model.vivit.encoder.layer[2]
        mlp.intermediate.dense.weight *= 6e4
        mlp.intermediate.dense.bias *= 6e4
        mlp.output.dense.weight /= 6e4

    return _modified(four_layer_checkpoint, tmp_path_factory.mktemp("fp16-overflow"), change)


def _mlp_heavy(model):
    model.vivit.encoder.layer[1].output.dense.weight *= 10  # layer 1's MLP carries much of the residual stream


@pytest.fixture(scope="session")
def int8_base_checkpoint(tmp_path_factory, four_layer_checkpoint) -> Path:
    """The model the outlier is added to; it exports to int8 within tolerance."""
    return _modified(four_layer_checkpoint, tmp_path_factory.mktemp("int8-base"), _mlp_heavy)


def _outlier(factor: float):
    def change(model):
        _mlp_heavy(model)
        layer = model.vivit.encoder.layer[1]
        layer.layernorm_after.weight[OUTLIER_CHANNEL] *= factor
        layer.layernorm_after.bias[OUTLIER_CHANNEL] *= factor
        layer.intermediate.dense.weight[:, OUTLIER_CHANNEL] /= factor
    return change


@pytest.fixture(scope="session")
def int8_outlier_checkpoint(tmp_path_factory, four_layer_checkpoint) -> Path:
    """``int8_base_checkpoint`` with one channel of layer 1's MLP input made 100x larger and the MLP's first product
    reading it 100x smaller: the same function in fp32, and one per-tensor int8 scale the channel dominates."""
    return _modified(four_layer_checkpoint, tmp_path_factory.mktemp("int8-outlier"), _outlier(100))


@pytest.fixture(scope="session")
def int8_branch_outlier_checkpoint(tmp_path_factory, four_layer_checkpoint) -> Path:
    """The same outlier 55x: the MLP's own output drifts past int8's tolerance (cosine 0.988 against fp32's MLP output)
    while the residual stream it is added to stays within it (0.996); the final LayerNorm carries it into the logits."""
    return _modified(four_layer_checkpoint, tmp_path_factory.mktemp("int8-branch-outlier"), _outlier(55))


@pytest.fixture(scope="session")
def fp16_head_checkpoint(tmp_path_factory, four_layer_checkpoint) -> Path:
    """The final LayerNorm's output 1e3x larger and the classifier's weights 1e6x smaller (its bias 1e3x): the logits
    1e3x smaller and otherwise the same in fp32; the classifier's weights fall below fp16's smallest subnormal steps."""
    def change(model):
        model.vivit.layernorm.weight *= 1e3
        model.vivit.layernorm.bias *= 1e3
        model.classifier.weight /= 1e6
        model.classifier.bias /= 1e3

    return _modified(four_layer_checkpoint, tmp_path_factory.mktemp("fp16-head"), change)


@pytest.fixture(scope="session")
def fp16_embeddings_checkpoint(tmp_path_factory, four_layer_checkpoint) -> Path:
    """5e4 added to every token (the projection's bias and the CLS token) and taken away by the positions: the same
    function in fp32; in fp16 the tokens sit where fp16's step is 32."""
    def change(model):
        embeddings = model.vivit.embeddings
        embeddings.patch_embeddings.projection.bias += 5e4
        embeddings.cls_token += 5e4
        embeddings.position_embeddings -= 5e4

    return _modified(four_layer_checkpoint, tmp_path_factory.mktemp("fp16-embeddings"), change)
