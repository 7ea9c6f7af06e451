"""`dataset.json`: the config and its hash, profile, model ids, embedding dims, code version, and the CLIP
embedding of an all-zero image (the prior's "no control" embedding). Written once, atomically, when a
dataset is started; a rerun into the same directory must use the same config and profile.
"""

from __future__ import annotations

import lambda_eclipse
from lambda_eclipse.errors import UserError
from storage.fs import Location, is_file, join
from storage.layout import DATASET_JSON, read_json, write_json_atomic


def require_dataset(root: str) -> None:
    """A command's DIR argument is a dataset that build-dataset wrote (one line otherwise)."""
    if not is_file(join(root, DATASET_JSON)):
        raise UserError(f"{root} is not a λ-ECLIPSE dataset (no {DATASET_JSON}); build one with "
                        "`lambda-eclipse build-dataset`")


def existing_meta(root: Location, config_hash: str, profile: str) -> dict | None:
    """The dataset.json already in `root`, after checking that this build (its config's hash) may continue it."""
    path = join(root, DATASET_JSON)
    if not is_file(path):
        return None
    meta = read_json(path)
    if meta.get("profile") != profile or meta.get("config_hash") != config_hash:
        raise UserError(
            f"{root} already holds a dataset built with profile {meta.get('profile')!r} and config hash "
            f"{meta.get('config_hash')}, but this run uses profile {profile!r} and config hash {config_hash}; "
            "use a new --output directory, or the same --profile/--config/--set as the first run"
        )
    return meta


def write_meta(root: Location, config: dict, config_hash: str, profile: str, models: dict[str, str],
               clip: dict, sample: float | None = None) -> dict:
    """`config`, its hash and each stage's model (`models`) as the build resolved them; `clip`: the features stage's
    CLIP dims, model id and zero-image embedding; `sample`: --sample, where the dataset is a sample of its inputs."""
    meta = {
        "format": "lambda-eclipse-dataset/1",
        "code_version": lambda_eclipse.__version__,
        "profile": profile,
        "config": config,
        "config_hash": config_hash,
        "models": models | {"features": clip["model_id"]},
        "embed_dim": clip["embed_dim"],
        "text_width": clip["text_width"],
        "context_length": 77,
        "zero_image_embedding": [float(x) for x in clip["zero_image_embedding"]],
    }
    if sample is not None:
        meta["sample"] = sample
    write_json_atomic(join(root, DATASET_JSON), meta)
    return meta
