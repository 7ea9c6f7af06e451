"""DINO ViT-S/16 (transformers `ViTModel`) for the DINO metric of DreamBooth: cosine between CLS embeddings.

- `tiny`: a ViTModel of 2 layers, width 32, patch 16, on 32 px images, random weights, seeded.
- `paper`: `facebook/dino-vits16` (or a local directory) from the Hugging Face cache.
- `paper-shapes`: ViT-S/16 at full size with random weights.

The embedding is the CLS token after the final layer norm (`last_hidden_state[:, 0]`), which is what DINO's own
`VisionTransformer.forward` returns; no pooler (DINO has none). Preprocessing is DINO's evaluation transform: resize
the shorter side to 256/224 of the input size (bicubic), centre crop, ImageNet mean/std.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from huggingface_hub.errors import HFValidationError
from PIL import Image

from lambda_eclipse.errors import ModelNotFoundError
from lambda_eclipse.models import seeded  # imported before transformers' models: makes torchvision importable
from lambda_eclipse.profile import Profile, pick

from transformers import ViTConfig, ViTModel  # isort: skip

PAPER_DINO = "facebook/dino-vits16"
TINY: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            image_size=32, patch_size=16)
VIT_S16: dict[str, Any] = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                               image_size=224, patch_size=16)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DinoBundle:
    model: ViTModel
    model_id: str
    device: torch.device
    dtype: torch.dtype

    @property
    def image_size(self) -> int:
        size = self.model.config.image_size  # ViTConfig allows (height, width); DINO's are square: one int
        assert isinstance(size, int)
        return size

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 → (3, S, S) normalised: DINO's Resize(256) + CenterCrop(224) scaled to this model's S."""
        size = self.image_size
        pil = Image.fromarray(image)
        short = round(size * 256 / 224)
        w, h = pil.size
        scaled = (short, round(short * h / w)) if w <= h else (round(short * w / h), short)
        pil = pil.resize(scaled, Image.Resampling.BICUBIC)
        left, top = round((scaled[0] - size) / 2), round((scaled[1] - size) / 2)
        pixels = np.asarray(pil.crop((left, top, left + size, top + size)), np.float32) / 255
        pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
        return torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, hidden) float32 CLS embeddings, one forward."""
        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device, self.dtype)
        with torch.inference_mode():
            return self.model(pixel_values=pixels).last_hidden_state[:, 0].float().cpu().numpy()


def _paper(source: str, dtype: torch.dtype) -> tuple[ViTModel, str]:
    try:
        return ViTModel.from_pretrained(source, add_pooling_layer=False, dtype=dtype), source
    except (OSError, HFValidationError) as exc:
        raise ModelNotFoundError(
            "DINO ViT-S/16",
            source,
            f"download {PAPER_DINO} on a machine with hub access (huggingface-cli download {PAPER_DINO}) and copy its "
            "Hugging Face cache (HF_HOME) here, or save it to a directory and set models.dino=/that/dir",
        ) from exc


def _random(profile: Profile, config: dict[str, Any], source: str, dtype: torch.dtype) -> tuple[ViTModel, str]:
    with seeded():
        model = ViTModel(ViTConfig(**config), add_pooling_layer=False)
    return model, f"dino ViT-S/16 {profile} (random weights)"


# The DINO of each profile and its model id (every loader takes the source and dtype; only `paper` reads them).
LOADERS: dict[Profile, Callable[[str, torch.dtype], tuple[ViTModel, str]]] = {
    Profile.TINY: partial(_random, Profile.TINY, TINY),
    Profile.PAPER: _paper,
    Profile.PAPER_SHAPES: partial(_random, Profile.PAPER_SHAPES, VIT_S16),
}


def load_dino(profile: str, source: str, device: torch.device, dtype: torch.dtype) -> DinoBundle:
    model, model_id = pick(LOADERS, profile, "DINO")(source, dtype)
    model = model.to(device=device, dtype=dtype)  # pyright: ignore[reportCallIssue]  (transformers' @wraps(Module.to) hides self)
    return DinoBundle(model.eval(), model_id, device, dtype)
