"""The Hugging Face checkpoint layout: its file names, where a checkpoint lives, and writing one.

Below both the model (``modeling``: ``save_pretrained``) and the loader (``checkpoint``), which read and
write the same files; the preprocessor's ``from_pretrained`` finds its config through ``resolve_source``.

A source that is not an existing directory is taken as a Hub repository id and fetched with
``huggingface_hub.snapshot_download``, which honours its cache, ``revision``, ``HF_HUB_OFFLINE=1`` and
``local_files_only``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from vivit_deploy.errors import CheckpointNotFoundError
from vivit_deploy.files import atomic_write

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
VIDEO_PREPROCESSOR_NAME = "video_preprocessor_config.json"  # transformers 5's video processors write this one
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# What snapshot_download fetches: config files first, then the first weight layout that exists.
_HUB_CONFIG_FILES = [CONFIG_NAME, PREPROCESSOR_NAME, VIDEO_PREPROCESSOR_NAME]
_HUB_WEIGHT_PATTERNS = [
    [SAFETENSORS_NAME, SAFETENSORS_INDEX, "model-*.safetensors"],
    [BIN_NAME, BIN_INDEX, "pytorch_model-*.bin"],
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

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


def write_checkpoint(directory: str | os.PathLike, config: dict[str, Any], state_dict: dict[str, Any],
                     preprocessor: Any = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (and, through ``preprocessor.save_pretrained``, its
    ``preprocessor_config.json``) into ``directory``.

    Each file is written to a temporary name and renamed, so an interrupted save never leaves a
    half-written file under the real name.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    atomic_write(directory / SAFETENSORS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    if preprocessor is not None:
        preprocessor.save_pretrained(directory)
    return directory
