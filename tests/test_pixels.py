"""Model input preparation (lambda_eclipse/models/pixels.py): the CPU path resizes the uint8 pixels, the GPU path
floats; both give whole levels close to each other; mask upsampling on CPU (OpenCV) is torch's bilinear."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lambda_eclipse.models  # noqa: F401  (torchvision importable on CPU torch)
from lambda_eclipse.models.pixels import resized_pixels, upsampled_masks


def _photo(h=300, w=400):
    from lambda_eclipse.synthetic import photo

    return np.asarray(photo(5, w, h))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_cpu_resize_of_the_uint8_pixels_matches_the_float_resize(mode):
    image = _photo()
    out = resized_pixels(image, torch.device("cpu"), 150, 200, mode)
    assert out.shape == (1, 3, 150, 200) and out.dtype == torch.float32
    assert torch.equal(out, out.round())  # whole levels
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    reference = F.interpolate(x, (150, 200), mode=mode, antialias=True, align_corners=False).round().clamp(0, 255)
    # the 8-bit kernels round between their horizontal and vertical passes, as PIL does: a few levels at sharp edges
    assert (out - reference).abs().mean() < 0.5 and (out - reference).abs().max() <= 8


def test_same_size_is_the_image_itself_and_read_only_arrays_are_fine():
    image = _photo(20, 30)
    image.setflags(write=False)  # as an actor sees a Ray object-store array
    out = resized_pixels(image, torch.device("cpu"), 20, 30)
    assert torch.equal(out[0].permute(1, 2, 0), torch.from_numpy(image.copy()).float())


def test_cpu_mask_upsampling_is_bilinear_with_half_pixel_centres():
    logits = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    masks = upsampled_masks(logits, 64, 48, 0.0)
    reference = (F.interpolate(logits, (64, 48), mode="bilinear", align_corners=False)[:, 0] > 0).numpy()
    assert masks.shape == (3, 64, 48) and masks.dtype == bool
    assert np.count_nonzero(masks != reference) <= 3  # a pixel at the threshold may round either way
