"""VideoMAE's video classifier (Tong et al., NeurIPS 2022), with transformers' parameter names: one file, top to bottom.

    from vivit_deploy import VideoMAEForVideoClassification     # instead of: from transformers import ...
    model = VideoMAEForVideoClassification.from_pretrained("path/or/hub-id")

Its config, ``VideoMAEConfig``, sits with the others in ``config.py``: configs are torch-free data, read by processes
that never import torch (an ONNX Runtime or OpenVINO runtime reads the config an exported file carries). What
differs from ViViT's Model 1 (``modeling.py``), whose blocks it reuses:

- no class token: the tokens are the tubelets' alone (``class_tokens`` 0);
- fixed sinusoidal positions (Vaswani et al.'s table over the tubelets in (time, row, column) order), computed from the
  geometry, never stored in a checkpoint; another frame count or resolution computes its own table;
- query and value projections with a bias (``qv_bias``), the key projection without;
- ``use_mean_pooling`` (the fine-tuned checkpoints'): the mean of the last layer's tokens through ``fc_norm`` (a
  LayerNorm with PyTorch's default eps, 1e-5, as transformers builds it), no final norm in the encoder; without it,
  the encoder's final LayerNorm and the first token (a tubelet: VideoMAE has no class token).

Checkpoints of transformers 4 (``q_bias``/``v_bias`` parameters) and 5 (``query.bias``/``value.bias``, or its renamed
``layers.N.attention.q_proj`` keys) load; the masked-autoencoder pre-training head (``VideoMAEForPreTraining``) does
not: it reconstructs pixels, it does not classify.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from vivit_deploy.errors import InputShapeError
from vivit_deploy.model.config import VideoMAEConfig
from vivit_deploy.model.modeling import (Encoder, TubeletEmbeddings, _VivitBase, check_geometry, classification_loss,
                                         encoder_output, geometry_config, init_weights)
from vivit_deploy.model.outputs import VideoClassifierOutput

FC_NORM_EPS = 1e-5  # transformers builds fc_norm as nn.LayerNorm(hidden_size): PyTorch's default eps
# transformers 4 kept the query and value biases as parameters of their own; 5 keeps them in the Linear layers
RENAMED_KEYS = ((re.compile(r"\.attention\.attention\.q_bias$"), ".attention.attention.query.bias"),
                (re.compile(r"\.attention\.attention\.v_bias$"), ".attention.attention.value.bias"))


def sinusoid_table(num_positions: int, width: int) -> torch.Tensor:
    """VideoMAE's fixed positions (1, N, D): position p, channel j at angle p / 10000^(2 * (j // 2) / D), sine on even
    channels, cosine on odd ones; computed in float64, as transformers computes it with numpy, then float32."""
    cpu = torch.device("cpu")  # also where a model is built on the meta device: the table is a formula, not a weight
    position = torch.arange(num_positions, dtype=torch.float64, device=cpu)[:, None]
    exponent = (2 * (torch.arange(width, device=cpu) // 2)).to(torch.float64) / width
    angles = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64, device=cpu), exponent)
    table = torch.where(torch.arange(width, device=cpu) % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.to(torch.float32)[None]


class VideoMAEEmbeddings(nn.Module):
    """Tubelet tokens plus the fixed sinusoidal positions of the model's grid: a constant kept beside the module (not a
    weight, not in the state dict), moved to the tokens' device and dtype where it is added, as transformers does."""

    def __init__(self, config: VideoMAEConfig):
        super().__init__()
        self.patch_embeddings = TubeletEmbeddings(config)
        self.position_embeddings = sinusoid_table(config.num_patches, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embeddings(pixel_values)  # (B, N, D)
        return tokens + self.position_embeddings.to(device=tokens.device, dtype=tokens.dtype)


class _VideoMAEBase(_VivitBase):
    """What both heads share with ViViT's (loading, saving, dtype, token merging's switch)."""

    merging_refusal = ("merge_tokens= is not offered for VideoMAE: its mean pooling would need each merged token "
                       "weighed by its size, and Pollard and Wray measured VideoMAE losing far more accuracy than ViViT "
                       "at the same speed-up; ViViT's Models 1 and 2 merge")

    def at_geometry(self, num_frames: int | None = None, image_size=None):
        """A copy of this model for ``num_frames`` frames of ``image_size``: its sinusoidal positions computed for the
        new grid (they are a formula, not learned)."""
        new = geometry_config(self.config, num_frames, image_size)
        if new is None:
            return self
        check_geometry(new)
        model, base = self._copy_at(new)
        base.embeddings.position_embeddings = sinusoid_table(new.num_patches, new.hidden_size)
        return model


class VideoMAEModel(_VideoMAEBase):
    """The bare encoder: the tokens after the last layer (and the final LayerNorm when the model does not pool by
    mean), as transformers' ``VideoMAEModel``."""

    bare_encoder = True

    def __init__(self, config: VideoMAEConfig, attn_implementation: str = "sdpa", **_ignored):
        super().__init__()
        check_geometry(config)
        self.config = config
        self.embeddings = VideoMAEEmbeddings(config)
        self.encoder = Encoder(config, attn_implementation)
        self.layernorm = None if config.use_mean_pooling else nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        init_weights(self, config.initializer_range)

    def forward(self, pixel_values: torch.Tensor, head_mask: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, bool_masked_pos: torch.Tensor | None = None):
        """The last layer's tokens (B, N, D) (after the final LayerNorm when there is one); with
        ``output_hidden_states`` the embeddings and each layer's output, with ``output_attentions`` each layer's
        attention probabilities. ``bool_masked_pos`` (B, N): drop the masked tubelets, as in pre-training (every clip
        the same number)."""
        from vivit_deploy.model.modeling import _head_mask

        output_attentions, output_hidden_states, return_dict = self._flags(output_attentions, output_hidden_states,
                                                                           return_dict)
        attentions: list | None = [] if output_attentions else None
        hidden_states: list | None = [] if output_hidden_states else None
        x = self.embeddings(self._prepare(pixel_values))
        if bool_masked_pos is not None:
            keep = ~bool_masked_pos.to(torch.bool)
            counts = keep.sum(dim=1)
            if bool(counts.ne(counts[0]).any()):
                raise InputShapeError("bool_masked_pos must mask the same number of tubelets in every clip")
            x = x[keep].reshape(x.shape[0], -1, x.shape[-1])
        x = self.encoder(x, _head_mask(head_mask, self.config, x.dtype), attentions, hidden_states)
        if self.layernorm is not None:
            x = self.layernorm(x)
        return encoder_output(x, None, hidden_states, attentions, return_dict)


class VideoMAEForVideoClassification(_VideoMAEBase):
    """The encoder and a linear classifier on the mean token (through ``fc_norm``) or the first token."""

    def __init__(self, config: VideoMAEConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.videomae = VideoMAEModel(config, attn_implementation=attn_implementation)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=FC_NORM_EPS) if config.use_mean_pooling else None
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(self, pixel_values: torch.Tensor, head_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None):
        """The logits (B, num_labels), and with ``labels`` the loss; hidden states and attentions as
        ``VideoMAEModel``'s. A :class:`VideoClassifierOutput`, or with ``return_dict=False`` its tuple."""
        output_attentions, output_hidden_states, return_dict = self._flags(output_attentions, output_hidden_states,
                                                                           return_dict)
        encoded = self.videomae(pixel_values, head_mask, output_attentions, output_hidden_states, return_dict=True)
        tokens = encoded.last_hidden_state
        pooled = self.fc_norm(tokens.mean(dim=1)) if self.fc_norm is not None else tokens[:, 0]
        logits = self.classifier(pooled)
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        out = VideoClassifierOutput(loss, logits, encoded.hidden_states, encoded.attentions)
        return out if return_dict else out.to_tuple()


__all__ = ["FC_NORM_EPS", "RENAMED_KEYS", "VideoMAEConfig", "VideoMAEEmbeddings", "VideoMAEForVideoClassification",
           "VideoMAEModel", "sinusoid_table"]
