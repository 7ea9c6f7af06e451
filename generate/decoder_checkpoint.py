"""A fine-tuned Kandinsky 2.2 decoder UNet (`--decoder DIR`): found and checked before any model loads, then swapped
into the profile's decoder pipeline (the MoVQ and the scheduler stay the base decoder's).

finetune-decoder writes DIR/unet/ (diffusers `UNet2DConditionModel.save_pretrained`: config.json + safetensors) and
DIR/finetune.json (what it was trained on). `--decoder` takes DIR or DIR/unet. The UNet must have the architecture of
the profile's decoder (it was fine-tuned from it); its weights' sha256 is recorded with every output.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from diffusers.utils.constants import CONFIG_NAME

from lambda_eclipse.errors import UserError
from storage.layout import read_json

UNET, FINETUNE = "unet", "finetune.json"
UNET_CLASS = "UNet2DConditionModel"
# What decides the UNet's shapes: a fine-tuned UNet must agree with the base decoder's config on every one of them.
ARCHITECTURE = ("in_channels", "out_channels", "down_block_types", "up_block_types", "mid_block_type",
                "block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim",
                "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type")


@dataclass(frozen=True)
class DecoderCheckpoint:
    source: str  # as given
    unet: str  # the absolute directory holding the UNet's config.json and weights
    sha256: str  # of the weights (every *.safetensors file, in name order)
    finetune: dict | None  # DIR/finetune.json, when present

    def describe(self) -> dict:
        """What outputs record about the decoder UNet."""
        return {"unet": self.unet, "unet_sha256": self.sha256, "finetune": self.finetune}


def _unet_directory(source: str) -> tuple[Path, Path | None]:
    """(the UNet folder, the finetune.json beside it or None)."""
    path = Path(source).resolve()
    if not path.is_dir():
        raise UserError(f"--decoder {source} is not a directory; pass the output directory of finetune-decoder "
                        f"(DIR with {UNET}/{CONFIG_NAME}) or its {UNET}/ folder")
    for unet, info in ((path / UNET, path / FINETUNE), (path, path.parent / FINETUNE)):
        if (unet / CONFIG_NAME).is_file():
            return unet, info if info.is_file() else None
    raise UserError(f"--decoder {source} has no {UNET}/{CONFIG_NAME} (nor {CONFIG_NAME}); pass the output directory of "
                    "finetune-decoder or its unet/ folder")


def _normal(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def weights_sha256(unet: Path) -> str:
    files = sorted(unet.glob("*.safetensors"))
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def open_decoder(source: str, base: dict, what: str) -> DecoderCheckpoint:
    """Check the fine-tuned UNet at `source` against `base`, the profile's decoder UNet config (described by
    `what`), without loading weights."""
    unet, info = _unet_directory(source)
    try:
        config = read_json(unet / CONFIG_NAME)
    except ValueError as exc:
        raise UserError(f"--decoder {unet / CONFIG_NAME} is not valid JSON: {exc}") from None
    if config.get("_class_name") != UNET_CLASS:
        raise UserError(f"--decoder {unet} holds a {config.get('_class_name')!r}, not a {UNET_CLASS} (the Kandinsky "
                        "2.2 decoder UNet that finetune-decoder writes)")
    if not list(unet.glob("*.safetensors")):
        raise UserError(f"--decoder {unet} has {CONFIG_NAME} but no *.safetensors weights")
    differ = [f"{key} {_normal(config.get(key))} (the decoder's: {_normal(base.get(key))})" for key in ARCHITECTURE
              if _normal(config.get(key)) != _normal(base.get(key))]
    if differ:
        raise UserError(f"--decoder {unet} is not a fine-tuned {what} UNet: {'; '.join(differ)}; fine-tune it from "
                        "this profile's decoder (finetune-decoder --profile with the same profile)")
    try:
        finetune = read_json(info) if info else None
    except ValueError as exc:
        raise UserError(f"--decoder {info} is not valid JSON: {exc}") from None
    return DecoderCheckpoint(source, str(unet), weights_sha256(unet), finetune)


def load_unet(checkpoint: DecoderCheckpoint, device, dtype):
    """The fine-tuned UNet on `device` in `dtype`, for the decoder pipeline."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.from_pretrained(checkpoint.unet, torch_dtype=dtype)
    except (OSError, ValueError) as exc:  # weights that do not match the config, a torn file
        raise UserError(f"--decoder {checkpoint.unet} cannot be loaded: {str(exc).splitlines()[0]}") from None
    return unet.to(device).eval()
