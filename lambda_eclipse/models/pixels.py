"""Model input preparation on the model's device: a stage's uint8 image becomes a tensor there, and the resize and
normalisation run in torch on that device (the GPU where the actor has one), not in PIL or NumPy on the CPU that
feeds it. On a CPU device the resize runs on the uint8 pixels (torch's vectorised 8-bit antialiased kernels, as
PIL's: whole levels out), which is ~20× cheaper than converting the full image to float first."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F


def _uint8_view(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W) uint8 view (channels-last strides), no copy; the array is only read (on an
    actor it is a read-only view of the object store)."""
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWxC uint8 image, got {image.shape} {image.dtype}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(image).permute(2, 0, 1)[None]


def resized_pixels(image: np.ndarray, device: torch.device, height: int, width: int,
                   mode: str = "bilinear") -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, height, width) float32 on `device`, values in whole levels 0..255: an antialiased
    resize (`mode` bilinear or bicubic) rounded as an 8-bit resize (PIL's, which the models' processors used) rounds;
    no resize at the same size."""
    pixels = _uint8_view(image)
    same = tuple(pixels.shape[-2:]) == (height, width)
    if device.type == "cpu":
        if not same:
            pixels = F.interpolate(pixels, size=(height, width), mode=mode, antialias=True, align_corners=False)
        return pixels.float().contiguous()
    x = pixels.to(device).float()
    if same:
        return x.contiguous()
    x = F.interpolate(x, size=(height, width), mode=mode, antialias=True, align_corners=False)
    return x.round().clamp(0, 255).contiguous()


def upsampled_masks(logits: torch.Tensor, height: int, width: int, threshold: float) -> np.ndarray:
    """(N, 1, h, w) mask logits → (N, height, width) bool: bilinear upsampling (half-pixel centres, as
    `F.interpolate(align_corners=False)`), then the threshold. On a CPU device through OpenCV's float kernel (the same
    arithmetic, ~3× faster than torch's there), on a GPU in torch."""
    if logits.device.type != "cpu":
        if tuple(logits.shape[-2:]) != (height, width):
            logits = F.interpolate(logits.float(), (height, width), mode="bilinear", align_corners=False)
        return (logits[:, 0] > threshold).cpu().numpy()
    import cv2

    values = logits[:, 0].float().numpy()
    out = np.empty((len(values), height, width), bool)
    for i, mask in enumerate(values):
        if mask.shape != (height, width):
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
        np.greater(mask, threshold, out=out[i])
    return out


def normalised(pixels: torch.Tensor, rescale: float, mean, std) -> torch.Tensor:
    """(N, 3, H, W) pixel values → the model's input: rescaled (to 0..1) and normalised per channel, on their
    device (an image processor's rescale + normalize)."""
    mean_t = torch.tensor(mean, device=pixels.device, dtype=pixels.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=pixels.device, dtype=pixels.dtype).view(1, -1, 1, 1)
    return (pixels * rescale - mean_t) / std_t


def padded_batch(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, h_i, w_i) tensors → (N, C, H, W) zero-padded at the bottom and right to the largest, and the (N, H, W)
    int64 pixel mask (1 on each image's own pixels), as DETR-style image processors pad a batch."""
    height = max(int(x.shape[-2]) for x in images)
    width = max(int(x.shape[-1]) for x in images)
    first = images[0]
    pixels = first.new_zeros((len(images), first.shape[1], height, width))
    mask = torch.zeros((len(images), height, width), dtype=torch.int64, device=first.device)
    for i, x in enumerate(images):
        h, w = x.shape[-2:]
        pixels[i, :, :h, :w] = x[0]
        mask[i, :h, :w] = 1
    return pixels, mask
