"""Loading checkpoints in the Hugging Face layout into our model, from a local directory or the Hub.

A checkpoint directory holds ``config.json`` and weights in one of four layouts, tried in this order:
``model.safetensors``, sharded safetensors (``model.safetensors.index.json``), ``pytorch_model.bin``,
sharded .bin (``pytorch_model.bin.index.json``). It may also hold ``preprocessor_config.json``.
Where a checkpoint lives (a directory, or a Hub snapshot) and how one is written are ``hf_layout``'s.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vivit_deploy.errors import CheckpointError, ConfigError, MetaDeviceError
from vivit_deploy.model.config import VivitConfig, check_attn_implementation
from vivit_deploy.model.registry import family
from vivit_deploy.model.hf_layout import BIN_INDEX, BIN_NAME, CONFIG_NAME, SAFETENSORS_INDEX, SAFETENSORS_NAME, resolve_source

if TYPE_CHECKING:  # torch is imported where it is used, so that the preprocessor works without it
    import torch

Head = Literal["auto", "classification", "base"]


def load_config(directory: str | os.PathLike) -> VivitConfig:
    """The config in ``directory``'s ``config.json``, once its ``model_type`` is one a model file computes
    (``model/registry.py``)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}; a checkpoint directory needs one")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raw = None  # the config's own reader says what is wrong with the file
    models = family(raw.get("model_type", "vivit")) if isinstance(raw, dict) else family("vivit")
    return models.config_class().from_json_file(path)


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
        raise CheckpointError(f"{index_path}: tensors listed in the index but absent from the shards: {listed(missing)}")
    return state


def listed(names: list[str], limit: int = 8, sep: str = ", ") -> str:
    """The first ``limit`` names for an error message, and how many more there are."""
    shown = sep.join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


# transformers 5 renamed ViViT's modules (its ViT conversion mapping) and writes the new names when a checkpoint is
# saved with save_original_format=False; a checkpoint in either naming loads. Applied in order to each key.
RENAMED_KEYS = (
    (re.compile(r"(^|\.)layers\.(\d+)\."), r"\1encoder.layer.\2."),
    (re.compile(r"\.attention\.q_proj\."), ".attention.attention.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.attention.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.attention.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.mlp\.fc1\."), ".intermediate.dense."),
    (re.compile(r"\.mlp\.fc2\."), ".output.dense."),
)
ARCHITECTURES = {"VivitForVideoClassification": "classification", "VivitModel": "base"}


def _renamed(state: dict, patterns: tuple) -> dict:
    """``state`` with a model family's own older key names (its ``RENAMED_KEYS``) brought to its current ones."""
    if not patterns:
        return state
    out = {}
    for key, value in state.items():
        for pattern, replacement in patterns:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


def original_names(state: dict) -> dict:
    """The state dict with transformers 5's renamed keys (``vivit.layers.0.attention.q_proj``) back to the original
    names this model uses (``vivit.encoder.layer.0.attention.attention.query``); original keys pass unchanged."""
    if not any(".layers." in k or k.startswith("layers.") for k in state):
        return state
    return _renamed(state, RENAMED_KEYS)


def _pick_head(state: dict, head: Head, source: str, architectures=None, prefix: str = "vivit",
               known: dict | None = None) -> tuple[str, dict]:
    """Decide which model the weights are for, and key them the way that model names its parameters.

    ``head="auto"`` follows ``config.json``'s ``architectures`` (as transformers does; ``known``: the family's names),
    and the weights where it names none, so a checkpoint whose weights do not fit is reported against the model it
    says it is. ``prefix``: the encoder's parameter prefix in a classifier checkpoint."""
    known = known or ARCHITECTURES
    named = next((known[a] for a in architectures or () if a in known), None)
    is_classifier = named == "classification" if named else "classifier.weight" in state
    if head == "auto":
        head = "classification" if is_classifier else "base"
    if head == "classification":
        if "classifier.weight" not in state and not is_classifier:
            raise CheckpointError(
                f"{source}: has no classifier weights (a bare encoder's checkpoint); load it with head='base'"
            )
        return head, state
    if head != "base":
        raise ConfigError(f"head must be 'auto', 'classification' or 'base', got {head!r}")
    if any(k.startswith(prefix + ".") for k in state):  # a classification checkpoint, read as the bare encoder
        state = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
    return head, state


DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16", "fp16": "float16",
          "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def resolve_dtype(dtype, config_dict: dict, state: dict):
    """A torch dtype from what transformers' ``from_pretrained`` takes: a ``torch.dtype``, its name ("float16"), or
    "auto" (the dtype ``config.json`` records, else the weights' own); None keeps the weights' dtype as stored."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name == "auto":
        recorded = config_dict.get("dtype") or config_dict.get("torch_dtype")
        if recorded:
            return resolve_dtype(recorded, {}, state)
        floats = [v.dtype for v in state.values() if v.is_floating_point()]
        return floats[0] if floats else None
    if name not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {sorted(set(DTYPES))}, a torch.dtype or 'auto'")
    return getattr(torch, DTYPES[name])


def load_model(
    source: str | os.PathLike,
    *,
    attn_implementation: str = "sdpa",
    head: Head = "auto",
    dtype: "torch.dtype | str | None" = None,
    device: "str | torch.device" = "cpu",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    torch_dtype: "torch.dtype | str | None" = None,
    device_map: Any = None,
) -> "torch.nn.Module":
    """Load a ViViT checkpoint (local directory or Hub id) into our model, in eval mode.

    ``head="auto"`` gives the model ``config.json``'s ``architectures`` names (``VivitForVideoClassification`` or
    ``VivitModel``), else the one the weights are for. Keys in transformers 4's names and in transformers 5's
    renamed ones (``save_original_format=False``) both load. ``dtype`` (or transformers' older ``torch_dtype``) is a
    ``torch.dtype``, its name, or ``"auto"``. Every weight must fit: missing, unexpected and mis-shaped tensors
    are reported by name in a :class:`CheckpointError`.
    """
    import torch

    check_attn_implementation(attn_implementation)
    if device_map is not None:
        raise ConfigError("device_map is not supported: ViViT fits one device; pass device='cuda:0' (or load, then .to())")
    if dtype is not None and torch_dtype is not None:
        raise ConfigError("give dtype or torch_dtype (its older name), not both")
    if torch.get_default_device().type == "meta":
        raise MetaDeviceError("load_model/from_pretrained was called inside `with torch.device('meta')`, where no weight "
                          "can be loaded; build the empty model there with VivitForVideoClassification(config) instead")
    directory = resolve_source(
        source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
    )
    config = load_config(directory)
    models = family(config.model_type)
    state = _renamed(original_names(load_state_dict(directory)), models.renamed_keys())
    ignored = models.ignored_keys()
    if ignored:
        state = {k: v for k, v in state.items() if not any(p.match(k) for p in ignored)}
    dtype = resolve_dtype(dtype if dtype is not None else torch_dtype, config.extra, state)
    if models.base is None:  # Models 2 and 3 (model/factorised.py): classifiers only
        if head == "base":
            raise ConfigError(f"{source}: a {config.variant.replace('_', ' ')} checkpoint loads with its classifier "
                              "(head='auto' or 'classification')")
        head = "classification"
    else:
        head, state = _pick_head(state, head, str(source), config.extra.get("architectures"), config.base_prefix,
                                 models.architectures)
    with torch.device("meta"):  # build without allocating or initialising: every tensor is replaced below
        if head == "classification":
            model = models.model_class(head)(config, attn_implementation=attn_implementation)
        else:
            model = models.model_class(head)(config, add_pooling_layer="pooler.dense.weight" in state,
                                             attn_implementation=attn_implementation)
    _check_state_dict(model, state, str(source), config.base_prefix)
    model.load_state_dict(state, strict=True, assign=True)
    model.source = str(source)
    model.checkpoint_dir = directory
    return model.to(device=device, dtype=dtype).eval()


def new_model(config: VivitConfig, attn_implementation: str = "sdpa"):
    """An untrained classifier of ``config``'s model (random weights): Model 1's class, or Models 2 and 3's."""
    return family(config.model_type).model_class()(config, attn_implementation=attn_implementation)


def _check_state_dict(model: "torch.nn.Module", state: dict, source: str, prefix: str = "vivit") -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    inner = {k[len(prefix) + 1:] for k in missing if k.startswith(prefix + ".")}
    if unexpected and set(unexpected) <= inner | {"pooler.dense.weight", "pooler.dense.bias"}:
        # a bare encoder's weights (no "vivit." prefix) where config.json's architectures names the classifier: not
        # dozens of missing keys, but one mismatch
        raise CheckpointError(f"{source}: holds a bare encoder's weights (keys without the '{prefix}.' prefix, no "
                              f"classifier) while config.json's architectures names {type(model).__name__}: load it "
                              "with head='base' (a classifier needs its trained classifier weights)")
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {listed(mismatched)}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the model in config.json; " + "; ".join(problems))


def save_pretrained(model: "torch.nn.Module", directory: str | os.PathLike, preprocessor: Any = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (and ``preprocessor_config.json``) into ``directory``: the
    model's own ``save_pretrained``, kept as a function (``vivit_deploy.save_pretrained``)."""
    return model.save_pretrained(directory, preprocessor=preprocessor)
