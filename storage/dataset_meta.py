"""`dataset.json`: the config and its hash, profile, model ids, embedding dims, code version, and the CLIP
embedding of an all-zero image (the prior's "no control" embedding). Written once, atomically, when a
dataset is started; a rerun into the same directory must use the same config and profile.
"""

from __future__ import annotations

import lambda_eclipse
from lambda_eclipse.config import BuildConfig
from lambda_eclipse.errors import UserError
from storage.fs import Location, is_file, join
from storage.layout import DATASET_JSON, read_json, write_json_atomic


def model_ids(cfg: BuildConfig, profile: str) -> dict[str, str]:
    if profile == "paper":
        m = cfg.models
        return {
            "caption": m.blip2,
            "nouns": m.spacy,
            "boxes": m.grounding_dino,
            "masks": f"{m.sam_type}:{m.sam_checkpoint}",
            "features": f"{m.clip_model}:{m.clip_pretrained}",
        }
    return dict.fromkeys(("caption", "boxes", "masks", "features"), f"{profile} (random weights)") | {
        "nouns": cfg.models.spacy
    }


def existing_meta(root: Location, cfg: BuildConfig, profile: str) -> dict | None:
    """The dataset.json already in `root`, after checking that this build may continue it."""
    path = join(root, DATASET_JSON)
    if not is_file(path):
        return None
    meta = read_json(path)
    if meta.get("profile") != profile or meta.get("config_hash") != cfg.content_hash():
        raise UserError(
            f"{root} already holds a dataset built with profile {meta.get('profile')!r} and config hash "
            f"{meta.get('config_hash')}, but this run uses profile {profile!r} and config hash {cfg.content_hash()}; "
            "use a new --output directory, or the same --profile/--config/--set as the first run"
        )
    return meta


def write_meta(root: Location, cfg: BuildConfig, profile: str, clip: dict) -> dict:
    meta = {
        "format": "lambda-eclipse-dataset/1",
        "code_version": lambda_eclipse.__version__,
        "profile": profile,
        "config": cfg.to_dict(),
        "config_hash": cfg.content_hash(),
        "models": model_ids(cfg, profile) | {"features": clip["model_id"]},
        "embed_dim": clip["embed_dim"],
        "text_width": clip["text_width"],
        "context_length": 77,
        "zero_image_embedding": [float(x) for x in clip["zero_image_embedding"]],
    }
    write_json_atomic(join(root, DATASET_JSON), meta)
    return meta
