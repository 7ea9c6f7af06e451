"""Training batches: reference photos, augmented (crop, horizontal flip), with their z_x.

All randomness comes from one `torch.Generator` on the CPU (the training loop's, saved in every checkpoint), drawn in
the same order whatever the settings, so a resumed run sees the batches the uninterrupted run would have.
Pixels are in [-1, 1] (x / 127.5 − 1), as diffusers' Kandinsky 2.2 decoder fine-tuning feeds MoVQ.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from finetune.config import DataSection


def _square(image: Image.Image) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


class TrainingPhotos:
    def __init__(self, images: list[np.ndarray], embeddings: np.ndarray, resolution: int, cfg: DataSection):
        self.resolution, self.cfg = resolution, cfg
        self.embeddings = torch.from_numpy(np.asarray(embeddings, np.float32))
        # Resized once: centre crops are final here; random crops keep the detail their upscaling needs.
        self.photos = []
        for array in images:
            image = Image.fromarray(array)
            if cfg.crop == "center":
                image = _square(image).resize((resolution, resolution), Image.Resampling.BICUBIC)
            else:
                short = math.ceil(resolution / cfg.crop_min_scale)
                w, h = image.size
                scale = short / min(w, h)
                image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))),
                                     Image.Resampling.BICUBIC)
            self.photos.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())

    def __len__(self) -> int:
        return len(self.photos)

    def batch(self, generator: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(size, 3, R, R) float32 pixels in [-1, 1] and their (size, d) z_x, photos drawn uniformly with replacement
        (all subjects' photos together: several concepts in one model)."""
        indices = torch.randint(len(self.photos), (size,), generator=generator)
        pixels = [self._augment(self.photos[int(i)], generator) for i in indices]
        return torch.stack(pixels) / 127.5 - 1, self.embeddings[indices]

    def _augment(self, photo: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip, scale, y, x = torch.rand(4, generator=generator).tolist()
        image = photo.float()
        if self.cfg.crop == "random":
            _, h, w = photo.shape
            side = round((self.cfg.crop_min_scale + (1 - self.cfg.crop_min_scale) * scale) * min(h, w))
            top, left = int(y * (h - side + 1)), int(x * (w - side + 1))
            image = image[:, top : top + side, left : left + side]
            if side != self.resolution:
                image = F.interpolate(image[None], size=(self.resolution, self.resolution), mode="bicubic",
                                      antialias=True, align_corners=False)[0].round().clamp(0, 255)
        return image.flip(-1) if flip < self.cfg.flip else image
