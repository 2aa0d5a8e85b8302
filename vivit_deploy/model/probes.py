"""The model's parts: every module that work outside ``model/`` touches (per-layer drift, the range watch, the fp32
units of ``--keep-fp32``, quantisation's float islands, the exporter, converters), by part name, and the probe points
among them: the hidden states per-layer drift compares, with their stable names. Nothing outside ``model/`` spells a
module path or parses a parameter name; it asks here (``model_parts``, ``part_path``, ``locate_parameter``).

Every file ``vivit-export`` writes names the output tensor of these modules ``<module path>:output``,
the module path being the checkpoint's own parameter prefix, so any tool finds them without knowing
how the graph was traced (Netron, Polygraphy ``--onnx-outputs``, ONNX Runtime, OpenVINO):

    vivit.embeddings:output                                tokens + CLS + positions
    vivit.encoder.layer.L.layernorm_before:output          attention's input, normalised
    vivit.encoder.layer.L.attention:output                 the attention branch (before the residual add)
    vivit.encoder.layer.L.layernorm_after:output           the MLP's input, normalised
    vivit.encoder.layer.L.output:output                    the MLP branch (before the residual add)
    vivit.encoder.layer.L:output                           the block's output, the residual stream
    vivit.encoder.spatial_norm:output                      Model 2: the spatial encoder's final LayerNorm
    vivit.layernorm:output                                 the final LayerNorm

``L`` counts the layers in the order the data flows through them, from 0 as in the parameter names
(``VivitConfig.num_layers``: Model 2's spatial layers then its temporal ones; Model 3's blocks as a layer
attending over space, which has no MLP and so no ``layernorm_after`` and ``output``, then one attending over
time with the MLP). The runtimes that can expose them (ONNX Runtime, OpenVINO) add them as extra outputs when
asked (``probes=True``); PyTorch hooks read the same modules. Numpy-free data, shared by export, runtimes and
accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

SUFFIX = ":output"

# part names: the vocabulary of reports, --keep-fp32 and diagnoses (values as JSON reports write them)
BLOCK = "block"  # a whole layer; its output is the residual stream
NORM_BEFORE = "layernorm_before"  # attention's input LayerNorm
ATTENTION = "attention"  # the attention branch (before the residual add)
NORM_AFTER = "layernorm_after"  # the MLP's input LayerNorm
MLP = "output"  # the MLP branch (before the residual add), named after its module as in the probe names
# inside a layer, without probe points of their own
SELF_ATTENTION = "self_attention"  # Q, K, V, their products and Softmax
QUERY, KEY, VALUE = "query", "key", "value"
QKV = "qkv"  # Q, K and V in one projection (TimeSformer's checkpoints), in place of the three
ATTENTION_PROJECTION = "attention_projection"  # attention's output projection
FC1 = "fc1"  # the MLP's first product
MLP_HIDDEN = "mlp_hidden"  # the MLP's first product and activation: its output is the second product's input
FC2 = "fc2"  # the MLP's second product
# outside the layers
EMBEDDINGS, PROJECTION, SPATIAL_NORM_PART, FINAL_NORM, CLASSIFIER = (
    "embeddings", "projection", "spatial_norm", "final_norm", "classifier")
POOLER = "pooler"  # V-JEPA 2's attentive probe, between the final LayerNorm and the classifier (config.attentive_pooler)
TEMPORAL_INPUTS = "temporal_inputs"  # Model 2: the temporal encoder's CLS token and positions (parameters)

# the path of each part of a layer, under the layer's own path, per layer layout (``config.layer_layout``): "vit" is
# ViViT's, VideoMAE's and TimeSformer's; "vjepa2" V-JEPA 2's (its MLP's activation is a module of its own, and its
# attention module holds Q, K, V and the output projection)
_LAYER_PATHS = {
    "vit": {BLOCK: "", NORM_BEFORE: "layernorm_before", ATTENTION: "attention", SELF_ATTENTION: "attention.attention",
            QUERY: "attention.attention.query", KEY: "attention.attention.key", VALUE: "attention.attention.value",
            QKV: "attention.attention.qkv", ATTENTION_PROJECTION: "attention.output.dense",
            NORM_AFTER: "layernorm_after", FC1: "intermediate.dense", MLP_HIDDEN: "intermediate", MLP: "output",
            FC2: "output.dense"},
    "vjepa2": {BLOCK: "", NORM_BEFORE: "norm1", ATTENTION: "attention", SELF_ATTENTION: "attention",
               QUERY: "attention.query", KEY: "attention.key", VALUE: "attention.value",
               ATTENTION_PROJECTION: "attention.proj", NORM_AFTER: "norm2", FC1: "mlp.fc1",
               MLP_HIDDEN: "mlp.activation", MLP: "mlp", FC2: "mlp.fc2"},
}
# the path of each part outside the layers, under the encoder's prefix ("vivit.", "videomae.", ...; config.base_prefix)
_ENCODER_PATHS = {
    "vit": {EMBEDDINGS: "embeddings", PROJECTION: "embeddings.patch_embeddings",
            SPATIAL_NORM_PART: "encoder.spatial_norm", FINAL_NORM: "layernorm", TEMPORAL_INPUTS: "encoder.temporal_"},
    "vjepa2": {EMBEDDINGS: "encoder.embeddings", PROJECTION: "encoder.embeddings.patch_embeddings",
               FINAL_NORM: "encoder.layernorm"},
}
# which module of a layer (the first name under the layer's path) belongs to which probe part, per layout
_LAYER_MODULES = {
    "vit": {"attention": ATTENTION, "intermediate": MLP, "output": MLP, "layernorm_before": NORM_BEFORE,
            "layernorm_after": NORM_AFTER},
    "vjepa2": {"attention": ATTENTION, "mlp": MLP, "norm1": NORM_BEFORE, "norm2": NORM_AFTER},
}
# the parts of one encoder layer that are probe points, in the order the data flows through them
LAYER_PARTS = (NORM_BEFORE, ATTENTION, NORM_AFTER, MLP, BLOCK)
PART_TITLES = {NORM_BEFORE: "LayerNorm before attention", ATTENTION: "attention",
               NORM_AFTER: "LayerNorm before the MLP", MLP: "MLP", BLOCK: "residual stream",
               EMBEDDINGS: "the embeddings (tubelet projection, CLS token, positions)",
               FINAL_NORM: "the final LayerNorm", CLASSIFIER: "the classifier (the logits)",
               POOLER: "the attentive probe (pooler)",
               SPATIAL_NORM_PART: "the spatial encoder's final LayerNorm"}
# a layer that attends over space in Model 3 has no MLP (and no LayerNorm before one)
SPACE_LAYER_PARTS = (NORM_BEFORE, ATTENTION, BLOCK)
_MLP_PARTS = (NORM_AFTER, FC1, MLP_HIDDEN, MLP, FC2)
# the parts of a layer judged by their own output too: a branch whose error is large against what it computes may be
# small against the residual stream it is added to, and still reach the logits through the final LayerNorm
BRANCHES = (ATTENTION, MLP)


@dataclass(frozen=True)
class ProbePoint:
    module: str  # the module path, e.g. "vivit.encoder.layer.2.attention"
    layer: int | None  # the encoder layer, None for the embeddings and the final norm
    part: str  # "embeddings", one of LAYER_PARTS, or "final_norm"

    @property
    def tensor(self) -> str:
        """The stable tensor name in an exported graph."""
        return self.module + SUFFIX


@dataclass(frozen=True)
class ModelPart:
    """One part of a model: where it sits (``layer``, None outside the layers), what it is (``name``), its module
    (``path``, the checkpoint's parameter prefix: ``model.get_submodule(part.path)``) and, for a probe point, the
    tensor name every export gives its output (``probe``)."""

    layer: int | None
    name: str
    path: str
    probe: str | None = None


def layer_module(layer: int, part: str, config=None) -> str:
    """The module path of ``part`` of layer ``layer`` (checkpoint names count layers from 0)."""
    return part_path(part, layer, config)


def _prefix(config) -> str:
    """The encoder's parameter prefix of ``config``'s model ("vivit", "videomae"); ViViT's without a config."""
    return "vivit" if config is None else config.base_prefix


def _layout(config) -> str:
    """How ``config``'s model names a layer's modules (``_LAYER_PATHS``); ViViT's without a config."""
    return "vit" if config is None else config.layer_layout


def part_path(part: str, layer: int | None = None, config=None) -> str:
    """The module path of ``part``: of layer ``layer``, or outside the layers. ``config`` names the model: its
    encoder's prefix ("vivit.", "videomae."; ViViT's without one), the embeddings' projection (Model 1 and Models 2
    and 3 write it differently) and the final norm (VideoMAE's mean pooling normalises in ``fc_norm``)."""
    prefix, layout = _prefix(config), _layout(config)
    if layer is not None:
        base = f"{prefix}.encoder.layer.{layer}"
        sub = _LAYER_PATHS[layout][part]
        return f"{base}.{sub}" if sub else base
    if part == PROJECTION and config is not None and config.factorised:
        return f"{prefix}.embeddings.projection"
    if part in (CLASSIFIER, POOLER):  # the head, outside the encoder's prefix
        return part
    if part == FINAL_NORM and getattr(config, "use_mean_pooling", False):
        return "fc_norm"
    return f"{prefix}.{_ENCODER_PATHS[layout][part]}"


def path_in_layer(part: str, config=None) -> str:
    """The module path of a layer's ``part`` under the layer ("intermediate.dense" for the MLP's first product in
    ViViT's layout): how a message names it so a user finds it among the checkpoint's parameters."""
    return _LAYER_PATHS[_layout(config)][part]


def has_head_part(config, part: str) -> bool:
    """Whether ``config``'s model has ``part`` outside its layers (Model 2's spatial norm, V-JEPA 2's attentive probe)."""
    if part == POOLER:
        return config is not None and config.attentive_pooler
    if part == SPATIAL_NORM_PART:
        return config is not None and config.variant == "factorised_encoder"
    return True


def has_part(config, layer: int, part: str) -> bool:
    """Whether layer ``layer`` of ``config``'s model has ``part`` (Model 3's layers over space have no MLP; TimeSformer
    projects Q, K and V in one ``qkv``, the others in three)."""
    if part in (QUERY, KEY, VALUE, QKV):
        return (part == QKV) == bool(getattr(config, "fused_qkv", False)) and part in _LAYER_PATHS[_layout(config)]
    return not (config.layer_kind(layer) == "space" and part in _MLP_PARTS)


def layer_parts(config, layer: int) -> tuple[str, ...]:
    """The probe parts layer ``layer`` of ``config``'s model has, in the order the data flows through them."""
    return tuple(p for p in LAYER_PARTS if has_part(config, layer, p))


def model_parts(config, parts: tuple[str, ...] | None = None) -> list[ModelPart]:
    """The parts of ``config``'s model (a ``VivitConfig``) in the order the data reaches them: the embeddings, each
    layer's parts (``parts``: which; default the probe points), Model 2's spatial norm after its spatial layers, the
    final LayerNorm. Probe points carry their tensor name."""
    wanted = LAYER_PARTS if parts is None else parts

    def make(layer, name, path):
        return ModelPart(layer, name, path, path + SUFFIX if name in LAYER_PARTS or layer is None else None)

    out = [make(None, EMBEDDINGS, part_path(EMBEDDINGS, config=config))]
    for layer in range(config.num_layers):
        out += [make(layer, p, part_path(p, layer, config)) for p in wanted if has_part(config, layer, p)]
        if config.variant == "factorised_encoder" and layer == config.num_hidden_layers - 1:
            out.append(make(None, SPATIAL_NORM_PART, part_path(SPATIAL_NORM_PART, config=config)))
    out.append(make(None, FINAL_NORM, part_path(FINAL_NORM, config=config)))
    return out


def probe_points(config) -> list[ProbePoint]:
    """Every probe point of ``config``'s model (a ``VivitConfig``), in the order the data reaches them."""
    return [ProbePoint(p.path, p.layer, p.name) for p in model_parts(config) if p.probe is not None]


def locate_parameter(name: str, config) -> tuple[int, str, str]:
    """Where parameter ``name`` sits: (layer, probe part, the module that owns it) inside a layer, or (-1, the outside
    part: embeddings, spatial_norm, final_norm, classifier, its module). Model 2's temporal CLS token and positions
    are the temporal layers' input, parameters of their own: (its first temporal layer, "block", the name)."""
    owner = name.rsplit(".", 1)[0]
    prefix = f"{_prefix(config)}.encoder.layer."
    if name.startswith(prefix):
        layer, _, rest = name[len(prefix):].partition(".")
        part = _LAYER_MODULES[_layout(config)].get(rest.split(".")[0], BLOCK)
        return int(layer), part, owner
    outside = _ENCODER_PATHS[_layout(config)]
    if TEMPORAL_INPUTS in outside and name.startswith(part_path(TEMPORAL_INPUTS, config=config)):
        return config.num_hidden_layers, BLOCK, name
    for part in (EMBEDDINGS, SPATIAL_NORM_PART, FINAL_NORM):
        if part in outside and name.startswith(part_path(part, config=config) + "."):
            return -1, part, owner
    return -1, POOLER if name.startswith(POOLER + ".") else CLASSIFIER, owner


# every model family's encoder prefix (config.base_prefix) and the layout of its layers (config.layer_layout)
BASE_PREFIXES = {"vivit": "vit", "videomae": "vit", "timesformer": "vit", "vjepa2": "vjepa2"}
PROBE_PREFIXES = tuple(p + "." for p in BASE_PREFIXES) + ("fc_norm:",)  # where every model's probe tensor names start
# every family's embeddings (the tubelet projection)
EMBEDDING_MODULES = tuple(f"{prefix}.{_ENCODER_PATHS[layout][EMBEDDINGS]}" for prefix, layout in BASE_PREFIXES.items())


def is_probe_name(name: str) -> bool:
    return name.endswith(SUFFIX) and name.startswith(PROBE_PREFIXES)
