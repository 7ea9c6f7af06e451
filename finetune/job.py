"""A finetune-decoder run: what its training is given (`FinetuneJob`, made by finetune/prepare.py) and where it
writes.

OUTPUT layout (a local path; storage/run_dir.py lists its checkpoints and reads its metrics):
    unet/                      the fine-tuned UNet (UNet2DConditionModel.save_pretrained: config.json +
                               diffusion_pytorch_model.safetensors); swap it into the base decoder's pipeline
    finetune.json              written last: subjects and photos (sha256, how each was embedded), profile, base
                               decoder, steps, config, models, speed
    checkpoints/step-NNNNNNNN/ unet/ + training_state.pt (optimizer, grad scaler, RNG states, step) + identity.json;
                               written under a temporary name and renamed; the last `checkpoint.keep` are kept
    references/<subject>/      the crops that were embedded (z_x), one PNG per photo
    metrics.jsonl              loss, gradient norm and steps/s per `log.every` steps
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune.config import FinetuneConfig
from finetune.subjects import Subject
from lambda_eclipse.profile import Profile

UNET, IDENTITY, RECORD, REFERENCES = "unet", "identity.json", "finetune.json", "references"


@dataclass
class FinetuneJob:
    """Everything the training needs, checked (sent to the Ray task as is)."""

    subjects: list[Subject]
    output: str
    profile: Profile
    cfg: FinetuneConfig
    device: str  # "cpu" or "cuda"; "" until `place`d
    precision: str  # float32 | bfloat16 | float16 (lambda_eclipse.device); "" until `place`d
    resolution: int
    identity: dict  # what a resumed run must share with its checkpoint
    resume_from: str | None  # checkpoint directory
