"""Find and check a prior checkpoint before any model loads; load it.

`--prior` takes a checkpoint directory (config.json + diffusion_pytorch_model.safetensors, what train-prior writes to
RUN_DIR/final and RUN_DIR/checkpoints/step-N), a train-prior run directory (its final/ is used), or a hub id in the
local Hugging Face cache (the released `ECLIPSE-Community/Lambda-ECLIPSE-Prior-v1.0`).

The checkpoint's config says which model profile it belongs to (its embedding size is the CLIP's): without
`--profile`, generate and evaluate use that profile. A `--profile` whose CLIP gives another embedding size is an
error, not a warning: the prior cannot read that CLIP's embeddings at all.

A prior trained here has a training.json next to its weights (prior/job.py's training_record), which holds the Canny
settings of its training data: `generate --canny` computes the edge map as they did. Without one (the released
checkpoint, or a prior trained on a dataset without a build config) it follows the released inference code:
Canny(100, 200) on the image at its own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

from lambda_eclipse.errors import ModelNotFoundError, UserError
from lambda_eclipse.models.clip import CONTEXT_LENGTH, TINY_EMBED_DIM
from lambda_eclipse.profile import Profile
from storage.layout import read_json, sha256_file
from tasks.config import SubjectsSection

FINAL = "final"  # prior/job.py's layout: DIR/final/ holds the last checkpoint
TRAINING = "training.json"  # prior/job.py's TRAINING
RELEASED_CANNY = {"low_threshold": 100, "high_threshold": 200, "size": 0}  # the released inference: the image's size
RELEASED = "ECLIPSE-Community/Lambda-ECLIPSE-Prior-v1.0"
CROP_SIZE = SubjectsSection().crop_size  # the build's default subject crop
# The profile whose CLIP gives a prior's embedding size (bigG: 1280; paper-shapes is bigG too, for benchmarks only).
PROFILE_OF_DIM = {TINY_EMBED_DIM: Profile.TINY, 1280: Profile.PAPER}


@dataclass(frozen=True)
class PriorCheckpoint:
    source: str  # as given
    path: str  # the directory holding config.json and the weights
    config: dict
    sha256: str  # of the weights file, recorded with every generated image
    edge: dict | None = None  # the Canny settings of its training data (training.json), None when not recorded
    subjects: dict | None = None  # the subject crops of its training data (training.json), None when not recorded

    def canny(self) -> dict:
        """How --canny's edge map is computed for this prior: thresholds, shorter side (0: the image's own) and why."""
        if self.edge:
            return {k: self.edge[k] for k in RELEASED_CANNY} | {"from": "the prior's training data (training.json)"}
        return RELEASED_CANNY | {"from": "the released inference code (the prior records no training data)"}

    def crop_size(self) -> int:
        """The side of the subject crops the prior's training data embedded, else the build's default."""
        return int((self.subjects or {}).get("crop_size", CROP_SIZE))


def _directory(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            return path
        if (path / FINAL / CONFIG_NAME).is_file():  # a train-prior run directory
            return path / FINAL
        raise UserError(f"prior {source} has no {CONFIG_NAME} (nor {FINAL}/{CONFIG_NAME}); pass a checkpoint directory "
                        "written by train-prior (RUN_DIR/final or RUN_DIR/checkpoints/step-N)")
    if source.count("/") == 1 and not path.exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, CONFIG_NAME)
        if isinstance(cached, str):
            return Path(cached).parent
        raise ModelNotFoundError(
            f"the prior {source}", "not in the local Hugging Face cache",
            f"download it on a machine with hub access (huggingface-cli download {source}) and copy the cache "
            "(HF_HOME) here, or pass --prior /path/to/checkpoint_dir",
        )
    raise UserError(f"prior {source} does not exist; pass a checkpoint directory written by train-prior or the hub id "
                    f"{RELEASED}")


def read_prior_config(source: str) -> tuple[Path, dict]:
    """The checkpoint directory (absolute: model actors may run elsewhere) and its config."""
    path = _directory(source).resolve()
    if not (path / SAFETENSORS_WEIGHTS_NAME).is_file():
        raise UserError(f"prior {path} has {CONFIG_NAME} but no {SAFETENSORS_WEIGHTS_NAME}")
    try:
        return path, read_json(path / CONFIG_NAME)
    except ValueError as exc:
        raise UserError(f"prior {path}/{CONFIG_NAME} is not valid JSON: {exc}") from None


def profile_of(source: str) -> Profile:
    """The model profile the prior at `source` was trained for, from its embedding size."""
    path, config = read_prior_config(source)
    dim = config.get("embedding_dim")
    if dim not in PROFILE_OF_DIM:
        raise UserError(f"prior {path} works on {dim}-d embeddings, which no profile's CLIP gives ("
                        + ", ".join(f"{p}: {d}" for d, p in PROFILE_OF_DIM.items()) + "); choose --profile yourself")
    return PROFILE_OF_DIM[dim]


def open_prior(source: str, embed_dim: int, what: str) -> PriorCheckpoint:
    """Check that the checkpoint fits the CLIP in use (`embed_dim`, described by `what`) without loading weights."""
    path, config = read_prior_config(source)
    weights = path / SAFETENSORS_WEIGHTS_NAME
    dims = {key: config.get(key) or config.get("embedding_dim")
            for key in ("embedding_dim", "clip_embed_dim", "embedding_proj_dim")}
    wrong = {key: dim for key, dim in dims.items() if dim != embed_dim}
    if wrong:
        raise UserError(
            f"prior {path} works on {', '.join(f'{k}={v}' for k, v in wrong.items())}, but {what} gives "
            f"{embed_dim}-d embeddings; use a prior trained with this profile's CLIP (train-prior --profile tiny on a "
            "tiny dataset for --profile tiny; the paper's 1280-d prior for --profile paper), or leave --profile out "
            "to use the prior's own"
        )
    if config.get("num_embeddings") != CONTEXT_LENGTH:
        raise UserError(f"prior {path} takes {config.get('num_embeddings')} text tokens; CLIP gives {CONTEXT_LENGTH}")
    record = read_json(path / TRAINING) if (path / TRAINING).is_file() else {}
    return PriorCheckpoint(source, str(path), config, sha256_file(weights), record.get("edge"), record.get("subjects"))


def load_prior(checkpoint: PriorCheckpoint, device):
    """The EclipsePrior in float32 on `device` (34M parameters: precision costs nothing here)."""
    from prior.model import EclipsePrior

    try:
        model = EclipsePrior.from_pretrained(checkpoint.path)
    except ValueError as exc:  # a state dict that does not match its config, an unsupported config
        raise UserError(f"prior {checkpoint.path} cannot be loaded: {exc}") from None
    return model.to(device).eval()
