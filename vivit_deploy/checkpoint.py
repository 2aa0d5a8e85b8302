"""Loading and saving checkpoints in the Hugging Face layout, from a local directory or the Hub.

A checkpoint directory holds ``config.json`` and weights in one of four layouts, tried in this order:
``model.safetensors``, sharded safetensors (``model.safetensors.index.json``), ``pytorch_model.bin``,
sharded .bin (``pytorch_model.bin.index.json``). It may also hold ``preprocessor_config.json``.

A source that is not an existing directory is taken as a Hub repository id and fetched with
``huggingface_hub.snapshot_download``, which honours its cache, ``revision``, ``HF_HUB_OFFLINE=1`` and
``local_files_only``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vivit_deploy.config import VivitConfig
from vivit_deploy.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from vivit_deploy.files import atomic_write

if TYPE_CHECKING:  # torch is imported where it is used, so that the preprocessor works without it
    import torch

    from vivit_deploy.modeling import VivitForVideoClassification, VivitModel
    from vivit_deploy.preprocessing import VideoPreprocessor

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# What snapshot_download fetches: config files first, then the first weight layout that exists.
_HUB_CONFIG_FILES = [CONFIG_NAME, PREPROCESSOR_NAME]
_HUB_WEIGHT_PATTERNS = [
    [SAFETENSORS_NAME, SAFETENSORS_INDEX, "model-*.safetensors"],
    [BIN_NAME, BIN_INDEX, "pytorch_model-*.bin"],
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

Head = Literal["auto", "classification", "base"]


def resolve_source(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> Path:
    """Return a local directory for ``source``: the directory itself, or the Hub snapshot in the cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointNotFoundError(f"{source}: is a file; give the checkpoint directory that holds {CONFIG_NAME}")
    text = str(source)
    looks_local = text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 1)
    if looks_local or not _REPO_ID.match(text):
        raise CheckpointNotFoundError(f"{source}: no such checkpoint directory (and not a Hub repository id)")
    return _snapshot(text, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)


def _snapshot(repo_id: str, **kwargs: Any) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = bool(kwargs.get("local_files_only")) or constants.HF_HUB_OFFLINE
    where = "in the local Hugging Face cache (offline mode)" if offline else "on the Hugging Face Hub"
    revision = kwargs.get("revision")
    label = f"{repo_id}@{revision}" if revision else repo_id
    directory = Path()
    try:
        for weights in _HUB_WEIGHT_PATTERNS:
            directory = Path(snapshot_download(repo_id, allow_patterns=_HUB_CONFIG_FILES + weights, **kwargs))
            if any((directory / name).exists() for name in weights if "*" not in name):
                return directory
    except RevisionNotFoundError as exc:
        raise CheckpointNotFoundError(f"{label}: revision {revision!r} not found {where}") from exc
    except GatedRepoError as exc:
        raise CheckpointNotFoundError(f"{label}: gated repository; log in with `hf auth login` first") from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"{label}: no local directory of that name, and no such repository {where} (or it is private)"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"{label}: no local directory of that name, and not found {where}; "
            "download it once with network access, or pass a local directory"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise CheckpointNotFoundError(f"{label}: could not fetch from the Hugging Face Hub: {exc}") from exc
    return directory  # no weights in any layout: load_state_dict reports it with the file names it tried


def load_config(directory: str | os.PathLike) -> VivitConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}; a checkpoint directory needs one")
    return VivitConfig.from_json_file(path)


def load_state_dict(directory: str | os.PathLike) -> dict[str, "torch.Tensor"]:
    """Read every tensor of the checkpoint in ``directory`` into CPU memory, whatever its weight layout."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)

    def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(path)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc

    def read_bin(path: Path) -> dict[str, torch.Tensor]:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises many unrelated types for a damaged file
            raise CheckpointError(f"{path}: not a readable PyTorch weights file ({exc})") from exc
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a state dict")
        return data

    for single, index, reader in (
        (SAFETENSORS_NAME, SAFETENSORS_INDEX, read_safetensors),
        (BIN_NAME, BIN_INDEX, read_bin),
    ):
        if (directory / single).is_file():
            return reader(directory / single)
        if (directory / index).is_file():
            return _read_sharded(directory / index, reader)
    raise CheckpointError(
        f"{directory}: no weights found; expected one of {SAFETENSORS_NAME}, {SAFETENSORS_INDEX}, "
        f"{BIN_NAME} or {BIN_INDEX}"
    )


def _read_sharded(index_path: Path, reader) -> dict:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path}: not a valid shard index ({exc})") from exc
    state: dict = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index_path}: lists shard {shard}, which is missing")
        state.update(reader(shard_path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index_path}: tensors listed in the index but absent from the shards: {_names(missing)}")
    return state


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _pick_head(state: dict, head: Head, source: str) -> tuple[str, dict]:
    """Decide which model the weights are for, and key them the way that model names its parameters."""
    is_classifier = "classifier.weight" in state
    if head == "auto":
        head = "classification" if is_classifier else "base"
    if head == "classification":
        if not is_classifier:
            raise CheckpointError(
                f"{source}: has no classifier weights (a bare VivitModel checkpoint); load it with head='base'"
            )
        return head, state
    if head != "base":
        raise ConfigError(f"head must be 'auto', 'classification' or 'base', got {head!r}")
    if any(k.startswith("vivit.") for k in state):  # a classification checkpoint, read as the bare encoder
        state = {k[len("vivit.") :]: v for k, v in state.items() if k.startswith("vivit.")}
    return head, state


def load_model(
    source: str | os.PathLike,
    *,
    attn_implementation: str = "sdpa",
    head: Head = "auto",
    dtype: "torch.dtype | None" = None,
    device: "str | torch.device" = "cpu",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> "VivitForVideoClassification | VivitModel":
    """Load a ViViT checkpoint (local directory or Hub id) into our model, in eval mode.

    ``head="auto"`` gives ``VivitForVideoClassification`` when the weights have a classifier and
    ``VivitModel`` otherwise. Every weight must fit: missing, unexpected and mis-shaped tensors are
    reported by name in a :class:`CheckpointError`.
    """
    import torch

    from vivit_deploy.modeling import VivitForVideoClassification, VivitModel, _check_attn_implementation

    _check_attn_implementation(attn_implementation)
    directory = resolve_source(
        source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
    )
    config = load_config(directory)
    state = load_state_dict(directory)
    head, state = _pick_head(state, head, str(source))
    with torch.device("meta"):  # build without allocating or initialising: every tensor is replaced below
        if head == "classification":
            model = VivitForVideoClassification(config, attn_implementation=attn_implementation)
        else:
            model = VivitModel(config, add_pooling_layer="pooler.dense.weight" in state, attn_implementation=attn_implementation)
    _check_state_dict(model, state, str(source))
    model.load_state_dict(state, strict=True, assign=True)
    model.source = str(source)
    model.checkpoint_dir = directory
    return model.to(device=device, dtype=dtype).eval()


def _check_state_dict(model: "torch.nn.Module", state: dict, source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_names(mismatched)}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the model in config.json; " + "; ".join(problems))


def save_pretrained(
    model: "torch.nn.Module",
    directory: str | os.PathLike,
    preprocessor: "VideoPreprocessor | None" = None,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (and ``preprocessor_config.json``) into ``directory``.

    Each file is written to a temporary name and renamed, so an interrupted save never leaves a
    half-written file under the real name.
    """
    from safetensors.torch import save_file

    from vivit_deploy.modeling import VivitForVideoClassification

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_dict = model.config.to_dict()
    arch = "VivitForVideoClassification" if isinstance(model, VivitForVideoClassification) else "VivitModel"
    config_dict["architectures"] = [arch]
    config_dict["dtype"] = str(model.dtype).removeprefix("torch.")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}

    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config_dict, indent=2) + "\n"))
    atomic_write(directory / SAFETENSORS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    if preprocessor is not None:
        preprocessor.save_pretrained(directory)
    return directory
