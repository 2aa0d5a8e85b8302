"""The model configuration: a frozen dataclass that reads and writes transformers' ``config.json`` for ViViT.

Only the fields that change the computation are typed here; every other key of ``config.json``
(``architectures``, ``transformers_version``, ``torch_dtype``, ...) is kept in ``extra`` and written back
unchanged, so a checkpoint saved by us still loads in transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vivit_deploy.errors import ConfigError

# Activation names transformers uses for ViViT, mapped to the two functions they really are.
# gelu_fast, gelu_new and gelu_pytorch_tanh are three spellings of the tanh approximation of GELU
# (they differ from each other by rounding only, ~1e-7); "gelu" is the exact erf form.
ACTIVATIONS: dict[str, str] = {
    "gelu_fast": "tanh",
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu": "none",
}
POOLER_ACTIVATIONS = ("tanh", "relu", "gelu", "gelu_fast", "gelu_new", "gelu_pytorch_tanh", "linear")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")

_MODEL_TYPE = "vivit"
# Models 2 and 3 are not transformers' ViViT: another model_type keeps transformers from loading one as Model 1
FACTORISED_MODEL_TYPE = "vivit_factorised"
# The paper's models this package computes: Model 1 (joint space-time attention, transformers' ViViT), Model 2 (the
# factorised encoder: a spatial encoder per time step, then a temporal encoder), Model 3 (factorised self-attention:
# each block attends over space, then over time); Models 2 and 3 in vit-pytorch's layout (model/factorised.py)
VARIANTS = ("joint", "factorised_encoder", "factorised_self_attention")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def schedule_text(schedule: tuple[int, ...], sep: str = ", ") -> str:
    """Token merging's r per layer in words: the one r when every layer has it ("300"), else each ("300, 300, 200")."""
    return str(schedule[0]) if len(set(schedule)) == 1 else sep.join(map(str, schedule))


def merged_token_counts(num_tokens: int, schedule: tuple[int, ...]) -> tuple[int, ...]:
    """Tokens (the class token included) each layer hands on: ToMe merges at most half of a layer's tokens besides the
    class token, so a layer of t tokens merges min(r, (t - 1) // 2). Fixed by the schedule: the graph stays static."""
    counts = []
    for r in schedule:
        num_tokens -= min(r, (num_tokens - 1) // 2)
        counts.append(num_tokens)
    return tuple(counts)


def check_attn_implementation(name: str) -> str:
    """``name`` when it is an attention path every model offers, else a ConfigError naming the argument."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"attn_implementation= must be one of {ATTN_IMPLEMENTATIONS}, got {name!r}")
    return name
POOLINGS = ("cls", "mean")
# Model 2's position embeddings: "per_step" (vit-pytorch's: one table over (time step, patch), added before the spatial
# encoder, so a step's spatial output depends on where it sits in the clip) or "separate" (the paper's: a spatial
# table shared by every step, a temporal table added before the temporal encoder; a step's spatial output is the same
# wherever it sits, which lets a stream reuse it)
POSITIONS = ("per_step", "separate")


@dataclass(frozen=True)
class VivitConfig:
    """Geometry and numerics of a ViViT Model 1 (unfactorised spatio-temporal attention).

    Defaults are ViViT-B/16x2 as in ``google/vivit-b-16x2-kinetics400``.
    """

    image_size: int | tuple[int, int] = 224  # input frame size after preprocessing: side, or (height, width)
    num_frames: int = 32  # frames per clip the model takes
    tubelet_size: tuple[int, int, int] = (2, 16, 16)  # (frames, height, width) of one token
    num_channels: int = 3  # colour channels of the input
    hidden_size: int = 768  # token width
    num_hidden_layers: int = 12  # encoder depth
    num_attention_heads: int = 12  # heads per attention layer; must divide hidden_size
    intermediate_size: int = 3072  # MLP hidden width
    hidden_act: str = "gelu_fast"  # activation of the MLP, one of ACTIVATIONS
    hidden_dropout_prob: float = 0.0  # dropout after attention and MLP, training only
    attention_probs_dropout_prob: float = 0.0  # dropout on attention weights, training only
    initializer_range: float = 0.02  # std of the normal init of linear and conv weights
    layer_norm_eps: float = 1e-6  # epsilon of every LayerNorm
    qkv_bias: bool = True  # whether query/key/value projections have a bias
    pooler_output_size: int | None = None  # width of VivitModel's pooler; None becomes hidden_size
    pooler_act: str = "tanh"  # activation of VivitModel's pooler
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})  # classifier labels
    problem_type: str | None = None  # the loss with labels: None (chosen from the labels, as transformers does), or
    #                                  "regression", "single_label_classification", "multi_label_classification"
    output_attentions: bool = False  # forward's defaults, as transformers' config carries them
    output_hidden_states: bool = False
    return_dict: bool = True
    variant: str = "joint"  # one of VARIANTS; config.json has it only for Models 2 and 3
    temporal_layers: int = 0  # Model 2: the temporal encoder's depth (num_hidden_layers is the spatial encoder's)
    pooling: str = "cls"  # Models 2 and 3: "cls" (class tokens) or "mean" (the tokens' average)
    attention_head_dim: int | None = None  # one head's width (vit-pytorch's dim_head); None: hidden_size // heads
    positions: str = "per_step"  # Model 2: one of POSITIONS
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # other config.json keys, kept verbatim

    def __post_init__(self) -> None:
        # Normalise the containers first so that the checks below see one form.
        tubelet = self.tubelet_size
        if isinstance(tubelet, int) or len(tuple(tubelet)) != 3:
            raise ConfigError(f"tubelet_size must be three integers (frames, height, width), got {tubelet!r}")
        object.__setattr__(self, "tubelet_size", tuple(int(t) for t in tubelet))
        image = self.image_size
        if not isinstance(image, int):
            image = tuple(int(s) for s in image)
            if len(image) != 2:
                raise ConfigError(f"image_size must be an integer or (height, width), got {self.image_size!r}")
        object.__setattr__(self, "image_size", image)
        object.__setattr__(self, "id2label", {int(k): str(v) for k, v in self.id2label.items()})
        if self.pooler_output_size is None:  # transformers' rule: the pooler is as wide as the tokens
            object.__setattr__(self, "pooler_output_size", self.hidden_size)
        self._validate()

    def _validate(self) -> None:
        positive = {
            "num_frames": self.num_frames,
            "num_channels": self.num_channels,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "image height": self.image_height,
            "image width": self.image_width,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if any(t < 1 for t in self.tubelet_size):
            raise ConfigError(f"tubelet_size must be positive, got {self.tubelet_size}")
        t, ph, pw = self.tubelet_size
        if self.num_frames < t or self.image_height < ph or self.image_width < pw:
            raise ConfigError(f"{self.num_frames} frames of {self.image_height}x{self.image_width} hold no whole "
                              f"{t}x{ph}x{pw} tubelet")
        # Heads that do not divide the width, and sizes that are no whole number of tubelets, are what transformers'
        # config accepts too: the model refuses the first and floors the second (modeling.check_geometry).
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        if self.pooler_act not in POOLER_ACTIVATIONS:
            raise ConfigError(f"pooler_act {self.pooler_act!r} is not supported; use one of {POOLER_ACTIVATIONS}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {p}")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ConfigError(f"id2label keys must be 0..N-1, got {sorted(self.id2label)}")
        self._validate_variant()

    def _validate_variant(self) -> None:
        for name, allowed in (("variant", VARIANTS), ("pooling", POOLINGS), ("positions", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        head = self.attention_head_dim
        if head is not None and (not isinstance(head, int) or isinstance(head, bool) or head < 1):
            raise ConfigError(f"attention_head_dim must be a positive integer, got {head!r}")
        if self.variant == "joint":
            if self.temporal_layers or self.pooling != "cls" or self.positions != "per_step":
                raise ConfigError("temporal_layers, pooling and positions belong to the factorised variants; Model 1 "
                                  "(variant 'joint') pools its CLS token")
            return
        if self.variant == "factorised_encoder" and (not isinstance(self.temporal_layers, int) or self.temporal_layers < 1):
            raise ConfigError(f"the factorised encoder needs temporal_layers >= 1, got {self.temporal_layers!r}")
        if self.variant == "factorised_self_attention" and (self.temporal_layers or self.positions != "per_step"):
            raise ConfigError("factorised self-attention has one depth (num_hidden_layers) and per-step positions")
        t, ph, pw = self.tubelet_size
        if self.num_frames % t or self.image_height % ph or self.image_width % pw:
            raise ConfigError(f"the factorised variants take whole tubelets: {self.num_frames} frames of "
                              f"{self.image_height}x{self.image_width} are not multiples of {t}x{ph}x{pw}")

    # ---- derived geometry -------------------------------------------------------------------------
    @property
    def image_height(self) -> int:
        return self.image_size if isinstance(self.image_size, int) else self.image_size[0]

    @property
    def image_width(self) -> int:
        return self.image_size if isinstance(self.image_size, int) else self.image_size[1]

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def head_dim(self) -> int:
        return self.attention_head_dim or self.hidden_size // self.num_attention_heads

    @property
    def factorised(self) -> bool:
        return self.variant != "joint"

    @property
    def model_type(self) -> str:
        """``config.json``'s model_type: which model family computes it (``model/registry.py``)."""
        return FACTORISED_MODEL_TYPE if self.factorised else _MODEL_TYPE

    @property
    def class_tokens(self) -> int:
        """Tokens in front of the tubelets' (ViViT's CLS token: 1; a model without one says 0)."""
        return 1

    @property
    def attention_blocks(self) -> int:
        """Q·Kᵀ -> Softmax -> ·V blocks in one forward pass: one per layer (TimeSformer's divided blocks hold two)."""
        return self.num_layers

    def layer_weight_products(self, layer: int) -> int:
        """The weight products (MatMuls) of layer ``layer``: Q/K/V (fused in an export), the attention's output, and
        the MLP's two where it has one (Model 3's layers over space have none)."""
        return 2 if self.layer_kind(layer) == "space" else 4

    @property
    def key_bias(self) -> bool:
        """Whether the key projection has a bias (ViViT: as the query and value ones, ``qkv_bias``)."""
        return self.qkv_bias

    @property
    def base_prefix(self) -> str:
        """The encoder's parameter prefix in a classifier checkpoint (``vivit.``...; transformers' base_model_prefix)."""
        return "vivit"

    @property
    def layer_layout(self) -> str:
        """How a layer names its modules (``model/probes.py``): "vit" (``layernorm_before``, ``attention.output.dense``,
        ``intermediate.dense``...; ViViT, VideoMAE, TimeSformer) or "vjepa2" (``norm1``, ``attention.proj``,
        ``mlp.fc1``...)."""
        return "vit"

    @property
    def attentive_pooler(self) -> bool:
        """Whether an attentive probe (``pooler``: attention layers of its own) pools the tokens for the classifier, as
        V-JEPA 2's does; ViViT's classifier reads a token or the mean."""
        return False

    @property
    def num_layers(self) -> int:
        """Transformer layers in the order the data flows through them, each one set of probe points and one
        --keep-fp32 unit: Model 1's layers; Model 2's spatial layers, then its temporal ones; Model 3's blocks as
        two layers each, attention over space (no MLP), then attention over time and the MLP."""
        if self.variant == "factorised_encoder":
            return self.num_hidden_layers + self.temporal_layers
        if self.variant == "factorised_self_attention":
            return 2 * self.num_hidden_layers
        return self.num_hidden_layers

    def layer_kind(self, layer: int) -> str:
        """What layer ``layer`` (of ``num_layers``) attends over: "joint" (every token), "spatial" (Model 2's spatial
        encoder: one time step's tokens), "temporal" (Model 2's temporal encoder: the time steps' tokens), "space" and
        "time" (Model 3: a block's attention over space, then over time with the MLP)."""
        if self.variant == "factorised_encoder":
            return "spatial" if layer < self.num_hidden_layers else "temporal"
        if self.variant == "factorised_self_attention":
            return "space" if layer % 2 == 0 else "time"
        return "joint"

    def layer_title(self, layer: int) -> str:
        """How reports name a layer: "layer 3", "spatial layer 3", "temporal layer 0", "block 1, time"."""
        kind = self.layer_kind(layer)
        if kind == "spatial":
            return f"spatial layer {layer}"
        if kind == "temporal":
            return f"temporal layer {layer - self.num_hidden_layers}"
        if kind in ("space", "time"):
            return f"block {layer // 2}, {kind}"
        return f"layer {layer}"

    @property
    def attention_layers(self) -> int:
        """Attention blocks in one forward pass (what a TensorRT build may fuse)."""
        return self.num_layers

    @property
    def use_return_dict(self) -> bool:  # transformers' name
        return self.return_dict

    @property
    def grid(self) -> tuple[int, int, int]:
        """Number of tubelets along (time, height, width)."""
        t, ph, pw = self.tubelet_size
        return self.num_frames // t, self.image_height // ph, self.image_width // pw

    @property
    def num_patches(self) -> int:
        gt, gh, gw = self.grid
        return gt * gh * gw

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of one clip as the model takes it: (frames, channels, height, width)."""
        return self.num_frames, self.num_channels, self.image_height, self.image_width

    def token_counts(self, merge_tokens: tuple[int, ...]) -> tuple[int, ...]:
        """The tokens (the class token included) each layer hands on with token merging's r per layer: Model 1's over
        the whole clip; Model 2's spatial layers per time step, then its temporal layers (one token per step)."""
        if self.variant == "factorised_encoder":
            cls = 1 if self.pooling == "cls" else 0
            spatial = merged_token_counts(self.grid[1] * self.grid[2] + cls, tuple(merge_tokens[:self.num_hidden_layers])
                                          + (0,) * max(self.num_hidden_layers - len(merge_tokens), 0))
            return spatial + (self.grid[0] + cls,) * self.temporal_layers
        return merged_token_counts(self.num_patches + self.class_tokens, tuple(merge_tokens))

    def flops_per_clip(self, merge_tokens: tuple[int, ...] = ()) -> float:
        """Multiply-adds x 2 of one forward pass, the figure benchmarks divide by: the weight products and the
        attention products (Q·Kᵀ, P·V) of every layer over the sequences it attends over, the tubelet projection
        and the classifier (LayerNorm, Softmax and GELU are left out, as is usual). ``merge_tokens`` (r per layer, Models
        1 and 2): each layer attends over the tokens it receives, merges, and runs its MLP over fewer; the matching's
        own product (the keys of set A against set B's) is counted too."""
        d, m, inner = self.hidden_size, self.intermediate_size, self.num_attention_heads * self.head_dim
        t, ph, pw = self.tubelet_size
        embed = 2 * self.num_patches * d * self.num_channels * t * ph * pw
        head = 2 * d * self.num_labels

        def attention(sequences: int, length: int) -> float:  # Q, K, V, the output projection, QKᵀ and PV
            return sequences * (2 * length * 4 * d * inner + 2 * 2 * length * length * inner)

        def mlp(tokens: int) -> float:
            return 2 * tokens * 2 * d * m

        cls = 1 if self.pooling == "cls" else 0
        steps, space = self.grid[0], self.grid[1] * self.grid[2]
        if self.variant == "factorised_encoder":
            spatial, n = 0.0, space + cls
            for r, after in zip(tuple(merge_tokens[:self.num_hidden_layers]) + (0,) * self.num_hidden_layers,
                                self.token_counts(merge_tokens)[:self.num_hidden_layers]):
                matching = 2 * ((n + 1) // 2) * (n // 2) * self.head_dim if r else 0
                spatial += attention(steps, n) + steps * matching + mlp(steps * after)
                n = after
            temporal = self.temporal_layers * (attention(1, steps + cls) + mlp(steps + cls))
            return float(embed + spatial + temporal + head)
        if self.variant == "factorised_self_attention":
            tokens = steps * (space + cls)
            block = attention(steps, space + cls) + attention(space + cls, steps) + mlp(tokens)
            return float(embed + self.num_hidden_layers * block + head)
        n = self.num_patches + self.class_tokens
        if not any(merge_tokens):
            return float(embed + self.num_hidden_layers * (attention(1, n) + mlp(n)) + head)
        layers = 0.0
        for r, after in zip(merge_tokens, self.token_counts(merge_tokens)):
            matching = 2 * ((n + 1) // 2) * (n // 2) * self.head_dim if r else 0
            layers += attention(1, n) + matching + mlp(after)
            n = after
        return float(embed + layers + head)

    # ---- config.json ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VivitConfig":
        """Build from the dict of a transformers ``config.json``; unknown keys go to ``extra``."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type", _MODEL_TYPE)
        if model_type not in (_MODEL_TYPE, FACTORISED_MODEL_TYPE):
            raise ConfigError(f"config.json describes a {model_type!r} model, not ViViT ('vivit' or "
                              f"'{FACTORISED_MODEL_TYPE}')")
        if (model_type == FACTORISED_MODEL_TYPE) != (data.get("variant", "joint") != "joint"):
            raise ConfigError(f"config.json's model_type {model_type!r} and variant {data.get('variant', 'joint')!r} "
                              f"disagree ('{FACTORISED_MODEL_TYPE}' is Models 2 and 3, 'vivit' Model 1)")
        names = {f.name for f in fields(cls)} - {"extra", "id2label"}
        kwargs = {k: v for k, v in data.items() if k in names}
        id2label = data.get("id2label")
        if id2label is None:
            num_labels = int(data.get("num_labels", 2))
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        try:
            id2label = {int(k): v for k, v in id2label.items()}
        except (AttributeError, ValueError) as exc:
            raise ConfigError(f"id2label must map integer ids to names, got {id2label!r}") from exc
        skip = names | {"id2label", "label2id", "num_labels", "model_type"}
        extra = {k: v for k, v in data.items() if k not in skip}
        try:
            return cls(**kwargs, id2label=id2label, extra=extra)
        except TypeError as exc:  # a field of the wrong kind, e.g. a string where a number goes
            raise ConfigError(f"invalid config: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict, in the layout transformers writes."""
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name in ("extra", "id2label"):
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["id2label"] = {str(i): label for i, label in self.id2label.items()}
        out["label2id"] = {label: i for i, label in self.id2label.items()}
        out["model_type"] = self.model_type
        if not self.factorised:  # Model 1's config.json stays the one transformers writes
            for name in ("variant", "temporal_layers", "pooling", "positions"):
                del out[name]
            if self.attention_head_dim is None:
                del out["attention_head_dim"]
        return dict(sorted(out.items()))

    @classmethod
    def from_pretrained(cls, source: str | Path, **hub_kwargs: Any) -> "VivitConfig":
        """transformers' entry point: the ``config.json`` of a checkpoint directory or Hub id."""
        from vivit_deploy.model.hf_layout import CONFIG_NAME, resolve_source

        return cls.from_json_file(resolve_source(source, **hub_kwargs) / CONFIG_NAME)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "VivitConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable JSON config ({exc})") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


VIDEOMAE_MODEL_TYPE = "videomae"


@dataclass(frozen=True)
class VideoMAEConfig(VivitConfig):
    """VideoMAE's config: ViViT's geometry fields (``tubelet_size`` as (frames, height, width), read from
    config.json's ``tubelet_size`` and ``patch_size``), plus ``qv_bias`` and ``use_mean_pooling``. Defaults are
    VideoMAE-B's (transformers' ``VideoMAEConfig``)."""

    num_frames: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    qv_bias: bool = True  # query and value projections with a bias; the key projection has none
    use_mean_pooling: bool = True  # mean of the tokens through fc_norm; False: the first token after the final norm

    def __post_init__(self) -> None:
        object.__setattr__(self, "qkv_bias", bool(self.qv_bias))  # what the query and value projections read
        if self.variant != "joint":
            raise ConfigError("VideoMAE attends over space and time jointly: variant must be 'joint'")
        super().__post_init__()

    @property
    def model_type(self) -> str:
        return VIDEOMAE_MODEL_TYPE

    @property
    def class_tokens(self) -> int:
        return 0

    @property
    def key_bias(self) -> bool:
        return False

    @property
    def base_prefix(self) -> str:
        return "videomae"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VideoMAEConfig":
        """From transformers' VideoMAE ``config.json``: ``tubelet_size`` (frames) and ``patch_size`` (pixels, or
        (height, width)) make the tubelet; the pre-training decoder's keys are kept as they are."""
        data = _family_dict(data, VIDEOMAE_MODEL_TYPE, "VideoMAE")
        frames = data.pop("tubelet_size", 2)
        patch = data.pop("patch_size", 16)
        if isinstance(frames, (list, tuple)):  # our own to_dict never writes this; a 3-tuple is the whole tubelet
            tubelet = tuple(frames)
        else:
            ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
            tubelet = (frames, ph, pw)
        data.pop("qkv_bias", None)  # VideoMAE's is qv_bias
        return _from_dict(cls, data, tubelet_size=tubelet)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` transformers writes for VideoMAE (``tubelet_size`` frames, ``patch_size`` pixels)."""
        out = super().to_dict()
        t, ph, pw = self.tubelet_size
        out.update(model_type=VIDEOMAE_MODEL_TYPE, tubelet_size=t, patch_size=ph if ph == pw else [ph, pw])
        for name in ("qkv_bias", "pooler_act", "pooler_output_size"):
            out.pop(name, None)
        return dict(sorted(out.items()))


TIMESFORMER_MODEL_TYPE = "timesformer"
TIMESFORMER_ATTENTION = ("divided_space_time", "joint_space_time", "space_only")


@dataclass(frozen=True)
class TimesformerConfig(VivitConfig):
    """TimeSformer's config (Bertasius et al., ICML 2021; transformers' ``TimesformerConfig``): every frame is cut into
    ``patch_size`` patches (a tubelet of one frame: ``tubelet_size`` (1, p, p)), a class token, learned space and
    time positions, and ``attention_type``: "divided_space_time" (attention over time, then over space, in every
    block), "joint_space_time" (over every token, as ViViT's Model 1) or "space_only" (each frame on its own).
    Defaults are TimeSformer-B's."""

    num_frames: int = 8
    tubelet_size: tuple[int, int, int] = (1, 16, 16)
    hidden_act: str = "gelu"
    attention_type: str = "divided_space_time"
    drop_path_rate: float = 0.0  # stochastic depth: training only

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention_type not in TIMESFORMER_ATTENTION:
            raise ConfigError(f"attention_type must be one of {TIMESFORMER_ATTENTION}, got {self.attention_type!r}")
        if self.tubelet_size[0] != 1:
            raise ConfigError(f"TimeSformer cuts each frame into patches: tubelet_size must be (1, p, p), got "
                              f"{self.tubelet_size}")

    @property
    def model_type(self) -> str:
        return TIMESFORMER_MODEL_TYPE

    @property
    def fused_qkv(self) -> bool:
        """Q, K and V come from one ``qkv`` projection (the checkpoints' layout)."""
        return True

    @property
    def attention_blocks(self) -> int:
        return self.num_hidden_layers * (2 if self.attention_type == "divided_space_time" else 1)

    def layer_weight_products(self, layer: int) -> int:
        """A divided block also attends over time: its Q/K/V, its output projection and ``temporal_dense``."""
        return 4 + (3 if self.attention_type == "divided_space_time" else 0)

    @property
    def base_prefix(self) -> str:
        return "timesformer"

    def flops_per_clip(self, merge_tokens: tuple[int, ...] = ()) -> float:
        """As ``VivitConfig.flops_per_clip``, for the attention type: divided space-time attends over time within each
        patch position (plus the temporal projection) and over space within each frame (its class token with it);
        joint over all 1 + T x N tokens; space only within each frame."""
        if any(merge_tokens):
            raise ConfigError("merge_tokens= does not apply to TimeSformer")
        d, m = self.hidden_size, self.intermediate_size
        frames, space = self.num_frames, self.grid[1] * self.grid[2]
        embed = 2 * frames * space * d * self.num_channels * self.tubelet_size[1] * self.tubelet_size[2]

        def attention(sequences: int, length: int) -> float:
            return sequences * (2 * length * 4 * d * d + 2 * 2 * length * length * d)

        def mlp(tokens: int) -> float:
            return 2 * tokens * 2 * d * m

        if self.attention_type == "divided_space_time":
            layer = (attention(space, frames) + 2 * space * frames * d * d + attention(frames, space + 1)
                     + mlp(1 + frames * space))
        elif self.attention_type == "joint_space_time":
            layer = attention(1, 1 + frames * space) + mlp(1 + frames * space)
        else:
            layer = attention(frames, space + 1) + mlp(frames * (space + 1))
        return float(embed + self.num_hidden_layers * layer + 2 * d * self.num_labels)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TimesformerConfig":
        """From transformers' TimeSformer ``config.json`` (``patch_size`` pixels, or (height, width))."""
        data = _family_dict(data, TIMESFORMER_MODEL_TYPE, "TimeSformer")
        patch = data.pop("patch_size", 16)
        data.pop("tubelet_size", None)
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        return _from_dict(cls, data, tubelet_size=(1, ph, pw))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        _, ph, pw = self.tubelet_size
        out.update(model_type=TIMESFORMER_MODEL_TYPE, patch_size=ph if ph == pw else [ph, pw])
        if float(self.drop_path_rate).is_integer():  # transformers 5 types it int and refuses 0.0 when it reads it back
            out["drop_path_rate"] = int(self.drop_path_rate)
        for name in ("tubelet_size", "pooler_act", "pooler_output_size"):
            out.pop(name, None)
        return dict(sorted(out.items()))


VJEPA2_MODEL_TYPE = "vjepa2"
# the pre-training predictor's config keys: kept (written back for transformers), not used (no predictor is built)
_VJEPA2_PREDICTOR_KEYS = ("pred_hidden_size", "pred_num_attention_heads", "pred_num_hidden_layers", "pred_num_mask_tokens",
                          "pred_zero_init_mask_tokens", "pred_mlp_ratio")


@dataclass(frozen=True)
class VJEPA2Config(VivitConfig):
    """V-JEPA 2's config (Assran et al., 2025; transformers' ``VJEPA2Config``), as its video classifier needs it:
    config.json's ``crop_size`` is ``image_size`` (square), ``frames_per_clip`` is ``num_frames``, ``tubelet_size``
    (frames) and ``patch_size`` make the tubelet, ``in_chans`` is ``num_channels``, and the MLP is ``mlp_ratio`` times
    the width. No class token and no learned positions: 3D rotary positions inside each attention, over the grid of
    ``crop_size // patch_size`` patches a side. The classifier pools with an attentive probe of ``num_pooler_layers``
    self-attention layers and one cross-attention layer from a learned query. Defaults are ViT-L's
    (``facebook/vjepa2-vitl-fpc64-256``)."""

    image_size: int | tuple[int, int] = 256
    num_frames: int = 64
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    hidden_act: str = "gelu"
    mlp_ratio: float = 4.0  # the MLP's hidden width over hidden_size (intermediate_size follows from it)
    num_pooler_layers: int = 3  # the attentive probe's self-attention layers
    drop_path_rate: float = 0.0  # stochastic depth: training only

    def __post_init__(self) -> None:
        ratio = self.mlp_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
            raise ConfigError(f"mlp_ratio must be a positive number, got {ratio!r}")
        object.__setattr__(self, "intermediate_size", int(self.hidden_size * ratio))  # as transformers' MLP computes it
        if self.variant != "joint":
            raise ConfigError("V-JEPA 2 attends over space and time jointly: variant must be 'joint'")
        super().__post_init__()
        if self.image_height != self.image_width:
            raise ConfigError(f"V-JEPA 2's rotary positions assume a square frame (crop_size): image_size must be one "
                              f"side, got {self.image_size}")
        if self.tubelet_size[1] != self.tubelet_size[2]:
            raise ConfigError(f"V-JEPA 2's patches are square: tubelet_size must be (t, p, p), got {self.tubelet_size}")
        pooler = self.num_pooler_layers
        if isinstance(pooler, bool) or not isinstance(pooler, int) or pooler < 0:
            raise ConfigError(f"num_pooler_layers must be a whole number >= 0, got {pooler!r}")

    @property
    def model_type(self) -> str:
        return VJEPA2_MODEL_TYPE

    @property
    def class_tokens(self) -> int:
        return 0

    @property
    def base_prefix(self) -> str:
        return "vjepa2"

    @property
    def layer_layout(self) -> str:
        return "vjepa2"

    @property
    def rope_grid(self) -> int:
        """Patches per side of the frame the rotary positions are laid over (``crop_size // patch_size``)."""
        return self.image_height // self.tubelet_size[1]

    @property
    def attention_blocks(self) -> int:
        """The encoder's layers, the probe's self-attention layers and its cross-attention."""
        return self.num_hidden_layers + self.num_pooler_layers + 1

    @property
    def attentive_pooler(self) -> bool:
        return True

    def flops_per_clip(self, merge_tokens: tuple[int, ...] = ()) -> float:
        """As ``VivitConfig.flops_per_clip``, with the attentive probe: its self-attention layers over every token,
        then one learned query attending over them (K and V projected for every token)."""
        if any(merge_tokens):
            raise ConfigError("merge_tokens= does not apply to V-JEPA 2")
        d, n = self.hidden_size, self.num_patches
        t, ph, pw = self.tubelet_size
        embed = 2 * n * d * self.num_channels * t * ph * pw

        def layer(m: int) -> float:  # Q, K, V, the output, QKᵀ and PV, the MLP (m wide)
            return 2 * n * 4 * d * d + 2 * 2 * n * n * d + 2 * n * 2 * d * m

        probe_mlp = 4 * d  # the probe's MLPs are 4 x hidden_size wide whatever mlp_ratio says
        cross = 2 * d * d + 2 * n * 2 * d * d + 2 * 2 * n * d + 2 * 2 * d * probe_mlp
        return float(embed + self.num_hidden_layers * layer(self.intermediate_size)
                     + self.num_pooler_layers * layer(probe_mlp) + cross + 2 * d * self.num_labels)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VJEPA2Config":
        """From transformers' V-JEPA 2 ``config.json`` (see the class for the renamed fields); the predictor's keys are
        kept in ``extra``."""
        data = _family_dict(data, VJEPA2_MODEL_TYPE, "V-JEPA 2")
        patch = data.pop("patch_size", 16)
        if not isinstance(patch, int):
            patch = tuple(patch)
            if len(set(patch)) != 1:
                raise ConfigError(f"V-JEPA 2's patches are square: patch_size must be one number, got {list(patch)}")
            patch = patch[0]
        renamed = {"crop_size": "image_size", "frames_per_clip": "num_frames", "in_chans": "num_channels"}
        for old, new in renamed.items():
            if old in data:
                data[new] = data.pop(old)
        data.pop("intermediate_size", None)  # mlp_ratio decides it
        frames = data.pop("tubelet_size", 2)
        return _from_dict(cls, data, tubelet_size=(frames, patch, patch))

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` transformers writes for V-JEPA 2."""
        out = super().to_dict()
        t, p, _ = self.tubelet_size
        out.update(model_type=VJEPA2_MODEL_TYPE, tubelet_size=t, patch_size=p, crop_size=self.image_height,
                   frames_per_clip=self.num_frames, in_chans=self.num_channels)
        for name in ("image_size", "num_frames", "num_channels", "intermediate_size", "pooler_act",
                     "pooler_output_size"):
            out.pop(name, None)
        for name in ("drop_path_rate", "mlp_ratio"):  # transformers 5 types these int | float: an integer stays one
            if float(out[name]).is_integer():
                out[name] = int(out[name])
        return dict(sorted(out.items()))


def _family_dict(data: Any, model_type: str, title: str) -> dict[str, Any]:
    """A copy of a config.json object, once it is one and of ``model_type`` (absent: taken to be)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
    if data.get("model_type", model_type) != model_type:
        raise ConfigError(f"config.json describes a {data.get('model_type')!r} model, not {title}")
    return dict(data)


def _from_dict(cls, data: dict[str, Any], **given: Any):
    """A config of ``cls`` from a config.json object: its fields, the labels, everything else kept in ``extra``."""
    names = {f.name for f in fields(cls)} - {"extra", "id2label", *given}
    kwargs = {k: v for k, v in data.items() if k in names}
    id2label = data.get("id2label")
    if id2label is None:
        id2label = {i: f"LABEL_{i}" for i in range(int(data.get("num_labels", 2)))}
    try:
        id2label = {int(k): v for k, v in id2label.items()}
    except (AttributeError, ValueError) as exc:
        raise ConfigError(f"id2label must map integer ids to names, got {id2label!r}") from exc
    skip = names | {"id2label", "label2id", "num_labels", "model_type", *given}
    extra = {k: v for k, v in data.items() if k not in skip}
    try:
        return cls(**kwargs, **given, id2label=id2label, extra=extra)
    except TypeError as exc:  # a field of the wrong kind, e.g. a string where a number goes
        raise ConfigError(f"invalid config: {exc}") from exc


# Named geometries, as tiny dicts of overrides (the timm way): `--config vivit-b-16x2` and tests use them.
# Models 2 and 3 at ViViT-B's width, in vit-pytorch's layout (its LayerNorms, no Q/K/V bias, exact GELU, 64-wide heads):
# the paper's ViViT-B factorised encoder has 12 spatial and 4 temporal layers; factorised self-attention 12 blocks.
_VIT_PYTORCH_B = dict(hidden_act="gelu", layer_norm_eps=1e-5, qkv_bias=False, attention_head_dim=64)
PRESETS: dict[str, dict[str, Any]] = {
    "vivit-b-16x2": {},  # google/vivit-b-16x2-kinetics400 geometry, 400 labels
    "vivit-b-fe": dict(variant="factorised_encoder", num_hidden_layers=12, temporal_layers=4, **_VIT_PYTORCH_B),
    "vivit-b-fsa": dict(variant="factorised_self_attention", num_hidden_layers=12, **_VIT_PYTORCH_B),
    "videomae-b": dict(model_type=VIDEOMAE_MODEL_TYPE),  # MCG-NJU/videomae-base-finetuned-kinetics geometry (16x224)
    "timesformer-b": dict(model_type=TIMESFORMER_MODEL_TYPE),  # facebook/timesformer-base-finetuned-k400 (8x224)
    # facebook/vjepa2-vitl-fpc16-256-ssv2's geometry (ViT-L, 16 frames of 256, 174 labels set by the caller or 400 here)
    "vjepa2-l": dict(model_type=VJEPA2_MODEL_TYPE, num_frames=16),
    "tiny": dict(
        image_size=32, num_frames=4, tubelet_size=(2, 8, 8), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64,
    ),
}


def preset(name: str, **overrides: Any) -> VivitConfig:
    """A named geometry with optional overrides, e.g. ``preset("vivit-b-16x2", num_frames=4)``; the B-sized presets
    have Kinetics-400's 400 labels. ``videomae-b`` and ``timesformer-b`` are those models' configs."""
    if name not in PRESETS:
        raise ConfigError(f"unknown config preset {name!r}; known: {sorted(PRESETS)}")
    kwargs = dict(PRESETS[name])
    cls = {VIDEOMAE_MODEL_TYPE: VideoMAEConfig, TIMESFORMER_MODEL_TYPE: TimesformerConfig,
           VJEPA2_MODEL_TYPE: VJEPA2Config}.get(
        kwargs.pop("model_type", None), VivitConfig)
    if name != "tiny":
        kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(400)}
    kwargs.update(overrides)
    return cls(**kwargs)
