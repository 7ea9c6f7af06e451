"""File names of the diffusers layout that checkpoints of the prior and the decoder's UNet are saved in (and the
released λ-ECLIPSE prior is published in): one place, as diffusers keeps them."""

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
