"""TimeSformer's video classifier (Bertasius et al., ICML 2021), with transformers' parameter names: one file.

    from vivit_deploy import TimesformerForVideoClassification    # instead of: from transformers import ...
    model = TimesformerForVideoClassification.from_pretrained("path/or/hub-id")

Each frame is cut into patches (a Conv2d: a tubelet of one frame); a class token and learned positions over one
frame's patches are added per frame, then learned time positions per patch position. The tokens are kept as transformers
keeps them: the class token, then the patches in (row, column, time) order. ``config.attention_type`` (its config,
``TimesformerConfig``, is in ``config.py`` with the others):

- "divided_space_time" (the paper's best): in every block, attention over time within each patch position (its own
  LayerNorm, attention and a ``temporal_dense`` projection, added to the tokens), then attention over space within
  each frame, the class token joining every frame and its results averaged over the frames, then the MLP;
- "joint_space_time": one attention over every token, as ViViT's Model 1;
- "space_only": each frame on its own, no time positions; transformers returns a row of logits per frame
  (B x T rows), and so does this class, so that its outputs are transformers'. ``clip_logits`` averages them per clip.

The attention projects Q, K and V with one ``qkv`` Linear, as the checkpoints store it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vivit_deploy.errors import ConfigError, InputShapeError
from vivit_deploy.model.config import TimesformerConfig
from vivit_deploy.model.modeling import (AttentionOutput, Intermediate, Output, _head_mask, _VivitBase, attend,
                                         check_attn_implementation, check_geometry, classification_loss, encoder_output,
                                         geometry_config, init_weights)
from vivit_deploy.model.outputs import VideoClassifierOutput


class TimesformerEmbeddings(nn.Module):
    """Patch tokens of every frame, the class token and the spatial positions (per frame), the time positions (per
    patch position; not for "space_only"): (B, 1 + N x T, D) in (row, column, time) order, or (B x T, 1 + N, D)."""

    def __init__(self, config: TimesformerConfig):
        super().__init__()
        _, ph, pw = config.tubelet_size
        self.config = config
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=(ph, pw),
                                                     stride=(ph, pw))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.grid[1] * config.grid[2] + 1, config.hidden_size))
        if config.attention_type != "space_only":
            self.time_embeddings = nn.Parameter(torch.zeros(1, config.num_frames, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = pixel_values.shape
        x = self.patch_embeddings.projection(pixel_values.reshape(b * t, c, h, w))  # (B*T, D, H', W')
        x = x.flatten(2).transpose(1, 2)  # (B*T, N, D)
        x = torch.cat((self.cls_token.expand(b * t, -1, -1), x), dim=1) + self.position_embeddings  # (B*T, 1+N, D)
        if self.config.attention_type == "space_only":
            return x
        cls, patches = x[:b, :1], x[:, 1:]  # every frame's class token is the same: the token plus its position
        n, d = patches.shape[1], patches.shape[2]
        patches = patches.reshape(b, t, n, d).transpose(1, 2) + self.time_embeddings  # (B, N, T, D)
        return torch.cat((cls, patches.reshape(b, n * t, d)), dim=1)  # (B, 1 + N*T, D)


class TimesformerSelfAttention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection, as TimeSformer's checkpoints store it."""

    def __init__(self, config: TimesformerConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self.dropout_p = config.attention_probs_dropout_prob
        self.attn_implementation = check_attn_implementation(attn_implementation)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None,
                attentions: list | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attend(q, k, v, sdpa=self.attn_implementation == "sdpa", dropout_p=self.dropout_p, training=self.training,
                     head_mask=head_mask, attentions=attentions)
        return out.transpose(1, 2).reshape(b, n, d)


class TimesformerAttention(nn.Module):
    def __init__(self, config: TimesformerConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.attention = TimesformerSelfAttention(config, attn_implementation)
        self.output = AttentionOutput(config)

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None, attentions: list | None = None):
        return self.output(self.attention(x, head_mask, attentions))


class TimesformerLayer(nn.Module):
    """One block of ``config.attention_type`` (see the module's description); stochastic depth is training only."""

    def __init__(self, config: TimesformerConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = TimesformerAttention(config, attn_implementation)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = Intermediate(config)
        self.output = Output(config)
        if config.attention_type == "divided_space_time":
            self.temporal_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.temporal_attention = TimesformerAttention(config, attn_implementation)
            self.temporal_dense = nn.Linear(config.hidden_size, config.hidden_size)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.output(self.intermediate(self.layernorm_after(x)))

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None, attentions: list | None = None):
        if self.config.attention_type != "divided_space_time":
            return self._mlp(x + self.attention(self.layernorm_before(x), head_mask, attentions))
        t = self.config.num_frames
        b, tokens, d = x.shape
        n = (tokens - 1) // t  # patches per frame
        cls, patches = x[:, :1], x[:, 1:]  # patches in (position, time) order
        # over time, within each patch position
        over_time = self.temporal_attention(self.temporal_layernorm(patches.reshape(b * n, t, d)))
        patches = patches + self.temporal_dense(over_time.reshape(b, n * t, d))
        # over space, within each frame, the class token in every frame
        frames = patches.reshape(b, n, t, d).transpose(1, 2).reshape(b * t, n, d)
        frames = torch.cat((cls.repeat(1, t, 1).reshape(b * t, 1, d), frames), dim=1)
        over_space = self.attention(self.layernorm_before(frames), head_mask, attentions)  # (B*T, 1+N, D)
        # the class token's results averaged over the frames, as a product with 1/T weights: OpenVINO 2026.4 compiles an
        # int8 file whose mean over the frames is a ReduceMean with the wrong axis (a shape error when it loads)
        weights = torch.full((1, t), 1.0 / t, dtype=over_space.dtype, device=over_space.device)
        cls_update = torch.matmul(weights, over_space[:, 0].reshape(b, t, d))  # (B, 1, D)
        patch_update = over_space[:, 1:].reshape(b, t, n, d).transpose(1, 2).reshape(b, n * t, d)
        return self._mlp(torch.cat((cls + cls_update, patches + patch_update), dim=1))


class TimesformerEncoder(nn.Module):
    def __init__(self, config: TimesformerConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.layer = nn.ModuleList(TimesformerLayer(config, attn_implementation) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, head_mask: torch.Tensor | None = None, attentions: list | None = None,
                hidden_states: list | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layer):
            if hidden_states is not None:
                hidden_states.append(x)
            x = layer(x, None if head_mask is None else head_mask[i], attentions)
        if hidden_states is not None:
            hidden_states.append(x)
        return x


class _TimesformerBase(_VivitBase):
    """What both heads share with ViViT's (loading, saving, dtype, the attention switch)."""

    merging_refusal = ("merge_tokens= does not apply to TimeSformer: its divided attention needs the same patches in "
                       "every frame (attention over time pairs each patch position across the frames), which merging "
                       "would break; ViViT's Models 1 and 2 merge")

    def at_geometry(self, num_frames: int | None = None, image_size=None):
        """A copy of this model for ``num_frames`` frames of ``image_size``: its space positions and time positions
        resized once as TimeSformer's own code resizes them when the input differs (nearest neighbour: the patch grid
        in both directions, the frames along time). transformers resizes them in its embeddings but its divided
        blocks still reshape by the configured frame count; this copy carries the new geometry in its config."""
        config = self.config
        new = geometry_config(config, num_frames, image_size)
        if new is None:
            return self
        check_geometry(new)
        model, base = self._copy_at(new)
        embeddings = base.embeddings
        embeddings.config = new
        for layer in base.encoder.layer:
            layer.config = new
        with torch.no_grad():
            positions = embeddings.position_embeddings  # (1, 1 + h*w, D)
            d = positions.shape[-1]
            (_, h, w), (_, nh, nw) = config.grid, new.grid
            grid = positions[:, 1:].transpose(1, 2).reshape(1, d, h, w)
            grid = F.interpolate(grid, size=(nh, nw), mode="nearest").flatten(2).transpose(1, 2)
            embeddings.position_embeddings = nn.Parameter(torch.cat((positions[:, :1], grid), dim=1))
            if new.attention_type != "space_only" and new.num_frames != config.num_frames:
                times = embeddings.time_embeddings.transpose(1, 2)  # (1, D, T)
                times = F.interpolate(times, size=new.num_frames, mode="nearest").transpose(1, 2)
                embeddings.time_embeddings = nn.Parameter(times)
        return model


class TimesformerModel(_TimesformerBase):
    """The bare encoder: the tokens after the final LayerNorm, as transformers' ``TimesformerModel``."""

    bare_encoder = True

    def __init__(self, config: TimesformerConfig, attn_implementation: str = "sdpa", **_ignored):
        super().__init__()
        check_geometry(config)
        if config.hidden_size % config.num_attention_heads:
            raise ConfigError(f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                              f"{config.num_attention_heads}")
        self.config = config
        self.embeddings = TimesformerEmbeddings(config)
        self.encoder = TimesformerEncoder(config, attn_implementation)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        init_weights(self, config.initializer_range)

    def forward(self, pixel_values: torch.Tensor, head_mask: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None):
        """The tokens after the final LayerNorm ((B, 1 + N x T, D); (B x T, 1 + N, D) for "space_only"); with
        ``output_hidden_states`` the embeddings and each layer's output, with ``output_attentions`` each layer's
        (spatial) attention probabilities."""
        output_attentions, output_hidden_states, return_dict = self._flags(output_attentions, output_hidden_states,
                                                                           return_dict)
        pixel_values = self._prepare(pixel_values)
        if pixel_values.shape[1] != self.config.num_frames:
            raise InputShapeError(f"pixel_values hold {pixel_values.shape[1]} frames; this TimeSformer takes "
                                  f"{self.config.num_frames}")
        attentions: list | None = [] if output_attentions else None
        hidden_states: list | None = [] if output_hidden_states else None
        x = self.embeddings(pixel_values)
        x = self.encoder(x, _head_mask(head_mask, self.config, x.dtype), attentions, hidden_states)
        return encoder_output(self.layernorm(x), None, hidden_states, attentions, return_dict)


class TimesformerForVideoClassification(_TimesformerBase):
    """The encoder and a linear classifier on the class token."""

    def __init__(self, config: TimesformerConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.timesformer = TimesformerModel(config, attn_implementation=attn_implementation)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(self, pixel_values: torch.Tensor, head_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None):
        """The logits of the class token ((B, num_labels); (B x T, num_labels) for "space_only", as transformers), and
        with ``labels`` the loss."""
        output_attentions, output_hidden_states, return_dict = self._flags(output_attentions, output_hidden_states,
                                                                           return_dict)
        encoded = self.timesformer(pixel_values, head_mask, output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(encoded.last_hidden_state[:, 0])
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        out = VideoClassifierOutput(loss, logits, encoded.hidden_states, encoded.attentions)
        return out if return_dict else out.to_tuple()

    def clip_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One row of logits per clip: "space_only"'s per-frame logits averaged over the frames; the logits otherwise."""
        logits = self(pixel_values, return_dict=True).logits
        if self.config.attention_type == "space_only":
            return logits.reshape(pixel_values.shape[0], self.config.num_frames, -1).mean(dim=1)
        return logits


__all__ = ["TimesformerEmbeddings", "TimesformerForVideoClassification", "TimesformerLayer", "TimesformerModel"]
