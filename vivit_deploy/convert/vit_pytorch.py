"""vit-pytorch's ViViT checkpoints (``vit_pytorch.vivit.ViViT``) to a checkpoint directory every command reads.

A vit-pytorch model is the keyword arguments it was built with and its ``state_dict``: ``vivit-deploy convert
vit-pytorch --args ARGS.json --weights WEIGHTS.pt -o DIR`` reads both (the weights with ``torch.load(...,
weights_only=True)``, so no code in the file runs) and writes ``config.json``, ``model.safetensors`` and a
``preprocessor_config.json`` in the Hugging Face layout, for ``model/factorised.py``. Both variants
(``factorized_encoder``, ``factorized_self_attention``) and both poolings (``cls``, ``mean``) convert; the logits
equal vit-pytorch's on the same clip (``tests/model/test_factorised.py``), with its input (B, C, T, H, W) ours
(B, T, C, H, W).

The preprocessor: vit-pytorch leaves preprocessing to the training script, so the file holds transformers' defaults
at the model's size (the short side resized to 256/224 of the input, a centre crop, [-1, 1]), and says so in its
``note``: replace it with what the model was trained on.

The key map is data (``KEYS``): every vit-pytorch tensor has one place, a weight the arguments do not explain is an
error naming it, and so is a shape the arguments contradict.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vivit_deploy.errors import CheckpointError, ConfigError
from vivit_deploy.model.checkpoint import _check_state_dict, listed
from vivit_deploy.model.config import VivitConfig
from vivit_deploy.model.probes import (
    ATTENTION_PROJECTION, CLASSIFIER, EMBEDDINGS, FC1, FC2, FINAL_NORM, KEY, NORM_AFTER, NORM_BEFORE, PROJECTION, QUERY,
    SPATIAL_NORM_PART, TEMPORAL_INPUTS, VALUE, part_path,
)

VARIANTS = {"factorized_encoder": "factorised_encoder", "factorized_self_attention": "factorised_self_attention"}
REQUIRED = ("image_size", "image_patch_size", "frames", "frame_patch_size", "num_classes", "dim", "spatial_depth",
            "temporal_depth", "heads", "mlp_dim")
OPTIONAL = {"pool": "cls", "channels": 3, "dim_head": 64, "dropout": 0.0, "emb_dropout": 0.0,
            "variant": "factorized_encoder", "use_flash_attn": True}
PREPROCESSOR_NOTE = ("transformers' defaults at the model's input size: vit-pytorch checkpoints carry no preprocessing; "
                     "replace this file with what the model was trained on")

# vit-pytorch's names -> ours. {L}: a layer of that stack; {S}/{T}: where Model 2's spatial / temporal stack starts and
# Model 3's space / time layer of block L is. Attention's to_qkv is split into query, key and value.
# (the model's part paths come from model/probes.py; the embeddings' own members are Models 2 and 3's, model/factorised.py)
_EMBEDDINGS = {"to_patch_embedding.1": f"{part_path(EMBEDDINGS)}.patch_norm", "to_patch_embedding.3": f"{part_path(EMBEDDINGS)}.norm",
               "pos_embedding": f"{part_path(EMBEDDINGS)}.position_embeddings",
               "spatial_cls_token": f"{part_path(EMBEDDINGS)}.cls_token", "mlp_head": part_path(CLASSIFIER)}
_ATTENTION = {"norm": NORM_BEFORE, "to_out.0": ATTENTION_PROJECTION}  # vit-pytorch's Attention -> our layer's parts
_FEEDFORWARD = {"net.0": NORM_AFTER, "net.1": FC1, "net.4": FC2}  # its FeedForward
def config_from_args(args: dict[str, Any], id2label: dict[int, str] | None = None) -> VivitConfig:
    """Our config for a ``vit_pytorch.vivit.ViViT(**args)``; unknown or missing arguments are a ConfigError."""
    if not isinstance(args, dict):
        raise ConfigError(f"the arguments must be a JSON object of ViViT(...)'s keyword arguments, got {type(args).__name__}")
    unknown = sorted(set(args) - set(REQUIRED) - set(OPTIONAL))
    missing = [name for name in REQUIRED if name not in args]
    if unknown:
        raise ConfigError(f"ViViT(...) takes no argument {', '.join(unknown)} (vit_pytorch.vivit.ViViT's are "
                          f"{', '.join(REQUIRED + tuple(OPTIONAL))})")
    if missing:
        raise ConfigError(f"the arguments lack {', '.join(missing)}, which vit_pytorch.vivit.ViViT requires")
    a = {**OPTIONAL, **args}
    if a["variant"] not in VARIANTS:
        raise ConfigError(f"variant {a['variant']!r} is not one of vit-pytorch's {sorted(VARIANTS)}")
    variant = VARIANTS[a["variant"]]
    if variant == "factorised_self_attention" and a["spatial_depth"] != a["temporal_depth"]:
        raise ConfigError("factorised self-attention needs spatial_depth == temporal_depth (vit-pytorch asserts it), "
                          f"got {a['spatial_depth']} and {a['temporal_depth']}")
    if a["pool"] not in ("cls", "mean"):
        raise ConfigError(f"pool must be 'cls' or 'mean', got {a['pool']!r}")
    patch = a["image_patch_size"]
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    image = a["image_size"]
    image = image if isinstance(image, int) else tuple(image)
    labels = id2label or {i: f"LABEL_{i}" for i in range(int(a["num_classes"]))}
    if len(labels) != a["num_classes"]:
        raise ConfigError(f"{len(labels)} labels given for num_classes={a['num_classes']}")
    return VivitConfig(
        image_size=image, num_frames=a["frames"], tubelet_size=(a["frame_patch_size"], ph, pw),
        num_channels=a["channels"], hidden_size=a["dim"], num_hidden_layers=a["spatial_depth"],
        num_attention_heads=a["heads"], intermediate_size=a["mlp_dim"], hidden_act="gelu", layer_norm_eps=1e-5,
        qkv_bias=False, id2label=labels, variant=variant, pooling=a["pool"], attention_head_dim=a["dim_head"],
        temporal_layers=a["temporal_depth"] if variant == "factorised_encoder" else 0,
        extra={"converted_from": "vit-pytorch", "vit_pytorch_args": args},
    )


def _layer(base: str, attention: str, feedforward: str | None, layer: int) -> dict[str, str]:
    """Module names of one vit-pytorch layer (``base``.``attention`` an Attention, ``base``.``feedforward`` a
    FeedForward) in ours (our layer ``layer``)."""
    out = {f"{base}.{attention}.{k}": part_path(part, layer) for k, part in _ATTENTION.items()}
    if feedforward is not None:
        out.update({f"{base}.{feedforward}.{k}": part_path(part, layer) for k, part in _FEEDFORWARD.items()})
    return out


def key_map(config: VivitConfig) -> tuple[dict[str, str], dict[str, int]]:
    """(vit-pytorch module names -> ours, each to_qkv -> the layer whose query, key and value it holds) for
    ``config``'s variant."""
    modules, qkv = dict(_EMBEDDINGS), {}
    modules["to_patch_embedding.2"] = part_path(PROJECTION, config=config)
    if config.variant == "factorised_encoder":
        modules["temporal_cls_token"] = part_path(TEMPORAL_INPUTS) + "cls_token"
        stacks = (("spatial_transformer", 0, config.num_hidden_layers, part_path(SPATIAL_NORM_PART)),
                  ("temporal_transformer", config.num_hidden_layers, config.temporal_layers, part_path(FINAL_NORM)))
        for prefix, first, depth, norm in stacks:
            modules[f"{prefix}.norm"] = norm
            for i in range(depth):
                modules.update(_layer(f"{prefix}.layers.{i}", "0", "1", first + i))
                qkv[f"{prefix}.layers.{i}.0.to_qkv"] = first + i
        return modules, qkv
    modules["factorized_transformer.norm"] = part_path(FINAL_NORM)
    for i in range(config.num_hidden_layers):  # block i: space attention (0), time attention (1), feedforward (2)
        base = f"factorized_transformer.layers.{i}"
        modules.update(_layer(base, "0", None, 2 * i))
        modules.update(_layer(base, "1", "2", 2 * i + 1))
        qkv[f"{base}.0.to_qkv"] = 2 * i
        qkv[f"{base}.1.to_qkv"] = 2 * i + 1
    return modules, qkv


def convert_state_dict(state: dict[str, Any], config: VivitConfig, source: str = "the weights",
                       expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """vit-pytorch's state dict in our names: to_qkv split in three, a missing output projection (vit-pytorch's
    Identity when heads == 1 and dim_head == dim) made the identity. ``expected``: our model's shapes, checked here so
    that a tensor the arguments contradict is named as vit-pytorch names it. Raises CheckpointError naming what does
    not fit."""
    import torch

    state = {k.removeprefix("module."): v for k, v in state.items()}  # nn.DataParallel's prefix
    other = {"factorised_encoder": "factorized_transformer.", "factorised_self_attention": "spatial_transformer."}
    foreign = sorted(k for k in state if k.startswith(other[config.variant]) or
                     (config.variant == "factorised_self_attention" and k.startswith(("temporal_transformer.",
                                                                                      "temporal_cls_token"))))
    if foreign:
        said = {"factorised_encoder": "factorized_encoder", "factorised_self_attention": "factorized_self_attention"}
        raise CheckpointError(f"{source}: the weights hold {foreign[0]} (and {len(foreign) - 1} more) of the other "
                              f"variant, but the arguments say variant={said[config.variant]!r}")
    modules, qkv = key_map(config)
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}  # our name -> vit-pytorch's
    unexplained = []
    inner = config.num_attention_heads * config.head_dim
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {key} is a {type(value).__name__}, not a tensor (a state_dict holds tensors)")
        prefix, _, leaf = key.rpartition(".")
        if key in modules:  # a parameter with no module leaf (positions, CLS tokens)
            out[modules[key]] = value
            origin[modules[key]] = key
        elif prefix in modules:
            out[f"{modules[prefix]}.{leaf}"] = value
            origin[f"{modules[prefix]}.{leaf}"] = key
        elif prefix in qkv and leaf == "weight":
            if value.shape[0] != 3 * inner:
                raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}; the arguments give "
                                      f"{config.num_attention_heads} heads of {config.head_dim} (to_qkv: "
                                      f"({3 * inner}, {config.hidden_size}))")
            for name, part in zip((QUERY, KEY, VALUE), value.chunk(3, dim=0)):
                out[f"{part_path(name, qkv[prefix])}.weight"] = part
                origin[f"{part_path(name, qkv[prefix])}.weight"] = key
        else:
            unexplained.append(key)
    if unexplained:
        raise CheckpointError(f"{source}: {len(unexplained)} weights the arguments do not explain "
                              f"({listed(unexplained, 4)}): were they saved from another model?")
    for layer in qkv.values():  # vit-pytorch's Identity output projection (one head as wide as the tokens)
        dense = part_path(ATTENTION_PROJECTION, layer)
        if f"{dense}.weight" not in out and config.num_attention_heads == 1 and config.head_dim == config.hidden_size:
            reference = out[f"{part_path(QUERY, layer)}.weight"]
            out[f"{dense}.weight"] = torch.eye(config.hidden_size, dtype=reference.dtype)
            out[f"{dense}.bias"] = torch.zeros(config.hidden_size, dtype=reference.dtype)
    if expected is not None:
        wrong = sorted({f"{origin.get(k, k)} (weights {tuple(v.shape)}, arguments {expected[k]})"
                        for k, v in out.items() if k in expected and tuple(v.shape) != expected[k] and
                        not k.endswith((".key.weight", ".value.weight"))})
        if wrong:
            raise CheckpointError(f"{source}: {len(wrong)} weights have other shapes than the arguments give: "
                                  f"{listed(wrong, 4, '; ')}")
        missing = sorted(set(expected) - set(out))
        if missing:
            raise CheckpointError(f"{source}: the arguments' model has weights the file lacks ({listed(missing, 4)})")
    return out


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """A ``torch.save``'d state dict, read with ``weights_only=True`` (a dict under "state_dict" or "model" too)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails on foreign bytes with any error type (KeyError, ...)
        raise CheckpointError(f"{path}: not a state dict torch.load can read with weights_only=True "
                              f"({_load_failure(exc)})") from None
    if isinstance(loaded, dict) and len(loaded) == 1 and next(iter(loaded)) in ("state_dict", "model") and \
            isinstance(next(iter(loaded.values())), dict):
        loaded = next(iter(loaded.values()))
    if not isinstance(loaded, dict) or not loaded:
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not a state_dict (save model.state_dict())")
    return loaded


def read_args(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such arguments file")
    try:
        args = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a JSON object of ViViT(...)'s keyword arguments ({exc})") from None
    if not isinstance(args, dict):
        raise ConfigError(f"{path}: not a JSON object of ViViT(...)'s keyword arguments")
    return args


def _load_failure(exc: Exception) -> str:
    """torch.load's reason in a few words: its weights_only message is a paragraph of advice around one line."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].strip()
        if reason.startswith("Unsupported global:"):
            name = reason.split("GLOBAL", 1)[-1].split()[0] if "GLOBAL" in reason else "a class"
            return f"it holds {name}, not only tensors: save model.state_dict(), not the model"
        return reason
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first.split('. ')[0]}" if first else type(exc).__name__


def read_labels(path: str | os.PathLike | None) -> dict[int, str] | None:
    """Class names: a JSON list (index = class) or object {index: name}; None without a file."""
    if path is None:
        return None
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a JSON list or object of class names ({exc})") from None
    try:
        labels = dict(enumerate(data)) if isinstance(data, list) else {int(k): v for k, v in data.items()}
    except (AttributeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a JSON list or object {{index: name}} of class names ({exc})") from None
    return {int(k): str(v) for k, v in labels.items()}


def convert(args_path: str | os.PathLike, weights_path: str | os.PathLike, output: str | os.PathLike,
            labels_path: str | os.PathLike | None = None) -> Path:
    """Write the checkpoint directory ``output`` for a vit-pytorch ViViT; returns it."""
    import torch

    from vivit_deploy.model.factorised import FactorisedVivitForVideoClassification
    from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor

    args = read_args(args_path)
    config = config_from_args(args, read_labels(labels_path))
    with torch.device("meta"):
        model = FactorisedVivitForVideoClassification(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = convert_state_dict(read_weights(weights_path), config, str(weights_path), expected)
    _check_state_dict(model, state, str(weights_path))
    model.load_state_dict(state, strict=True, assign=True)
    model = model.float().eval()
    preprocessor = PreprocessorConfig.for_input_size(config.image_height, config.image_width)
    from dataclasses import replace

    preprocessor = replace(preprocessor, extra={**preprocessor.extra, "note": PREPROCESSOR_NOTE})
    return model.save_pretrained(output, preprocessor=VideoPreprocessor(preprocessor))


__all__ = ["PREPROCESSOR_NOTE", "config_from_args", "convert", "convert_state_dict", "key_map", "read_args",
           "read_labels", "read_weights"]
