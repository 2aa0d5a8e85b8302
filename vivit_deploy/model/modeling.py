"""ViViT Model 1 (spatio-temporal attention) in plain PyTorch, one file, top to bottom.

Arnab et al., "ViViT: A Video Vision Transformer" (2021). The module tree and parameter names are
transformers' (``VivitModel``, ``VivitForVideoClassification``), so a checkpoint saved by transformers
loads with ``strict=True`` and no renaming:

    vivit.embeddings.{cls_token, position_embeddings, patch_embeddings.projection}
    vivit.encoder.layer.N.{layernorm_before, attention.attention.{query,key,value}, attention.output.dense,
                           layernorm_after, intermediate.dense, output.dense}
    vivit.layernorm, classifier            (VivitModel: no "vivit." prefix, and pooler.dense)

Attention has two implementations on the same weights, chosen per model: "sdpa"
(``F.scaled_dot_product_attention``, the default) and "eager", the readable math path. Eager scales Q
before QK^T, the pattern TensorRT fuses into one attention kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vivit_deploy.model.config import ACTIVATIONS, VivitConfig
from vivit_deploy.errors import ConfigError, InputShapeError
from vivit_deploy.model.hf_layout import write_checkpoint

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def _check_attn_implementation(name: str) -> str:
    if name not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {name!r}")
    return name


class TubeletEmbeddings(nn.Module):
    """Cuts the clip into non-overlapping tubelets (t x p x p) and projects each to one token.

    Two implementations of the same product on the same Conv3d weights: the Conv3d (default, as in the
    paper and transformers) and, with ``as_matmul``, tubelets cut out by a reshape and projected by one
    matrix product. The exporter uses the second: TensorRT compiles no fp32 3-D convolution for Turing
    (SM75), and a MatMul is what every backend runs fastest (measured in ``export/onnx_export.py``).
    """

    def __init__(self, config: VivitConfig):
        super().__init__()
        self.projection = nn.Conv3d(
            config.num_channels, config.hidden_size, kernel_size=config.tubelet_size, stride=config.tubelet_size
        )
        self.as_matmul = False

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.as_matmul:
            _, t, c, h, w = pixel_values.shape
            kt, kh, kw = self.projection.kernel_size
            x = pixel_values.reshape(-1, t // kt, kt, c, h // kh, kh, w // kw, kw)
            x = x.permute(0, 1, 4, 6, 3, 2, 5, 7)  # (B, T/t, H/p, W/p, C, t, p, p): the Conv3d weight's order
            x = x.flatten(4).flatten(1, 3)  # (B, N, C*t*p*p), tokens in (time, row, column) order
            return F.linear(x, self.projection.weight.flatten(1), self.projection.bias)  # (B, N, D)
        x = pixel_values.transpose(1, 2)  # (B, T, C, H, W) -> (B, C, T, H, W) for Conv3d
        x = self.projection(x)  # (B, D, T/t, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, D), tokens in (time, row, column) order


class Embeddings(nn.Module):
    """Tubelet tokens, a learned CLS token in front, plus learned absolute positions."""

    def __init__(self, config: VivitConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = TubeletEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embeddings(pixel_values)  # (B, N, D)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat((cls, tokens), dim=1) + self.position_embeddings  # (B, N+1, D)
        return self.dropout(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention; the projections are named query/key/value as in transformers."""

    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        self.dropout_p = config.attention_probs_dropout_prob
        self.attn_implementation = _check_attn_implementation(attn_implementation)
        d = config.hidden_size
        self.query = nn.Linear(d, d, bias=config.qkv_bias)
        self.key = nn.Linear(d, d, bias=config.qkv_bias)
        self.value = nn.Linear(d, d, bias=config.qkv_bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, N, hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        dropout_p = self.dropout_p if self.training else 0.0
        if self.attn_implementation == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            # The math path, kept as the reference. Q is scaled before Q @ K^T (not the scores after it):
            # the same numbers, fewer multiplies, and the pattern TensorRT recognises and fuses.
            scores = torch.matmul(q * self.scale, k.transpose(-2, -1))  # (B, nh, N, N)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            probs = F.dropout(probs, p=dropout_p, training=self.training)
            out = torch.matmul(probs, v)  # (B, nh, N, hd)
        return out.transpose(1, 2).reshape(b, n, d)


class AttentionOutput(nn.Module):
    def __init__(self, config: VivitConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x))


class Attention(nn.Module):
    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.attention = SelfAttention(config, attn_implementation)
        self.output = AttentionOutput(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class Intermediate(nn.Module):
    """First MLP layer and its GELU (tanh approximation or exact erf, from the config)."""

    def __init__(self, config: VivitConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.approximate = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x), approximate=self.approximate)


class Output(nn.Module):
    """Second MLP layer, back to the token width."""

    def __init__(self, config: VivitConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x))


class Layer(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config, attn_implementation)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = Intermediate(config)
        self.output = Output(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output(self.intermediate(self.layernorm_after(x)))


class Encoder(nn.Module):
    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config, attn_implementation) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


_POOLER_ACT = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "linear": lambda x: x,
}


class Pooler(nn.Module):
    """VivitModel's pooler: dense + activation on the CLS token (the classification model has none)."""

    def __init__(self, config: VivitConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.pooler_output_size or config.hidden_size)
        self.activation = _POOLER_ACT[config.pooler_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x[:, 0]))


class VivitOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, N+1, D), after the final LayerNorm
    pooler_output: torch.Tensor | None  # (B, pooler_output_size), None without a pooler


def validate_pixel_values(pixel_values: torch.Tensor, config: VivitConfig) -> None:
    """Raise :class:`InputShapeError` unless ``pixel_values`` is a float (B, T, C, H, W) clip batch this model takes."""
    expected = config.input_shape
    want = f"(batch, {', '.join(map(str, expected))})"
    if not isinstance(pixel_values, torch.Tensor):
        raise InputShapeError(f"pixel_values must be a torch.Tensor of shape {want}, got {type(pixel_values).__name__}")
    if not pixel_values.is_floating_point():
        raise InputShapeError(
            f"pixel_values must be floating point (preprocessed), got {pixel_values.dtype}; "
            "run the clip through VideoPreprocessor first"
        )
    shape = tuple(pixel_values.shape)
    if len(shape) != 5:
        raise InputShapeError(f"pixel_values must have 5 dimensions {want}, got shape {shape}")
    if shape[0] < 1 or shape[1:] != expected:
        names = ("frames", "channels", "height", "width")
        wrong = [f"{n} {got} (expected {exp})" for n, got, exp in zip(names, shape[1:], expected) if got != exp]
        detail = ", ".join(wrong) if wrong else "empty batch"
        raise InputShapeError(f"pixel_values must have shape {want}, got {shape}: {detail}")


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def init_weights(module: nn.Module, std: float) -> None:
    """Fresh weights for training: truncated normal(0, std) for linear/conv weights and the CLS/position
    embeddings, zero biases, unit LayerNorm. Loading a checkpoint replaces all of them."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, Embeddings):
            nn.init.trunc_normal_(m.position_embeddings, std=std, a=-2 * std, b=2 * std)
            nn.init.trunc_normal_(m.cls_token, std=std, a=-2 * std, b=2 * std)


class _VivitBase(nn.Module):
    """What both heads share: the config, the attention switch, dtype/device, and input checks."""

    config: VivitConfig

    @property
    def attn_implementation(self) -> str:
        return next(m.attn_implementation for m in self.modules() if isinstance(m, SelfAttention))

    def set_attn_implementation(self, name: str) -> None:
        """Switch every attention layer between "sdpa" and "eager" in place; the weights stay."""
        _check_attn_implementation(name)
        for m in self.modules():
            if isinstance(m, SelfAttention):
                m.attn_implementation = name

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _prepare(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not _exporting():
            validate_pixel_values(pixel_values, self.config)
        return pixel_values.to(self.dtype)

    def save_pretrained(self, directory, preprocessor=None):
        """Write config.json, model.safetensors (and preprocessor_config.json) in the Hugging Face layout."""
        config = self.config.to_dict()
        config["architectures"] = [type(self).__name__]
        config["dtype"] = str(self.dtype).removeprefix("torch.")
        return write_checkpoint(directory, config, self.state_dict(), preprocessor)


class VivitModel(_VivitBase):
    """The bare encoder: tokens after the final LayerNorm, and the pooled CLS token when it has a pooler."""

    def __init__(self, config: VivitConfig, add_pooling_layer: bool = True, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config, attn_implementation)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = Pooler(config) if add_pooling_layer else None
        init_weights(self, config.initializer_range)

    def forward(self, pixel_values: torch.Tensor) -> VivitOutput:
        x = self.embeddings(self._prepare(pixel_values))  # (B, N+1, D)
        x = self.layernorm(self.encoder(x))
        return VivitOutput(x, self.pooler(x) if self.pooler is not None else None)


class VivitForVideoClassification(_VivitBase):
    """The encoder plus a linear classifier on the CLS token; ``forward`` returns logits (B, num_labels)."""

    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.vivit = VivitModel(config, add_pooling_layer=False, attn_implementation=attn_implementation)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vivit(self._prepare(pixel_values)).last_hidden_state
        return self.classifier(hidden[:, 0])  # (B, num_labels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "VivitModel",
    "VivitForVideoClassification",
    "VivitOutput",
    "validate_pixel_values",
    "count_parameters",
]
