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

``forward`` takes what transformers' takes (``head_mask``, ``labels``, ``output_attentions``,
``output_hidden_states``, ``interpolate_pos_encoding``, ``return_dict``) and returns an output object
(``outputs.py``) with ``logits`` (or ``last_hidden_state``), indexable like a tuple. Asked for attentions, a
layer computes them as transformers' eager path does (scores scaled after QK^T), so they are its numbers.
The exporter and the runtimes see the logits tensor through ``LogitsOnly``.
"""

from __future__ import annotations

import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from vivit_deploy.model.config import ACTIVATIONS, ATTN_IMPLEMENTATIONS, VivitConfig, check_attn_implementation
from vivit_deploy.errors import ConfigError, InputShapeError
from vivit_deploy.model.hf_layout import write_checkpoint
from vivit_deploy.model.outputs import EncoderOutput, VideoClassifierOutput


def _register_outputs() -> None:
    """Our output classes as pytree nodes, as transformers registers its ``ModelOutput``: ``torch.export``, AOTInductor
    and ``torch.compile`` can then take a model that returns them (the fields that are set, by name)."""
    from torch.utils import _pytree as pytree

    for cls in (EncoderOutput, VideoClassifierOutput):
        if cls in pytree.SUPPORTED_NODES:
            continue

        def flatten(output, cls=cls):
            return output.values(), output.keys()

        def unflatten(values, names, cls=cls):
            return cls(**dict(zip(names, values)))

        pytree.register_pytree_node(cls, flatten, unflatten, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
                                    flatten_with_keys_fn=lambda output: ([(pytree.MappingKey(k), v) for k, v in
                                                                          output.items()], output.keys()))


_register_outputs()

_check_attn_implementation = check_attn_implementation  # the name the model files use


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
        _, t, c, h, w = pixel_values.shape
        kt, kh, kw = self.projection.kernel_size
        if self.as_matmul:
            # what the strided Conv3d does with a remainder: the frames and pixels past the last whole tubelet go unused
            x = pixel_values[:, : t - t % kt, :, : h - h % kh, : w - w % kw]
            x = x.reshape(-1, t // kt, kt, c, h // kh, kh, w // kw, kw)
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
        self.grid = config.grid  # (T', H', W') tubelets the positions were learned for
        self.tubelet_size = config.tubelet_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = TubeletEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        tokens = self.patch_embeddings(pixel_values)  # (B, N, D)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        _, t, _, h, w = pixel_values.shape
        kt, kh, kw = self.tubelet_size
        grid = (t // kt, h // kh, w // kw)
        positions = self.position_embeddings
        if grid != self.grid:
            if not interpolate_pos_encoding:
                raise InputShapeError(
                    f"pixel_values of {t} frames of {h}x{w} make a {grid[0]}x{grid[1]}x{grid[2]} grid of tubelets; the "
                    f"model's positions are for {self.grid[0]}x{self.grid[1]}x{self.grid[2]}: pass "
                    "interpolate_pos_encoding=True to resize them")
            positions = interpolate_positions(positions, self.grid, grid)
        x = torch.cat((cls, tokens), dim=1) + positions  # (B, N+1, D)
        return self.dropout(x)


def interpolate_positions(positions: torch.Tensor, grid: tuple[int, int, int], new_grid: tuple[int, int, int]) -> torch.Tensor:
    """Position embeddings (1, 1 + T*H*W, D) learned for ``grid`` = (T, H, W), resized to ``new_grid``.

    The positions are the (T, H, W) grid they were learned on: each time step's H x W grid is resized bicubically
    (align_corners=False, as transformers' ViT resizes an image's), and the time axis linearly; the CLS position
    stays. Where the grid does not change, the positions are returned as they are. (transformers' ViViT treats
    all T*H*W positions as one square grid and never changes it for a square input: wrong for video.)"""
    if tuple(new_grid) == tuple(grid):
        return positions
    t, h, w = grid
    nt, nh, nw = new_grid
    d = positions.shape[-1]
    cls, patches = positions[:, :1], positions[:, 1:]
    x = patches.reshape(t, h, w, d).permute(0, 3, 1, 2).float()  # (T, D, H, W): time steps as a batch
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False)  # (T, D, H', W')
    if nt != t:
        x = x.permute(1, 2, 3, 0).reshape(1, d * nh * nw, t)  # time as the one axis
        x = F.interpolate(x, size=nt, mode="linear", align_corners=False)  # (1, D*H'*W', T')
        x = x.reshape(d, nh, nw, nt).permute(3, 0, 1, 2)  # (T', D, H', W')
    x = x.permute(0, 2, 3, 1).reshape(1, nt * nh * nw, d).to(positions.dtype)
    return torch.cat((cls, x), dim=1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, sdpa: bool, dropout_p: float = 0.0,
           training: bool = False, head_mask: torch.Tensor | None = None, attentions: list | None = None,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax(Q·Kᵀ/√d + ``bias``)·V over (B, heads, N, d) tensors: the attention every model file computes.

    SDPA where ``sdpa`` and no probabilities are asked for (``head_mask``, ``attentions``); ``bias`` (merged tokens'
    log sizes: proportional attention, ToMe eq. 1) is then its additive mask. Otherwise the math path: transformers'
    eager numbers (scores scaled after Q·Kᵀ) when probabilities are collected or masked without a bias, else the
    reference form with Q scaled before Q·Kᵀ (the same numbers, fewer multiplies, and the pattern TensorRT recognises
    and fuses: what the exporter traces), the bias added to the scores."""
    scale = q.shape[-1] ** -0.5
    if sdpa and head_mask is None and attentions is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype),
                                              dropout_p=dropout_p if training else 0.0)
    if bias is None and (attentions is not None or head_mask is not None):
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, nh, N, N)
    else:
        scores = torch.matmul(q * scale, k.transpose(-2, -1))
        if bias is not None:
            scores = scores + bias.to(q.dtype)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=dropout_p, training=training)
    if head_mask is not None:
        probs = probs * head_mask
    if attentions is not None:
        attentions.append(probs)
    return torch.matmul(probs, v)  # (B, nh, N, hd)


class SelfAttention(nn.Module):
    """Multi-head self-attention; the projections are named query/key/value as in transformers."""

    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        self.dropout_p = config.attention_probs_dropout_prob
        self.attn_implementation = _check_attn_implementation(attn_implementation)
        d, inner = config.hidden_size, config.num_attention_heads * config.head_dim  # inner < d where heads do not
        self.query = nn.Linear(d, inner, bias=config.qkv_bias)                    # divide the width (transformers 5)
        self.key = nn.Linear(d, inner, bias=config.key_bias)
        self.value = nn.Linear(d, inner, bias=config.qkv_bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, N, hd)

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None, attentions: list | None = None,
                merging: "TokenMerging | None" = None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        bias = None
        if merging is not None:
            merging.keys = k.mean(dim=1)  # (B, N, hd): what the next merge matches tokens by, averaged over heads
            bias = merging.attention_bias()  # log of each token's size, (B, 1, 1, N), or None before any merge
        out = attend(q, k, v, sdpa=self.attn_implementation == "sdpa", dropout_p=self.dropout_p, training=self.training,
                     head_mask=head_mask, attentions=attentions, bias=bias)
        return out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)


class AttentionOutput(nn.Module):
    def __init__(self, config: VivitConfig):
        super().__init__()
        self.dense = nn.Linear(config.num_attention_heads * config.head_dim, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x))


class Attention(nn.Module):
    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.attention = SelfAttention(config, attn_implementation)
        self.output = AttentionOutput(config)

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None, attentions: list | None = None,
                merging: "TokenMerging | None" = None) -> torch.Tensor:
        return self.output(self.attention(x, head_mask, attentions, merging))


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


# ---- token merging (ToMe: Bolya et al., ICLR 2023), training-free ----------------------------------------------------

def token_merging_schedule(merge_tokens, num_layers: int) -> tuple[int, ...]:
    """ToMe's r for each of ``num_layers`` layers from ``merge_tokens=``: one whole number for every layer, or a
    sequence of one per layer (a shorter one leaves the last layers unmerged); None or 0: none. Anything else (a
    negative or fractional r, text, a schedule longer than the model) is a ConfigError naming the argument."""
    if merge_tokens is None:
        return (0,) * num_layers
    if isinstance(merge_tokens, numbers.Integral) and not isinstance(merge_tokens, bool):
        values = [merge_tokens] * num_layers
    elif isinstance(merge_tokens, (list, tuple)):
        values = list(merge_tokens)
    else:
        raise ConfigError(f"merge_tokens= takes a whole number of tokens per layer, or a list of one per layer; got "
                          f"{merge_tokens!r}")
    if len(values) > num_layers:
        raise ConfigError(f"merge_tokens= has {len(values)} values; the model has {num_layers} layers")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"merge_tokens= takes whole numbers of tokens, got {value!r}")
        if value < 0:
            raise ConfigError(f"merge_tokens= must not be negative, got {value}")
    return tuple(int(v) for v in values) + (0,) * (num_layers - len(values))


def bipartite_soft_matching(metric: torch.Tensor, r: int):
    """ToMe's matching: tokens alternate into sets A (even positions, the class token first and never merged) and B
    (odd); each A token's most similar B token (cosine of the keys); the r best pairs merge, each A token into its B
    token. Returns ``merge(x, reduce)``, which applies it to any (B, N, C) tensor of the same tokens: the unmerged A
    tokens in their order, then the B tokens with what merged into them (``reduce``: "sum" or "amax").

    Ties: an A token's match is the first B token of the highest score (``max``: ONNX's ArgMax takes the first too),
    and of pairs with equal scores the one of the earlier A token merges first. The order is computed, not sorted: each
    A token's rank is the count of tokens ahead of it (a higher score, or an equal one earlier), so every backend that
    runs the exported graph gets the same tokens whatever its sort does with ties, and the graph needs no sort."""
    r = min(r, (metric.shape[1] - 1) // 2)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)  # (B, Na, Nb)
    na = scores.shape[1]
    protect = torch.zeros_like(scores[:1, :, :1])
    protect[:, 0] = float("-inf")  # the class token
    node_max, node_idx = (scores + protect).max(dim=-1)  # (B, Na): each A token's best B token
    place = torch.arange(na, device=metric.device)
    earlier = place[None, :] < place[:, None]  # (Na, Na): token j comes before token i
    ahead = (node_max[:, None, :] > node_max[:, :, None]) | ((node_max[:, None, :] == node_max[:, :, None]) & earlier)
    rank = ahead.sum(dim=-1)  # (B, Na): 0 for the best pair; a permutation of 0..Na-1
    stays = rank >= r
    # where each A token goes: the ones that stay first, in token order (the class token first), then the r that merge,
    # best pair first
    slot = torch.where(stays, stays.cumsum(dim=-1) - 1, rank + (na - r))
    order = torch.zeros_like(rank).scatter(-1, slot, place.expand_as(rank))[..., None]  # (B, Na, 1)
    unm_idx, src_idx = order[:, : na - r], order[:, na - r:]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)  # (B, r, 1): the B tokens they merge into

    def merge(x: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        if reduce == "sum":
            # as a product with the (r, Nb) one-hot map of where each merging token goes: (Nb x r x C) multiply-adds,
            # and a graph every backend parses (TensorRT for RTX's parser rejects ScatterElements with a reduction)
            into = (dst_idx == torch.arange(dst.shape[1], device=x.device)).to(x.dtype)  # (B, r, Nb)
            dst = dst + into.transpose(1, 2) @ src
        else:
            dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=reduce)
        return torch.cat([unm, dst], dim=1)

    return merge


class TokenMerging:
    """ToMe through one forward pass: each token's size (how many patches it stands for, for the size-weighted average
    and proportional attention), the keys the last attention computed (what the next merge matches by), and, when
    asked, the source map (B, N', N): which input tokens each token holds."""

    def __init__(self, x: torch.Tensor, track_source: bool = False, proportional: bool = True):
        self.proportional = proportional  # add log(size) to the attention scores (ToMe's proportional attention)
        self.size: torch.Tensor | None = None  # (B, N, 1); None until the first merge (every size 1)
        self.keys: torch.Tensor | None = None  # (B, N, head_dim)
        b, n, _ = x.shape
        self.source = torch.eye(n, device=x.device, dtype=x.dtype).expand(b, n, n) if track_source else None

    def attention_bias(self) -> torch.Tensor | None:
        """log(size) added to every query's scores (B, 1, 1, N), None before the first merge (log 1 = 0)."""
        if self.size is None or not self.proportional:
            return None
        return self.size.log()[..., 0][:, None, None, :]

    def merge(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """Merge ``r`` token pairs of ``x`` (B, N, D) by the keys of the attention just run: size-weighted means,
        summed in float32 whatever the model computes in (a half-precision sum of many tokens rounds, and ONNX
        Runtime's CPU has no fp16 ScatterElements with reduction)."""
        merge = bipartite_soft_matching(self.keys.float(), r)
        size = self.size if self.size is not None else torch.ones_like(x[..., :1], dtype=torch.float32)
        merged = merge(x.float() * size, "sum")
        self.size = merge(size, "sum")
        if self.source is not None:
            self.source = merge(self.source, "amax")
        return (merged / self.size).to(x.dtype)


class Layer(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config, attn_implementation)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = Intermediate(config)
        self.output = Output(config)

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None, attentions: list | None = None,
                merging: "TokenMerging | None" = None, r: int = 0) -> torch.Tensor:
        if head_mask is None and attentions is None and merging is None:  # the plain call every export traces
            x = x + self.attention(self.layernorm_before(x))
        else:
            x = x + self.attention(self.layernorm_before(x), head_mask, attentions, merging)
        if r:  # ToMe merges after the attention residual, before the MLP
            x = merging.merge(x, r)
        return x + self.output(self.intermediate(self.layernorm_after(x)))


class Encoder(nn.Module):
    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config, attn_implementation) for _ in range(config.num_hidden_layers))
        self.merge_tokens: tuple[int, ...] = (0,) * config.num_hidden_layers  # ToMe's r per layer (0: none)
        self.proportional_attention = True  # with merging: log(size) added to the attention scores, as published

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None, attentions: list | None = None,
                hidden_states: list | None = None, sources: list | None = None) -> torch.Tensor:
        """``head_mask``: (layers, heads) multipliers of the attention probabilities, or None; ``attentions`` and
        ``hidden_states``: lists that collect each layer's probabilities and output (after the input's); with token
        merging on, ``sources`` collects the final (B, N', N) map of which input token each output token merged."""
        merging = TokenMerging(x, sources is not None, self.proportional_attention) if any(self.merge_tokens) else None
        for i, layer in enumerate(self.layer):
            if hidden_states is not None:
                hidden_states.append(x)
            if head_mask is None and attentions is None and merging is None:
                x = layer(x)
            else:
                x = layer(x, None if head_mask is None else head_mask[i], attentions, merging, self.merge_tokens[i])
        if hidden_states is not None:
            hidden_states.append(x)
        if sources is not None and merging is not None:
            sources.append(merging.source)
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


def validate_pixel_values(pixel_values: torch.Tensor, config: VivitConfig, any_geometry: bool = False) -> None:
    """Raise :class:`InputShapeError` unless ``pixel_values`` is a float (B, T, C, H, W) clip batch this model takes;
    ``any_geometry`` (interpolated positions) lets the frames and their size differ from the config's."""
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
    if any_geometry:
        t, c, h, w = shape[1:]
        kt, kh, kw = config.tubelet_size
        if shape[0] < 1 or c != config.num_channels or t < kt or h < kh or w < kw:
            raise InputShapeError(f"pixel_values must have shape (batch, frames, {config.num_channels}, height, width) "
                                  f"with at least one {kt}x{kh}x{kw} tubelet, got {shape}")
        return
    if shape[0] < 1 or shape[1:] != expected:
        names = ("frames", "channels", "height", "width")
        wrong = [f"{n} {got} (expected {exp})" for n, got, exp in zip(names, shape[1:], expected) if got != exp]
        detail = ", ".join(wrong) if wrong else "empty batch"
        hint = "; pass interpolate_pos_encoding=True to run at another frame count or size" if shape[0] >= 1 and \
            shape[2] == expected[1] else ""
        raise InputShapeError(f"pixel_values must have shape {want}, got {shape}: {detail}{hint}")


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


def check_geometry(config: VivitConfig) -> None:
    """What transformers' modules quietly floor, said when a model is built: heads that do not divide the width get
    the floor of width / heads channels each (transformers 5 computes so: attention over heads x that channels),
    frames or a frame size that are no whole number of tubelets are cut to whole ones (as its Conv3d does)."""
    if config.head_dim < 1:
        raise ConfigError(f"hidden_size ({config.hidden_size}) is smaller than num_attention_heads "
                          f"({config.num_attention_heads}): a head would have no channels")
    if config.hidden_size % config.num_attention_heads:
        inner = config.num_attention_heads * config.head_dim
        warnings.warn(f"hidden_size {config.hidden_size} is not a multiple of {config.num_attention_heads} heads: each "
                      f"head gets {config.head_dim} channels, attention runs over {inner} of the {config.hidden_size} "
                      "(as transformers 5 computes it)", stacklevel=3)
    t, ph, pw = config.tubelet_size
    used = (config.num_frames - config.num_frames % t, config.image_height - config.image_height % ph,
            config.image_width - config.image_width % pw)
    if used != (config.num_frames, config.image_height, config.image_width):
        warnings.warn(f"{config.num_frames} frames of {config.image_height}x{config.image_width} are not a whole number "
                      f"of {t}x{ph}x{pw} tubelets: the model uses {used[0]} frames of {used[1]}x{used[2]} (the rest is "
                      "cut, as transformers' Conv3d does)", stacklevel=3)


def _head_mask(head_mask: torch.Tensor | None, config: VivitConfig, dtype: torch.dtype) -> torch.Tensor | None:
    """transformers' head mask: (heads,) for every layer or (layers, heads), as (layers, 1, heads, 1, 1) multipliers."""
    if head_mask is None:
        return None
    mask = torch.as_tensor(head_mask)
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    if mask.dim() == 1 and mask.shape[0] == heads:
        mask = mask.expand(layers, heads)
    if tuple(mask.shape) != (layers, heads):
        raise InputShapeError(f"head_mask must have shape ({heads},) or ({layers}, {heads}), got {tuple(mask.shape)}")
    return mask[:, None, :, None, None].to(dtype)


class ModelMembers(nn.Module):
    """What every ViViT model answers (Models 1, 2 and 3): its attention path and the switch, dtype, device, size."""

    merging_refusal: str | None = None  # a model that cannot merge tokens: why, in one line (its model file says)

    def _attention_modules(self) -> list[nn.Module]:
        """Every module that computes attention: those holding an ``attn_implementation`` of their own (ViViT's
        ``SelfAttention`` and each model file's attention classes)."""
        return [m for m in self.modules() if m is not self and "attn_implementation" in vars(m)]

    @property
    def attn_implementation(self) -> str:
        return self._attention_modules()[0].attn_implementation

    def set_attn_implementation(self, name: str) -> None:
        """Switch every attention layer between "sdpa" and "eager" in place; the weights stay."""
        _check_attn_implementation(name)
        for m in self._attention_modules():
            m.attn_implementation = name

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def clip_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One row of logits per clip (B, num_labels): what the exporter traces and the runtimes return (a model whose
        own output has another row count, TimeSformer's "space_only" with a row per frame, says how it pools)."""
        return self(pixel_values, return_dict=True).logits

    @property
    def merge_tokens(self) -> tuple[int, ...]:
        """ToMe's r per layer (all 0: no merging)."""
        return (0,) * self.config.num_layers

    def set_token_merging(self, merge_tokens, proportional_attention: bool = True) -> None:
        """Merge tokens in every layer (ToMe): ``merge_tokens`` is r, one whole number for every layer or one per
        layer (``token_merging_schedule``); 0 or None turns it off. ``proportional_attention`` (as published) adds
        each token's log size to the attention scores. Training-free; the weights stay. A model that cannot merge
        says why."""
        if token_merging_schedule(merge_tokens, self.config.num_layers) != self.merge_tokens:
            raise ConfigError(f"merge_tokens= does not apply to {type(self).__name__}")

    def set_tubelet_embedding(self, form: str) -> None:
        """How the tubelet projection computes: "conv" (Model 1's Conv3d) or "matmul" (the same product as one matrix
        product over tubelets cut out by a reshape: what the exporter traces). Models 2 and 3 project by a Linear
        either way."""
        if form not in ("conv", "matmul"):
            raise ConfigError(f"form must be 'conv' or 'matmul', got {form!r}")
        for m in self.modules():
            if isinstance(m, TubeletEmbeddings):
                m.as_matmul = form == "matmul"


class _VivitBase(ModelMembers):
    """What both heads share: the config, the attention switch, dtype/device, input checks, loading and saving."""

    config: VivitConfig
    main_input_name = "pixel_values"
    bare_encoder = False  # the encoder without a classifier (from_pretrained loads head="base")

    @classmethod
    def from_pretrained(cls, source, **kwargs):
        """transformers' entry point: ``load_model`` with this class's head (see it for the options)."""
        from vivit_deploy.model.checkpoint import load_model

        kwargs.setdefault("head", "base" if cls.bare_encoder else "classification")
        return load_model(source, **kwargs)

    def get_output_embeddings(self) -> None:
        return None

    def base_model(self) -> "_VivitBase":
        """The bare encoder: this model, or the one a classifier holds under its ``config.base_prefix``."""
        return self if self.bare_encoder else getattr(self, self.config.base_prefix)

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model().embeddings.patch_embeddings

    def _encoder(self) -> Encoder:
        return self.base_model().encoder

    def _copy_at(self, config: VivitConfig) -> tuple["_VivitBase", "_VivitBase"]:
        """A deep copy of this model carrying ``config`` (``geometry_config``'s), and its bare encoder, for an
        ``at_geometry`` to resize what the new geometry changes."""
        import copy

        model = copy.deepcopy(self)
        base = model.base_model()
        model.config = base.config = config
        return model, base

    @property
    def merge_tokens(self) -> tuple[int, ...]:
        if self.merging_refusal:
            return (0,) * self.config.num_hidden_layers
        return self._encoder().merge_tokens

    def set_token_merging(self, merge_tokens, proportional_attention: bool = True) -> None:
        schedule = token_merging_schedule(merge_tokens, self.config.num_hidden_layers)
        if self.merging_refusal:
            if any(schedule):
                raise ConfigError(self.merging_refusal)
            return
        encoder = self._encoder()
        encoder.merge_tokens = schedule
        encoder.proportional_attention = bool(proportional_attention)

    @torch.no_grad()
    def token_merging_sources(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ToMe's source map under the current merging: a (B, N', N) bool tensor, True where the final token n' holds
        input token n (the class token first, then the patches' tubelets in (time, row, column) order). Without
        merging every token holds itself."""
        if self.merging_refusal:
            raise ConfigError(f"no token merging's source map: {self.merging_refusal}")
        x = self.base_model().embeddings(self._prepare(pixel_values))
        if not any(self.merge_tokens):
            return torch.eye(x.shape[1], dtype=torch.bool).expand(x.shape[0], -1, -1)
        sources: list = []
        self._encoder()(x, sources=sources)
        return sources[0] > 0

    def _prepare(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        if not _exporting():
            validate_pixel_values(pixel_values, self.config, any_geometry=interpolate_pos_encoding)
        return pixel_values.to(self.dtype)

    def _flags(self, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
        config = self.config
        return (config.output_attentions if output_attentions is None else bool(output_attentions),
                config.output_hidden_states if output_hidden_states is None else bool(output_hidden_states),
                config.return_dict if return_dict is None else bool(return_dict))

    def save_pretrained(self, directory, preprocessor=None, **_ignored):
        """Write config.json, model.safetensors (and preprocessor_config.json) in the Hugging Face layout, with the
        checkpoint's original parameter names (transformers 4 and 5 both read them)."""
        config = self.config.to_dict()
        config["architectures"] = [type(self).__name__]
        config["dtype"] = str(self.dtype).removeprefix("torch.")
        return write_checkpoint(directory, config, self.state_dict(), preprocessor)


class VivitModel(_VivitBase):
    """The bare encoder: tokens after the final LayerNorm, and the pooled CLS token when it has a pooler."""

    bare_encoder = True

    def __init__(self, config: VivitConfig, add_pooling_layer: bool = True, attn_implementation: str = "sdpa"):
        super().__init__()
        check_geometry(config)
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config, attn_implementation)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = Pooler(config) if add_pooling_layer else None
        init_weights(self, config.initializer_range)

    def forward(self, pixel_values: torch.Tensor, head_mask: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                interpolate_pos_encoding: bool = False, return_dict: bool | None = None):
        """Tokens after the final LayerNorm (``last_hidden_state``, (B, N+1, D)) and the pooled CLS token; with
        ``output_hidden_states`` the embeddings and each layer's output, with ``output_attentions`` each layer's
        attention probabilities. An :class:`EncoderOutput`, or with ``return_dict=False`` its tuple."""
        output_attentions, output_hidden_states, return_dict = self._flags(output_attentions, output_hidden_states,
                                                                           return_dict)
        attentions: list | None = [] if output_attentions else None
        hidden_states: list | None = [] if output_hidden_states else None
        x = self.embeddings(self._prepare(pixel_values, interpolate_pos_encoding), interpolate_pos_encoding)
        x = self.encoder(x, _head_mask(head_mask, self.config, x.dtype), attentions, hidden_states)
        x = self.layernorm(x)  # (B, N+1, D)
        return encoder_output(x, self.pooler(x) if self.pooler is not None else None, hidden_states, attentions,
                              return_dict)


class VivitForVideoClassification(_VivitBase):
    """The encoder plus a linear classifier on the CLS token; ``forward(...).logits`` is (B, num_labels)."""

    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.vivit = VivitModel(config, add_pooling_layer=False, attn_implementation=attn_implementation)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(self, pixel_values: torch.Tensor, head_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                return_dict: bool | None = None):
        """The logits (B, num_labels) of the CLS token, and with ``labels`` the loss of ``config.problem_type``
        (as transformers chooses it when unset); hidden states and attentions as ``VivitModel``'s. A
        :class:`VideoClassifierOutput`, or with ``return_dict=False`` its tuple."""
        output_attentions, output_hidden_states, return_dict = self._flags(output_attentions, output_hidden_states,
                                                                           return_dict)
        encoded = self.vivit(self._prepare(pixel_values, interpolate_pos_encoding), head_mask, output_attentions,
                             output_hidden_states, interpolate_pos_encoding, return_dict=True)
        logits = self.classifier(encoded.last_hidden_state[:, 0])  # (B, num_labels)
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        out = VideoClassifierOutput(loss, logits, encoded.hidden_states, encoded.attentions)
        return out if return_dict else out.to_tuple()

    def at_geometry(self, num_frames: int | None = None, image_size: int | tuple[int, int] | None = None):
        """A copy of this model that takes ``num_frames`` frames of ``image_size`` (default: its own), its position
        embeddings resized once (``interpolate_positions``), so it runs, exports and is served at that geometry
        without resizing anything per call. The config records the geometry it was trained at."""
        new = geometry_config(self.config, num_frames, image_size)
        if new is None:
            return self
        model, base = self._copy_at(new)
        embeddings = base.embeddings
        with torch.no_grad():
            resized = interpolate_positions(embeddings.position_embeddings, embeddings.grid, new.grid)
        embeddings.position_embeddings = nn.Parameter(resized)
        embeddings.grid = new.grid
        return model


def encoder_output(tokens: torch.Tensor, pooled: torch.Tensor | None, hidden_states: list | None,
                   attentions: list | None, return_dict: bool):
    """An encoder's :class:`EncoderOutput` (what it collected, as tuples), or with ``return_dict=False`` its tuple."""
    out = EncoderOutput(tokens, pooled, None if hidden_states is None else tuple(hidden_states),
                        None if attentions is None else tuple(attentions))
    return out if return_dict else out.to_tuple()


def geometry_config(config: VivitConfig, num_frames: int | None, image_size) -> VivitConfig | None:
    """``config`` at ``num_frames`` frames of ``image_size`` (each default: its own), recording in ``extra`` the geometry
    the checkpoint was trained at; None when that is the geometry it has (every model's ``at_geometry`` starts here)."""
    from dataclasses import replace

    trained = config.extra.get("trained_geometry") or {"num_frames": config.num_frames, "image_size": config.image_size}
    new = replace(config, num_frames=num_frames or config.num_frames, image_size=image_size or config.image_size,
                  extra={**config.extra, "trained_geometry": trained})
    return None if new.grid == config.grid and new.input_shape == config.input_shape else new


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: VivitConfig) -> torch.Tensor:
    """transformers' rule: regression for one label, single-label classification for integer labels, multi-label
    otherwise, unless ``config.problem_type`` says which."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype)) if config.num_labels == 1 else \
            F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class LogitsOnly(nn.Module):
    """The logits tensor of a classification model, and nothing else: what the exporter traces and a runtime runs.

    The model keeps its transformers-shaped output; this thin wrapper gives the tools the one tensor they need.
    Its attribute is named ``model``, so every module keeps its checkpoint path under that prefix."""

    def __init__(self, model: VivitForVideoClassification):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.clip_logits(pixel_values)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "VivitModel",
    "VivitForVideoClassification",
    "LogitsOnly",
    "interpolate_positions",
    "validate_pixel_values",
    "count_parameters",
]
