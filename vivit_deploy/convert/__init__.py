"""Checkpoints other libraries trained, converted to the Hugging Face layout every command reads (``vit_pytorch``:
vit-pytorch's ViViT, Models 2 and 3). A converter writes the model's weights and config and a preprocessor config,
so it sits above the model and the preprocessor."""
