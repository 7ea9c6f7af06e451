"""Kandinsky 2.2 decoder (diffusers `KandinskyV22Pipeline`: UNet + MoVQ + DDIM) for generate and evaluate, per profile.

- `tiny`: the real classes with tiny random weights (docs/pitfalls.md, "Tiny random models"), seeded, renders 64 × 64.
- `paper`: `kandinsky-community/kandinsky-2-2-decoder` (or a local directory) from the Hugging Face cache.
- `paper-shapes`: the decoder's architecture at full size with random weights (UNet 1.2B, MoVQ 67M), for throughput.

The scheduler is always DDIM (the paper: 50 DDIM steps, guidance 7.5) with the decoder's noise schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub.errors import HFValidationError

from lambda_eclipse.errors import ModelNotFoundError, UserError
from lambda_eclipse.models import seeded  # imported before diffusers' pipelines: makes torchvision importable
from lambda_eclipse.profile import Profile, pick

if TYPE_CHECKING:
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2 import KandinskyV22Pipeline

# diffusers is imported where a model is built or read (from the modules that define the classes: the package's
# lazy top level does not re-export them to type checkers), so that checking a request (configs, sizes) stays fast.

PAPER_DECODER = "kandinsky-community/kandinsky-2-2-decoder"
# The decoder's own noise schedule (its scheduler_config.json), stepped by DDIM as the paper does.
DDIM_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon", thresholding=False, timestep_spacing="leading",
)
# The UNet blocks and MoVQ of the tiny and of the paper's decoder (the UNet's image conditioning, the same for every
# profile, is added by unet_config).
_TINY_UNET: dict[str, Any] = dict(
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
)
# kandinsky-2-2-decoder/unet/config.json (diffusers' conversion script, image-only conditioning of 2.2)
_PAPER_UNET: dict[str, Any] = dict(
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                      "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                    "ResnetUpsampleBlock2D"),
    block_out_channels=(384, 768, 1152, 1536), layers_per_block=3, cross_attention_dim=768,
    attention_head_dim=64, addition_embed_type_num_heads=64, sample_size=64,
)
_TINY_MOVQ: dict[str, Any] = dict(
    latent_channels=4, vq_embed_dim=4, num_vq_embeddings=12, block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1, norm_num_groups=8,
    norm_type="spatial",
)
_PAPER_MOVQ: dict[str, Any] = dict(  # kandinsky-2-2-decoder/movq/config.json
    in_channels=3, out_channels=3, latent_channels=4, vq_embed_dim=4, num_vq_embeddings=16384,
    block_out_channels=(128, 256, 256, 512),
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
    layers_per_block=2, norm_type="spatial",
)


@dataclass(frozen=True)
class DecoderShapes:
    """A profile's decoder: its UNet blocks and MoVQ, and the side it renders by default. A pretrained profile
    (`Profile.pretrained`) loads the released decoder, whose configs these are; the others build them with random
    weights."""

    unet: dict[str, Any]
    movq: dict[str, Any]
    size: int


FAMILY = "the Kandinsky 2.2 decoder"
_PAPER_SIZED = DecoderShapes(_PAPER_UNET, _PAPER_MOVQ, 512)  # 512: the decoder's default resolution
# The decoder of each profile.
DECODERS: dict[Profile, DecoderShapes] = {
    Profile.TINY: DecoderShapes(_TINY_UNET, _TINY_MOVQ, 64),
    Profile.PAPER: _PAPER_SIZED,
    Profile.PAPER_SHAPES: _PAPER_SIZED,
}
DEFAULT_SIZE = {profile: shapes.size for profile, shapes in DECODERS.items()}


def unet_config(profile: str, embed_dim: int) -> dict:
    """UNet2DConditionModel arguments; `embed_dim` is the CLIP image embedding the decoder is conditioned on."""
    return _unet_config(pick(DECODERS, profile, FAMILY), embed_dim)


def _unet_config(shapes: DecoderShapes, embed_dim: int) -> dict:
    image_conditioning = dict(
        in_channels=4, out_channels=8, addition_embed_type="image", encoder_hid_dim=embed_dim,
        encoder_hid_dim_type="image_proj", resnet_time_scale_shift="scale_shift", class_embed_type=None,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    )
    return image_conditioning | shapes.unet


def movq_config(profile: str) -> dict:
    return dict(pick(DECODERS, profile, FAMILY).movq)


def size_multiple(unet: dict, movq: dict) -> int:
    """The image sizes the decoder renders exactly are the multiples of this.

    The pipeline divides a side by movq_scale² and rounds *up* (silently changing the size otherwise), and the latent
    (side / movq_scale) must pass the UNet's downsamplings: paper 64 (MoVQ ×8, UNet ×8), tiny 4.
    """
    movq_scale = 2 ** (len(movq["block_out_channels"]) - 1)
    unet_scale = 2 ** (len(unet["block_out_channels"]) - 1)
    return math.lcm(movq_scale**2, movq_scale * unet_scale)


def paper_configs(source: str) -> tuple[dict, dict]:
    """The paper decoder's UNet and MoVQ configs from the cache or a local directory, without loading weights."""
    from diffusers.models.autoencoders.vq_model import VQModel
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    try:
        # diffusers annotates load_config as (config, unused kwargs); without return_unused_kwargs it is the config.
        return (UNet2DConditionModel.load_config(source, subfolder="unet"),  # pyright: ignore[reportReturnType]
                VQModel.load_config(source, subfolder="movq"))
    except (OSError, HFValidationError) as exc:
        raise _missing(source) from exc


def check_size(height: int, width: int, multiple: int, what: str) -> None:
    bad = [f"{name} {value} (nearest {max(multiple, round(value / multiple) * multiple)})"
           for name, value in (("height", height), ("width", width)) if value < multiple or value % multiple]
    if bad:
        raise UserError(f"image size {', '.join(bad)}: the {what} renders multiples of {multiple} px only")


@dataclass
class DecoderBundle:
    pipeline: KandinskyV22Pipeline
    model_id: str
    size_multiple: int

    @property
    def embed_dim(self) -> int:
        return int(self.pipeline.unet.config.encoder_hid_dim)


def _missing(source: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        "the Kandinsky 2.2 decoder",
        source,
        f"download {PAPER_DECODER} on a machine with hub access (huggingface-cli download {PAPER_DECODER}) and copy "
        "its Hugging Face cache (HF_HOME) here, or save the pipeline to a directory and set models.decoder=/that/dir",
    )


def _random(shapes: DecoderShapes, embed_dim: int, device: torch.device, dtype: torch.dtype) -> KandinskyV22Pipeline:
    from diffusers.models.autoencoders.vq_model import VQModel
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2 import KandinskyV22Pipeline
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    # Built on the target device: the full-size UNet's random init takes minutes on two CPU cores.
    with seeded(), torch.device(device):
        unet = UNet2DConditionModel(**_unet_config(shapes, embed_dim))
        movq = VQModel(**shapes.movq)
    # diffusers types the scheduler as DDPMScheduler; the pipeline's docs and code take DDIM too.
    scheduler = DDIMScheduler(**DDIM_CONFIG)
    pipe = KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)  # pyright: ignore[reportArgumentType]
    # Built in float32: cast only when another dtype is asked for (diffusers warns on every cast).
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def load_decoder(profile: str, source: str, embed_dim: int, device: torch.device, dtype: torch.dtype) -> DecoderBundle:
    """The decoder for `profile`; `embed_dim` (the CLIP's) sizes the random ones and is checked against `paper`."""
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2 import KandinskyV22Pipeline
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    shapes = pick(DECODERS, profile, FAMILY)
    if Profile.parse(profile).pretrained:
        try:
            pipe = KandinskyV22Pipeline.from_pretrained(source, torch_dtype=dtype)
        except (OSError, HFValidationError) as exc:
            raise _missing(source) from exc
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe, model_id = pipe.to(device), source
    else:
        pipe = _random(shapes, embed_dim, device, dtype)
        model_id = f"kandinsky-2-2-decoder {profile} (random weights)"
    pipe.set_progress_bar_config(disable=True)
    bundle = DecoderBundle(pipe, model_id, size_multiple(dict(pipe.unet.config), dict(pipe.movq.config)))
    if bundle.embed_dim != embed_dim:
        raise UserError(
            f"decoder {model_id} takes {bundle.embed_dim}-d image embeddings, but the CLIP in use gives {embed_dim}-d "
            "ones; Kandinsky 2.2 needs OpenCLIP ViT-bigG-14 (models.clip_model)"
        )
    return bundle
