"""Loading from every weight layout and from a Hub cache offline, saving, and every error path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vivit_deploy.model.checkpoint import load_model, load_state_dict, save_pretrained
from vivit_deploy.errors import CheckpointError, CheckpointNotFoundError
from vivit_deploy.model.modeling import VivitForVideoClassification, VivitModel
from vivit_deploy.video.preprocessing import VideoPreprocessor


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _logits(model, seed=0):
    x = torch.randn((2, *model.config.input_shape), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x).logits


def test_local_directory(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    assert isinstance(model, VivitForVideoClassification) and not model.training
    assert model.config.num_labels == 5


def test_sharded_safetensors(tiny_checkpoint, tmp_path):
    state = load_file(tiny_checkpoint / "model.safetensors")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, tmp_path / name)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: name for name, part in shards.items() for k in part}})
    )
    shutil.copy(tiny_checkpoint / "config.json", tmp_path)
    assert torch.equal(_logits(load_model(tmp_path)), _logits(load_model(tiny_checkpoint)))


def test_pytorch_bin_and_sharded_bin(tiny_checkpoint, tmp_path):
    state = load_file(tiny_checkpoint / "model.safetensors")
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", single)
    torch.save(state, single / "pytorch_model.bin")
    expected = _logits(load_model(tiny_checkpoint))
    assert torch.equal(_logits(load_model(single)), expected)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", sharded)
    keys = sorted(state)
    torch.save({k: state[k] for k in keys[:5]}, sharded / "pytorch_model-00001-of-00002.bin")
    torch.save({k: state[k] for k in keys[5:]}, sharded / "pytorch_model-00002-of-00002.bin")
    weight_map = {k: "pytorch_model-00001-of-00002.bin" if i < 5 else "pytorch_model-00002-of-00002.bin" for i, k in enumerate(keys)}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert torch.equal(_logits(load_model(sharded)), expected)


def _hub_cache(tmp_path: Path, checkpoint: Path, repo_id: str = "acme/vivit-tiny") -> Path:
    """The layout huggingface_hub's snapshot_download leaves in its cache, built by hand."""
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return cache


def test_hub_id_from_offline_cache(tiny_checkpoint, tmp_path):
    cache = _hub_cache(tmp_path, tiny_checkpoint)
    model = load_model("acme/vivit-tiny", cache_dir=cache, local_files_only=True)
    assert torch.equal(_logits(model), _logits(load_model(tiny_checkpoint)))
    with pytest.raises(CheckpointNotFoundError, match="acme/other: no local directory of that name, and not found in the local Hugging Face cache"):
        load_model("acme/other", cache_dir=cache, local_files_only=True)


def test_hub_id_with_hf_hub_offline_environment(tiny_checkpoint, tmp_path):
    """HF_HUB_OFFLINE=1 is read by huggingface_hub at import, so this runs in a fresh interpreter."""
    cache = _hub_cache(tmp_path, tiny_checkpoint)
    code = (
        "from vivit_deploy import load_model, VideoPreprocessor\n"
        "m = load_model('acme/vivit-tiny')\n"
        "print(type(m).__name__, m.config.num_labels)\n"
        "try:\n    load_model('acme/missing')\nexcept FileNotFoundError as e:\n    print('ERR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "VivitForVideoClassification 5" in out
    assert "ERR acme/missing: no local directory of that name, and not found in the local Hugging Face cache (offline mode)" in out


def test_base_head_from_a_classification_checkpoint(tiny_checkpoint, tiny_base_checkpoint):
    encoder = load_model(tiny_checkpoint, head="base")
    assert isinstance(encoder, VivitModel) and encoder.pooler is None
    with pytest.raises(CheckpointError, match="no classifier weights"):
        load_model(tiny_base_checkpoint, head="classification")


def test_save_pretrained_round_trip_and_transformers_reads_it(tiny_checkpoint, tmp_path):
    model = load_model(tiny_checkpoint)
    pre = VideoPreprocessor(crop_size={"height": 32, "width": 32})
    save_pretrained(model, tmp_path / "out", preprocessor=pre)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json"]
    again = load_model(tmp_path / "out")
    assert torch.equal(_logits(again), _logits(model))
    assert VideoPreprocessor.from_pretrained(tmp_path / "out").config == pre.config

    transformers = pytest.importorskip("transformers")
    theirs = transformers.VivitForVideoClassification.from_pretrained(tmp_path / "out").eval()
    x = torch.randn((2, *model.config.input_shape))
    with torch.no_grad():
        assert (theirs(x).logits - model(x).logits).abs().max().item() <= 1e-5


# ---- errors -------------------------------------------------------------------------------------------


def test_missing_directory_and_file_path(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointNotFoundError, match="no such checkpoint directory"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointNotFoundError, match="is a file"):
        load_model(tiny_checkpoint / "config.json")
    with pytest.raises(CheckpointNotFoundError, match="not a Hub repository id"):
        load_model("a/b/c")


def test_missing_config_and_missing_weights(tmp_path, tiny_checkpoint):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "empty")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", no_weights)
    with pytest.raises(CheckpointError, match="no weights found; expected one of model.safetensors"):
        load_model(no_weights)


def _edit_weights(src: Path, dst: Path, edit) -> Path:
    _copy(src, dst)
    state = load_file(dst / "model.safetensors")
    edit(state)
    save_file(state, dst / "model.safetensors")
    return dst


def test_missing_unexpected_and_mismatched_keys_are_named(tiny_checkpoint, tmp_path):
    missing = _edit_weights(tiny_checkpoint, tmp_path / "m", lambda s: s.pop("vivit.layernorm.weight"))
    with pytest.raises(CheckpointError, match="missing keys: vivit.layernorm.weight"):
        load_model(missing)
    extra = _edit_weights(tiny_checkpoint, tmp_path / "u", lambda s: s.update(extra_head=torch.zeros(3)))
    with pytest.raises(CheckpointError, match="unexpected keys: extra_head"):
        load_model(extra)
    wrong = _edit_weights(tiny_checkpoint, tmp_path / "s", lambda s: s.update({"classifier.bias": torch.zeros(7)}))
    with pytest.raises(CheckpointError, match=r"shape mismatches: classifier.bias \(checkpoint \(7,\), model \(5,\)\)"):
        load_model(wrong)


@pytest.mark.filterwarnings("ignore:hidden_size 32 is not a multiple of 5 heads:UserWarning")
def test_corrupt_weights_and_config(tiny_checkpoint, tmp_path):
    broken = _copy(tiny_checkpoint, tmp_path / "w")
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_state_dict(broken)
    bad_config = _copy(tiny_checkpoint, tmp_path / "c")
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON config"):
        load_model(bad_config)
    bad_geometry = _copy(tiny_checkpoint, tmp_path / "g")
    data = json.loads((bad_geometry / "config.json").read_text())
    data["num_attention_heads"] = 5
    (bad_geometry / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"shape mismatches: vivit.encoder.layer.0.attention.attention.key.bias "
                                              r"\(checkpoint \(32,\), model \(30,\)\)"):
        load_model(bad_geometry)  # 5 heads of 6 channels: the 32-wide projections do not fit


def test_shard_index_naming_a_missing_shard(tiny_checkpoint, tmp_path):
    shutil.copy(tiny_checkpoint / "config.json", tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    with pytest.raises(CheckpointError, match="lists shard model-1.safetensors, which is missing"):
        load_model(tmp_path)
