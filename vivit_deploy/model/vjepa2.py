"""V-JEPA 2's video classifier (Assran et al., 2025), with transformers' parameter names: one file, top to bottom.

    from vivit_deploy import VJEPA2ForVideoClassification     # instead of: from transformers import ...
    model = VJEPA2ForVideoClassification.from_pretrained("path/or/hub-id")

Its config, ``VJEPA2Config``, sits with the others in ``config.py`` (configs are torch-free data). What differs from
ViViT's Model 1 (``modeling.py``):

- no class token and no learned positions: the tubelets (a Conv3d, ``tubelet_size`` frames x ``patch_size`` pixels)
  go straight into the layers;
- 3D rotary positions in every attention of the encoder: each head's width is cut into three equal even parts that
  rotate Q and K by the token's frame, row and column (a remainder of the width is left as it is); the positions count
  tokens over a grid of ``crop_size // patch_size`` patches a side, as transformers counts them;
- the layers are named as the checkpoints name them (``norm1``, ``attention.query/key/value/proj``, ``norm2``,
  ``mlp.fc1/fc2``), the encoder ends in ``encoder.layernorm``;
- the classifier pools with an attentive probe (``pooler``): ``num_pooler_layers`` self-attention layers over the
  tokens, then a learned query (``query_tokens``) attending over them through a cross-attention without an output
  projection, then ``classifier``.

Checkpoints of ``VJEPA2ForVideoClassification`` and ``VJEPA2Model`` load; the pre-training predictor they also carry
(``vjepa2.predictor.*``) is not built and its weights are left out when a checkpoint is read (``IGNORED_KEYS``): it
predicts masked features in pre-training and has no part in classifying. Token merging does not apply (each token's
rotary position is its place in the grid, which a merged token no longer has).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from vivit_deploy.errors import ConfigError
from vivit_deploy.model.config import VJEPA2Config
from vivit_deploy.model.modeling import (SelfAttention, _VivitBase, attend, check_geometry, classification_loss,
                                         encoder_output, geometry_config, init_weights)
from vivit_deploy.model.outputs import VideoClassifierOutput

# the pre-training predictor's weights, in classifier checkpoints (vjepa2.predictor.*) and bare ones (predictor.*)
IGNORED_KEYS = (re.compile(r"^(vjepa2\.)?predictor\."),)
POOLER_MLP_RATIO = 4  # the probe's MLPs: transformers builds them at its default ratio, not config.mlp_ratio


def rotary_tables(config: VJEPA2Config, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (N, 3 x r) of the rotary positions of ``num_tokens`` tokens, r = 2 * ((head width // 3) // 2) per
    axis: token i sits at frame i // g², row (i mod g²) // g, column i mod g, g = ``config.rope_grid``; each axis rotates
    its r channels by position x 10000^(-j / (r/2)), j < r/2, the r/2 angles written twice (as transformers writes
    them). float32, computed as transformers computes them; constants, not weights."""
    cpu = torch.device("cpu")  # also where a model is built on the meta device: the tables are a formula
    r = 2 * ((config.head_dim // 3) // 2)
    g = config.rope_grid
    ids = torch.arange(num_tokens, device=cpu)
    frame = ids // (g * g)
    row = (ids - g * g * frame) // g
    column = ids - g * g * frame - g * row
    omega = torch.arange(r // 2, dtype=torch.float32, device=cpu)
    omega /= r / 2.0
    omega = 1.0 / 10000**omega
    angles = torch.cat([(axis[:, None] * omega).repeat(1, 2) for axis in (frame, row, column)], dim=1)  # (N, 3r)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x's first 3r channels turned by the rotary angles, each pair (2j, 2j+1) as a complex number, the rest as they
    are: x·cos + (-x[2j+1], x[2j])·sin."""
    width = cos.shape[-1]
    head, rest = x[..., :width], x[..., width:]
    pairs = head.unflatten(-1, (-1, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    head = head * cos.to(x.dtype) + turned * sin.to(x.dtype)
    return torch.cat((head, rest), dim=-1) if rest.shape[-1] else head


class VJEPA2RopeAttention(SelfAttention):
    """Multi-head self-attention with Q and K turned by the 3D rotary positions, and its output projection ``proj``."""

    def __init__(self, config: VJEPA2Config, attn_implementation: str = "sdpa"):
        super().__init__(config, attn_implementation)
        if config.hidden_size % config.num_attention_heads:
            raise ConfigError(f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                              f"{config.num_attention_heads}")
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.rope = rotary_tables(config, config.num_patches)

    def forward(self, x: torch.Tensor, attentions: list | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        cos, sin = (t[:n].to(x.device) for t in self.rope)
        q = rotate(self._heads(self.query(x)), cos, sin)
        k = rotate(self._heads(self.key(x)), cos, sin)
        out = attend(q, k, self._heads(self.value(x)), sdpa=self.attn_implementation == "sdpa",
                     dropout_p=self.dropout_p, training=self.training, attentions=attentions)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class VJEPA2MLP(nn.Module):
    """fc1, GELU, fc2; ``width``: fc1's outputs (the encoder's ``intermediate_size``; the probe's are always 4 x
    hidden_size, whatever ``mlp_ratio`` says, as transformers builds them)."""

    def __init__(self, config: VJEPA2Config, width: int | None = None):
        super().__init__()
        width = width or config.intermediate_size
        self.fc1 = nn.Linear(config.hidden_size, width)
        self.activation = nn.GELU()  # transformers' "gelu": the exact erf form
        self.fc2 = nn.Linear(width, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class VJEPA2Layer(nn.Module):
    """Pre-LN block: x + Attn(norm1(x)), then x + MLP(norm2(x)); stochastic depth is training only."""

    def __init__(self, config: VJEPA2Config, attn_implementation: str = "sdpa"):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = VJEPA2RopeAttention(config, attn_implementation)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VJEPA2MLP(config)

    def forward(self, x: torch.Tensor, attentions: list | None = None) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), attentions)
        return x + self.mlp(self.norm2(x))


class VJEPA2PatchEmbeddings3D(nn.Module):
    """The tubelet projection (``proj``, a Conv3d): (B, C, T, H, W) -> (B, N, D) in (time, row, column) order."""

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        t, p, _ = config.tubelet_size
        self.proj = nn.Conv3d(config.num_channels, config.hidden_size, kernel_size=(t, p, p), stride=(t, p, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VJEPA2Embeddings(nn.Module):
    """(B, T, C, H, W) -> the tubelets' tokens; nothing added (the positions are rotary, inside the attention)."""

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        self.patch_embeddings = VJEPA2PatchEmbeddings3D(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.patch_embeddings(pixel_values.permute(0, 2, 1, 3, 4))


class VJEPA2Encoder(nn.Module):
    """The embeddings, the layers and the final LayerNorm, under the checkpoints' ``encoder.`` prefix."""

    def __init__(self, config: VJEPA2Config, attn_implementation: str = "sdpa"):
        super().__init__()
        self.embeddings = VJEPA2Embeddings(config)
        self.layer = nn.ModuleList(VJEPA2Layer(config, attn_implementation) for _ in range(config.num_hidden_layers))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, attentions: list | None = None,
                hidden_states: list | None = None) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        for layer in self.layer:
            if hidden_states is not None:
                hidden_states.append(x)
            x = layer(x, attentions)
        if hidden_states is not None:
            hidden_states.append(x)
        return self.layernorm(x)


class VJEPA2PoolerSelfAttention(SelfAttention):
    """The probe's self-attention: ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``, no rotary positions."""

    def __init__(self, config: VJEPA2Config, attn_implementation: str = "sdpa", output: bool = True):
        nn.Module.__init__(self)
        d = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, d // config.num_attention_heads
        self.attn_implementation = attn_implementation
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        if output:
            self.out_proj = nn.Linear(d, d)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        tokens = queries if tokens is None else tokens
        b, n, d = queries.shape
        q, k, v = self._heads(self.q_proj(queries)), self._heads(self.k_proj(tokens)), self._heads(self.v_proj(tokens))
        out = attend(q, k, v, sdpa=self.attn_implementation == "sdpa").transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out) if hasattr(self, "out_proj") else out


class VJEPA2PoolerLayer(nn.Module):
    """A probe layer: x + Attn(layer_norm1(·)), then + MLP(layer_norm2(·)). Self-attention (``self_attn``), or, given
    ``queries``, the queries attending over the normalised tokens (``cross_attn``, no output projection; the residual
    is the queries)."""

    def __init__(self, config: VJEPA2Config, cross: bool, attn_implementation: str = "sdpa"):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        attention = VJEPA2PoolerSelfAttention(config, attn_implementation, output=not cross)
        setattr(self, "cross_attn" if cross else "self_attn", attention)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VJEPA2MLP(config, POOLER_MLP_RATIO * config.hidden_size)

    def forward(self, x: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        if queries is None:
            x = x + self.self_attn(self.layer_norm1(x))
        else:
            x = queries + self.cross_attn(queries, self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VJEPA2AttentivePooler(nn.Module):
    def __init__(self, config: VJEPA2Config, attn_implementation: str = "sdpa"):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.cross_attention_layer = VJEPA2PoolerLayer(config, True, attn_implementation)
        self.self_attention_layers = nn.ModuleList(VJEPA2PoolerLayer(config, False, attn_implementation)
                                                   for _ in range(config.num_pooler_layers))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D): the learned query's result after the self-attention layers."""
        for layer in self.self_attention_layers:
            tokens = layer(tokens)
        queries = self.query_tokens.expand(tokens.shape[0], -1, -1)
        return self.cross_attention_layer(tokens, queries)[:, 0]


class _VJEPA2Base(_VivitBase):
    """What both heads share with ViViT's (loading, saving, dtype, the attention switch, input checks)."""

    main_input_name = "pixel_values_videos"

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model().encoder.embeddings.patch_embeddings

    merging_refusal = ("merge_tokens= does not apply to V-JEPA 2: each token's rotary position is its place in the "
                       "patch grid, which a merged token no longer has; ViViT's Models 1 and 2 merge")

    def at_geometry(self, num_frames: int | None = None, image_size=None):
        """A copy of this model for ``num_frames`` frames of ``image_size`` (one side): its rotary positions laid over
        the new grid, as transformers lays them when config.json's ``crop_size`` says the new size (it has no learned
        positions to resize)."""
        if image_size is not None and not isinstance(image_size, int):
            h, w = image_size
            if h != w:
                raise ConfigError(f"V-JEPA 2 takes square frames (its rotary positions assume one side): "
                                  f"image_size {h}x{w}")
            image_size = h
        new = geometry_config(self.config, num_frames, image_size)
        if new is None:
            return self
        check_geometry(new)
        model, base = self._copy_at(new)
        for layer in base.encoder.layer:
            layer.attention.rope = rotary_tables(new, new.num_patches)
        return model


class VJEPA2Model(_VJEPA2Base):
    """The bare encoder: the tokens after the final LayerNorm, as transformers' ``VJEPA2Model`` with
    ``skip_predictor=True`` (the predictor is pre-training's and is not built here)."""

    bare_encoder = True

    def __init__(self, config: VJEPA2Config, attn_implementation: str = "sdpa", **_ignored):
        super().__init__()
        check_geometry(config)
        self.config = config
        self.encoder = VJEPA2Encoder(config, attn_implementation)
        init_weights(self, config.initializer_range)

    def forward(self, pixel_values_videos: torch.Tensor, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                skip_predictor: bool = True):
        """The tokens after the final LayerNorm (B, N, D); with ``output_hidden_states`` the embeddings and each layer's
        output (before the final LayerNorm), with ``output_attentions`` each layer's attention probabilities."""
        if not skip_predictor:
            raise ConfigError("skip_predictor= False: V-JEPA 2's predictor (pre-training's masked-feature prediction) "
                              "is not built in vivit_deploy; the encoder's tokens are what its classifier reads")
        output_attentions, output_hidden_states, return_dict = self._flags(output_attentions, output_hidden_states,
                                                                           return_dict)
        attentions: list | None = [] if output_attentions else None
        hidden_states: list | None = [] if output_hidden_states else None
        x = self.encoder(self._prepare(pixel_values_videos), attentions, hidden_states)
        return encoder_output(x, None, hidden_states, attentions, return_dict)


class VJEPA2ForVideoClassification(_VJEPA2Base):
    """The encoder, the attentive probe and a linear classifier."""

    def __init__(self, config: VJEPA2Config, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.vjepa2 = VJEPA2Model(config, attn_implementation=attn_implementation)
        self.pooler = VJEPA2AttentivePooler(config, attn_implementation)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.pooler, config.initializer_range)
        init_weights(self.classifier, config.initializer_range)
        nn.init.trunc_normal_(self.pooler.query_tokens, std=config.initializer_range)

    def forward(self, pixel_values_videos: torch.Tensor, labels: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None):
        """The logits (B, num_labels), and with ``labels`` the loss; hidden states and attentions as ``VJEPA2Model``'s.
        A :class:`VideoClassifierOutput`, or with ``return_dict=False`` its tuple."""
        output_attentions, output_hidden_states, return_dict = self._flags(output_attentions, output_hidden_states,
                                                                           return_dict)
        encoded = self.vjepa2(pixel_values_videos, output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.pooler(encoded.last_hidden_state))
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        out = VideoClassifierOutput(loss, logits, encoded.hidden_states, encoded.attentions)
        return out if return_dict else out.to_tuple()


__all__ = ["IGNORED_KEYS", "VJEPA2Config", "VJEPA2ForVideoClassification", "VJEPA2Model", "rotary_tables"]
