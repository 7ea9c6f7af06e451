"""Model input preparation on the model's device: the stages' images become tensors there, and every resize and
normalisation after that runs in torch on that device (the GPU where the actor has one), not in PIL or NumPy on the
CPU that feeds it."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W) float32 on `device`, values 0..255; the array is read, never written (on an
    actor it is a read-only view of the object store: no copy is made before the one to the device)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        pixels = torch.from_numpy(image)
    return pixels.to(device).permute(2, 0, 1)[None].float().contiguous()


def resize(pixels: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Antialiased resize of (N, C, H, W) pixel values in 0..255, rounded to whole levels as an 8-bit resize (PIL's,
    which the models' own preprocessing used) gives them; no-op at the same size."""
    import torch.nn.functional as F

    if tuple(pixels.shape[-2:]) == (height, width):
        return pixels
    out = F.interpolate(pixels, size=(height, width), mode=mode, antialias=True, align_corners=False)
    return out.round().clamp(0, 255)
