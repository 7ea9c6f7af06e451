"""Segment Anything (the official `segment_anything` package) for the three profiles."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import ModelNotFoundError, UserError
from lambda_eclipse.models import seeded
from lambda_eclipse.profile import Profile, pick

PAPER_CHECKPOINT = "sam_vit_h_4b8939.pth"
PAPER_URL = f"https://dl.fbaipublicfiles.com/segment_anything/{PAPER_CHECKPOINT}"
TINY_IMG_SIZE = 64
# Added to the mask hypernetworks' outputs. A random tiny SAM does not localise: its masks cover ~17 % of
# the image wherever the box is, so nearly every box would fail the mask/box filter (≥ 0.4). This bias lifts
# the masks to about half the image (still image-dependent), and most boxes pass.
TINY_MASK_BIAS = 0.5


def _tiny(models: ModelsSection) -> Sam:
    embed = 32
    with seeded():
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=2, embed_dim=embed, img_size=TINY_IMG_SIZE, patch_size=16, num_heads=2, mlp_ratio=4,
                qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,), window_size=2, out_chans=embed,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),  # pyright: ignore[reportArgumentType]  (as build_sam passes it)
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=embed, image_embedding_size=(TINY_IMG_SIZE // 16, TINY_IMG_SIZE // 16),
                input_image_size=(TINY_IMG_SIZE, TINY_IMG_SIZE), mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=embed, mlp_dim=64, num_heads=2),
                transformer_dim=embed, iou_head_depth=3, iou_head_hidden_dim=32,
            ),
            pixel_mean=[123.675, 116.28, 103.53],  # SAM's own (ImageNet) normalisation, as build_sam uses
            pixel_std=[58.395, 57.12, 57.375],
        )
        with torch.no_grad():
            for mlp in sam.mask_decoder.output_hypernetworks_mlps:
                # (torch types a ModuleList's items and a module's submodules as Tensor | Module)
                mlp.layers[-1].bias += TINY_MASK_BIAS  # pyright: ignore[reportIndexIssue, reportAttributeAccessIssue]
    return sam


def _paper(models: ModelsSection) -> Sam:
    if models.sam_type not in sam_model_registry:
        types = ", ".join(sam_model_registry)
        raise UserError(f"models.sam_type={models.sam_type!r} is not a SAM type; choose one of: {types}")
    if not Path(models.sam_checkpoint).is_file():
        raise ModelNotFoundError(
            f"SAM {models.sam_type}",
            f"no file at models.sam_checkpoint={models.sam_checkpoint!r}",
            f"download the official {PAPER_CHECKPOINT} (ViT-H) from {PAPER_URL} and set "
            f"models.sam_checkpoint=/path/to/{PAPER_CHECKPOINT}",
        )
    sam = sam_model_registry[models.sam_type](checkpoint=None)
    # Loaded here rather than by build_sam: weights_only=True, so a user-supplied .pth can hold tensors but no
    # pickled code, whatever torch's default.
    state = torch.load(models.sam_checkpoint, map_location="cpu", weights_only=True)
    sam.load_state_dict(state)
    return sam


def _paper_shapes(models: ModelsSection) -> Sam:
    with seeded():
        return sam_model_registry["vit_h"](checkpoint=None)


# The SAM of each profile (every loader takes the `models` section; only `paper` reads it).
LOADERS: dict[Profile, Callable[[ModelsSection], Sam]] = {
    Profile.TINY: _tiny,
    Profile.PAPER: _paper,
    Profile.PAPER_SHAPES: _paper_shapes,
}


def load_sam(profile: str, models: ModelsSection, device: torch.device, dtype: torch.dtype) -> Sam:
    return pick(LOADERS, profile, "SAM")(models).to(device=device, dtype=dtype).eval()
