"""`vivit-deploy convert`: a checkpoint another library trained, to a checkpoint directory every command reads."""

from __future__ import annotations

from pathlib import Path

import click

from vivit_deploy.cli.common import Stopwatch, friendly_errors


@click.group("convert")
def convert() -> None:
    """Convert a checkpoint of another library into the Hugging Face layout this package reads."""


@convert.command("vit-pytorch")
@click.option("--args", "args_path", required=True, type=click.Path(path_type=Path),
              help="A JSON object of the keyword arguments vit_pytorch.vivit.ViViT(...) was built with.")
@click.option("--weights", "weights_path", required=True, type=click.Path(path_type=Path),
              help="Its state_dict, saved with torch.save (read with weights_only=True: no code in it runs).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The checkpoint directory to write (config.json, model.safetensors, preprocessor_config.json).")
@click.option("--labels", "labels_path", type=click.Path(path_type=Path), default=None,
              help="Class names: a JSON list, or an object {index: name} [default: LABEL_0, LABEL_1, ...].")
@friendly_errors
def vit_pytorch_command(args_path, weights_path, output, labels_path):
    """A vit-pytorch ViViT (Model 2, the factorised encoder, or Model 3, factorised self-attention; cls or mean
    pooling) as a checkpoint directory: predict, classify, stream, vivit-export, compare, bench and triton-repo
    take it as they take a transformers checkpoint. Its logits equal vit-pytorch's on the same clip.

    The preprocessor_config.json written is transformers' defaults at the model's size (vit-pytorch records no
    preprocessing): replace it with what the model was trained on.
    """
    from vivit_deploy.model.checkpoint import load_config
    from vivit_deploy.convert.vit_pytorch import convert as convert_checkpoint

    progress = Stopwatch()
    progress(f"converting {weights_path} ...")
    directory = convert_checkpoint(args_path, weights_path, output, labels_path)
    config = load_config(directory)
    layers = (f"{config.num_hidden_layers} spatial + {config.temporal_layers} temporal layers"
              if config.variant == "factorised_encoder" else f"{config.num_hidden_layers} blocks")
    click.echo(f"{directory}: {config.variant.replace('_', ' ')} ({layers}, width {config.hidden_size}, "
               f"{config.pooling} pooling), {config.num_frames} frames of {config.image_height}x{config.image_width}, "
               f"{config.num_labels} labels; preprocessor_config.json holds transformers' defaults at that size")
