"""ViViT Models 2 and 3 in plain PyTorch, one file, top to bottom: the factorised encoder and factorised self-attention.

Arnab et al., "ViViT: A Video Vision Transformer" (2021), sections 3.3 and 3.4, in the layout vit-pytorch trains
(``vit_pytorch.vivit.ViViT``, ``variant="factorized_encoder" | "factorized_self_attention"``; ``convert/vit_pytorch.py``
converts its checkpoints). Every transformer layer is Model 1's pre-LN ``Layer`` (``modeling.py``), so per-layer
drift, ``--keep-fp32`` and the quantizer see the same parts in every variant; the layers sit in one list in the order
the data flows through them (``config.num_layers``):

    vivit.embeddings.{patch_norm, projection, norm, position_embeddings, cls_token}
    Model 2 (factorised encoder), S spatial then T temporal layers:
        vivit.encoder.layer.0 .. S-1          a spatial encoder over each time step's tokens (B*F, 1+N, D)
        vivit.encoder.spatial_norm            its final LayerNorm; then each step's CLS token (or mean)
        vivit.encoder.temporal_cls_token      prepended to the steps' tokens (B, 1+F, D)
        vivit.encoder.temporal_position_embeddings        (positions "separate" only)
        vivit.encoder.layer.S .. S+T-1        the temporal encoder over the steps
    Model 3 (factorised self-attention), each block as two layers:
        vivit.encoder.layer.2i                attention over space, within each time step (no MLP)
        vivit.encoder.layer.2i+1              attention over time, within each patch position, then the MLP
    vivit.layernorm, classifier               the final LayerNorm; the classifier on the CLS token (or the mean)

Tubelets are flattened as vit-pytorch flattens them: (frames, height, width, channels) within one, after a LayerNorm
over that vector, a linear projection and a LayerNorm over the tokens. Model 2's step encoder
(``step_tokens``) and temporal encoder (``window_logits``) are also callable alone: ``forward`` is exactly the two in
turn, which is what lets a stream keep the steps it has already encoded (``streaming``). With vit-pytorch's
per-step positions a step's encoding depends on where it sits in the clip, so only the paper's separate positions
(``config.positions == "separate"``) make a step's encoding reusable.
"""

from __future__ import annotations

import torch
from torch import nn

from vivit_deploy.errors import ConfigError
from vivit_deploy.model.config import VivitConfig, check_attn_implementation
from vivit_deploy.model.hf_layout import write_checkpoint
from vivit_deploy.model.modeling import (Attention, Layer, ModelMembers, TokenMerging, _exporting, token_merging_schedule,
                                         validate_pixel_values)
from vivit_deploy.model.outputs import VideoClassifierOutput


class FactorisedEmbeddings(nn.Module):
    """Tubelets to tokens (B, F, [1 +] N, D): LayerNorm over each flattened tubelet, a linear projection, a LayerNorm;
    positions, and a CLS token per time step (``pooling == "cls"``) without one."""

    def __init__(self, config: VivitConfig):
        super().__init__()
        t, ph, pw = config.tubelet_size
        patch_dim = config.num_channels * t * ph * pw
        d, eps = config.hidden_size, config.layer_norm_eps
        self.tubelet, self.grid = (t, ph, pw), config.grid
        self.patch_norm = nn.LayerNorm(patch_dim, eps=eps)
        self.projection = nn.Linear(patch_dim, d)
        self.norm = nn.LayerNorm(d, eps=eps)
        steps, gh, gw = config.grid
        cls = config.pooling == "cls"
        self.separate = config.positions == "separate"
        # per step: one vector per (time step, patch); separate: per patch (and the CLS token), shared by every step
        shape = (1, gh * gw + cls, d) if self.separate else (1, steps, gh * gw, d)
        self.position_embeddings = nn.Parameter(torch.zeros(shape))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cls else None

    def tubelets(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) to (B, T/t, N, t*ph*pw*C): vit-pytorch's 'b c (f pf) (h p1) (w p2) -> b f (h w) (pf p1 p2 c)'."""
        (t, ph, pw), (b, frames, c, h, w) = self.tubelet, pixel_values.shape
        x = pixel_values.reshape(b, frames // t, t, c, h // ph, ph, w // pw, pw)
        x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)  # (b, f, h', w', t, ph, pw, c)
        return x.reshape(b, frames // t, (h // ph) * (w // pw), t * ph * pw * c)

    def forward(self, pixel_values: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``positions``: with per-step positions and clips of one time step each (B, t, C, H, W), the step index
        each clip's positions are taken at (B,); by default a clip's steps take 0..F-1."""
        x = self.norm(self.projection(self.patch_norm(self.tubelets(pixel_values))))  # (B, F, N, D)
        b, f = x.shape[:2]
        if not self.separate:
            x = x + (self.position_embeddings[:, :f] if positions is None else self.position_embeddings[0, positions, None])
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(b, f, 1, -1), x), dim=2)
        if self.separate:
            x = x + self.position_embeddings[:, None]
        return x


class SpaceLayer(nn.Module):
    """Model 3's attention over space: x + Attn(LN(x)) within each time step of (B, F, N, D); no MLP."""

    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config, attn_implementation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, n, d = x.shape
        x = x.reshape(b * f, n, d)
        x = x + self.attention(self.layernorm_before(x))
        return x.reshape(b, f, n, d)


class TimeLayer(Layer):
    """Model 3's attention over time, then the MLP: Model 1's block within each patch position of (B, F, N, D)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, f, n, d = x.shape
        x = x.transpose(1, 2).reshape(b * n, f, d)
        x = super().forward(x)
        return x.reshape(b, n, f, d).transpose(1, 2)


def _pool(x: torch.Tensor, cls: bool, dims: tuple[int, ...]) -> torch.Tensor:
    """The CLS token (index 0 along ``dims``), or the mean over them."""
    if not cls:
        return x.mean(dim=dims)
    for dim in sorted(dims, reverse=True):
        x = x.select(dim, 0)
    return x


class FactorisedEncoder(nn.Module):
    """Model 2's encoders: the spatial layers over each step, its final norm and pooling, then the temporal layers.

    Token merging (ToMe) runs in the spatial encoder, within each time step: a step's merge depends on that step's
    tokens alone, so a stream that encodes each step once and reuses it (``step_tokens``) computes exactly what the
    whole clip does. The class token is never merged; mean pooling weighs each merged token by its size, the mean
    over the patches it stands for. The temporal layers hold one token per step and merge none."""

    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        d, steps = config.hidden_size, config.grid[0]
        self.spatial_layers = config.num_hidden_layers
        self.cls = config.pooling == "cls"
        self.layer = nn.ModuleList(Layer(config, attn_implementation) for _ in range(config.num_layers))
        self.spatial_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, d)) if self.cls else None
        self.temporal_position_embeddings = (nn.Parameter(torch.zeros(1, steps + self.cls, d))
                                             if config.positions == "separate" else None)
        self.merge_tokens: tuple[int, ...] = (0,) * self.spatial_layers  # ToMe's r per spatial layer (0: none)
        self.proportional_attention = True

    def encode_steps(self, x: torch.Tensor) -> torch.Tensor:
        """(S, [1 +] N, D) tokens of S time steps to one token each (S, D)."""
        if not any(self.merge_tokens):
            for layer in self.layer[:self.spatial_layers]:
                x = layer(x)
            return _pool(self.spatial_norm(x), self.cls, (1,))
        merging = TokenMerging(x, proportional=self.proportional_attention)
        for layer, r in zip(self.layer[:self.spatial_layers], self.merge_tokens):
            x = layer(x, None, None, merging, r)
        x = self.spatial_norm(x)
        if self.cls or merging.size is None:
            return _pool(x, self.cls, (1,))
        size = merging.size.to(x.dtype)  # (S, N', 1): the mean over the patches, each merged token by its share
        return (x * size).sum(dim=1) / size.sum(dim=1)

    def encode_window(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, F, D) step tokens to the temporal encoder's output (B, [1 +] F, D), before the final norm."""
        if self.temporal_cls_token is not None:
            tokens = torch.cat((self.temporal_cls_token.expand(tokens.shape[0], 1, -1), tokens), dim=1)
        if self.temporal_position_embeddings is not None:
            tokens = tokens + self.temporal_position_embeddings
        for layer in self.layer[self.spatial_layers:]:
            tokens = layer(tokens)
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, n, d = x.shape
        return self.encode_window(self.encode_steps(x.reshape(b * f, n, d)).reshape(b, f, d))


class FactorisedSelfAttentionEncoder(nn.Module):
    """Model 3's blocks, each a SpaceLayer then a TimeLayer, over (B, F, [1 +] N, D)."""

    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.layer = nn.ModuleList((SpaceLayer if i % 2 == 0 else TimeLayer)(config, attn_implementation)
                                   for i in range(config.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class FactorisedBackbone(nn.Module):
    """``vivit``: the embeddings, the variant's encoder and the final LayerNorm."""

    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.embeddings = FactorisedEmbeddings(config)
        encoder = FactorisedEncoder if config.variant == "factorised_encoder" else FactorisedSelfAttentionEncoder
        self.encoder = encoder(config, attn_implementation)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class FactorisedVivitForVideoClassification(ModelMembers):
    """Model 2 or 3 with a linear classifier; ``forward(pixel_values).logits`` is (B, num_labels), as Model 1's."""

    main_input_name = "pixel_values"

    def __init__(self, config: VivitConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        if not config.factorised:
            raise ConfigError("FactorisedVivitForVideoClassification is Models 2 and 3; Model 1 (variant 'joint') is "
                              "VivitForVideoClassification")
        check_attn_implementation(attn_implementation)
        self.config = config
        self.vivit = FactorisedBackbone(config, attn_implementation)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        for parameter in self.parameters():  # random weights, as vit-pytorch's randn for the tokens and positions
            if parameter.dim() > 1 or parameter is self.vivit.embeddings.cls_token:
                nn.init.normal_(parameter, std=config.initializer_range)

    @property
    def cls(self) -> bool:
        return self.config.pooling == "cls"

    @property
    def merge_tokens(self) -> tuple[int, ...]:
        """ToMe's r per layer (``config.num_layers``): Model 2's spatial layers merge, its temporal ones do not; Model
        3 merges none."""
        if self.config.variant != "factorised_encoder":
            return (0,) * self.config.num_layers
        return self.vivit.encoder.merge_tokens + (0,) * self.config.temporal_layers

    @property
    def merging_refusal(self) -> str | None:
        if self.config.variant == "factorised_encoder":
            return None
        return ("merge_tokens= does not apply to Model 3 (factorised self-attention): its attention over time pairs each "
                "patch position across the frames, and merging within a frame would leave frames with different tokens; "
                "Models 1 and 2 merge")

    def set_token_merging(self, merge_tokens, proportional_attention: bool = True) -> None:
        """Model 2: merge tokens (ToMe) in the spatial encoder, within each time step (r for every spatial layer, or
        one per layer; the temporal layers' entries, if given, must be 0). Model 3 refuses: its attention over time
        pairs each patch position across the frames, which merging within a frame would break."""
        config = self.config
        if self.merging_refusal:
            if any(token_merging_schedule(merge_tokens, config.num_layers)):
                raise ConfigError(self.merging_refusal)
            return
        spatial = config.num_hidden_layers
        if isinstance(merge_tokens, int) and not isinstance(merge_tokens, bool):
            schedule = token_merging_schedule(merge_tokens, spatial)
        else:
            schedule = token_merging_schedule(merge_tokens, config.num_layers)
            if any(schedule[spatial:]):
                raise ConfigError(f"merge_tokens= merges in Model 2's spatial encoder (its first {spatial} layers); its "
                                  f"temporal layers hold one token per time step: give 0 for them, got "
                                  f"{list(schedule[spatial:])}")
            schedule = schedule[:spatial]
        self.vivit.encoder.merge_tokens = schedule
        self.vivit.encoder.proportional_attention = bool(proportional_attention)

    # -- Model 2 in two parts: each time step's encoding, then the window's ------------------------------------------

    def step_tokens(self, steps: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Model 2's spatial encoder on S time steps' frames (S, t, C, H, W): their tokens (S, D). ``positions``: for
        per-step positions, each step's index in its clip (required then; the paper's separate positions need none)."""
        if self.config.variant != "factorised_encoder":
            raise ConfigError("step tokens are Model 2's (the factorised encoder)")
        if positions is None and self.config.positions == "per_step":
            raise ConfigError("with per-step positions a step's tokens depend on its index in the clip: give positions")
        x = self.vivit.embeddings(steps, positions)  # (S, 1, [1 +] N, D): one step of t frames each
        return self.vivit.encoder.encode_steps(x[:, 0])

    def window_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Model 2's temporal encoder, final norm and classifier on the step tokens of B clips (B, F, D)."""
        encoded = self.vivit.layernorm(self.vivit.encoder.encode_window(tokens))
        return self.classifier(_pool(encoded, self.cls, (1,)))

    # -- the whole clip -------------------------------------------------------------------------------------------

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                output_attentions: bool | None = None, head_mask: torch.Tensor | None = None):
        """The logits (B, num_labels) of clips (B, T, C, H, W), and with ``labels`` the loss (as Model 1's)."""
        from vivit_deploy.model.modeling import classification_loss

        if output_attentions or head_mask is not None:
            raise ConfigError("attention maps and head masks are Model 1's (transformers' ViViT); the factorised "
                              "variants return logits and hidden states")
        if not _exporting():
            validate_pixel_values(pixel_values, self.config)
        x = pixel_values.to(self.dtype)
        config = self.config
        hidden = [] if (config.output_hidden_states if output_hidden_states is None else output_hidden_states) else None
        if config.variant == "factorised_encoder":
            b, frames = x.shape[:2]
            t = config.tubelet_size[0]
            steps = x.reshape(b * (frames // t), t, *x.shape[2:])
            positions = None
            if config.positions == "per_step":
                positions = torch.arange(frames // t, device=x.device).repeat(b)
            tokens = self.step_tokens(steps, positions).reshape(b, frames // t, -1)
            logits = self.window_logits(tokens)
            if hidden is not None:
                hidden.append(tokens)
        else:
            x = self.vivit.embeddings(x)
            for layer in self.vivit.encoder.layer:
                if hidden is not None:
                    hidden.append(x)
                x = layer(x)
            if hidden is not None:
                hidden.append(x)
            logits = self.classifier(_pool(self.vivit.layernorm(x), self.cls, (1, 2)))
        loss = None if labels is None else classification_loss(logits, labels, config)
        out = VideoClassifierOutput(loss, logits, None if hidden is None else tuple(hidden), None)
        return out if (config.return_dict if return_dict is None else return_dict) else out.to_tuple()

    # -- what Model 1's classes also offer --------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, source, **kwargs):
        from vivit_deploy.model.checkpoint import load_model

        model = load_model(source, **kwargs)
        if not isinstance(model, cls):
            raise ConfigError(f"{source} holds a Model 1 checkpoint: load it with VivitForVideoClassification")
        return model

    def at_geometry(self, num_frames: int | None = None, image_size=None):
        config = self.config
        if (num_frames or config.num_frames) == config.num_frames and (image_size or config.image_size) == config.image_size:
            return self
        raise ConfigError("num_frames= / image_size= resize Model 1's position embeddings; the factorised variants run at "
                          f"the geometry they were trained at ({config.num_frames} frames of "
                          f"{config.image_height}x{config.image_width})")

    def save_pretrained(self, directory, preprocessor=None, **_ignored):
        config = self.config.to_dict()
        config["architectures"] = [type(self).__name__]
        config["dtype"] = str(self.dtype).removeprefix("torch.")
        return write_checkpoint(directory, config, self.state_dict(), preprocessor)


__all__ = ["FactorisedEmbeddings", "FactorisedEncoder", "FactorisedSelfAttentionEncoder",
           "FactorisedVivitForVideoClassification", "SpaceLayer", "TimeLayer"]
