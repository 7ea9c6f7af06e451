"""finetune-decoder configuration: one dataclass per section; defaults are the paper's values where it gives one
(Appendix D: AdamW, learning rate 1e-5, no warm-up, no prior-preservation loss), else the authors' decoder fine-tuning
script and README (diffusers' Kandinsky 2.2 train_text_to_image_decoder.py: z_x of the whole photo, batch 1 ×
gradient accumulation 4, 400 steps for one concept and 8,000 for the 30 DreamBench concepts, 512 px centre crop, no
flip, betas 0.9/0.999, no weight decay, ε 1e-8, gradient norm clipped at 1, constant learning rate).

Parsed like the other configs (lambda_eclipse/config.py): defaults, then a YAML file, then `--set section.key=value`;
an unknown section or key is an error naming the valid ones. Torch-free at import (the CLI's --help reads it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from generate.config import GenerateModelsSection
from lambda_eclipse.config import check_rules, load_config
from lambda_eclipse.device import DEVICES
from lambda_eclipse.device import DTYPE_NAMES as PRECISIONS
from lambda_eclipse.profile import Profile

FINETUNE_PROFILES = (Profile.TINY, Profile.PAPER, Profile.PAPER_SHAPES)  # the decoder's (models/kandinsky.py)
OPTIMIZERS = ("adamw", "adamw8bit")
CROPS = ("center", "random")


@dataclass
class FinetuneSection:
    # optimizer steps; 0: from the number of concepts, as the authors' README (400 for one, 8,000 for 30: steps_for)
    max_steps: int = 0
    batch_size: int = 1  # photos per micro-batch
    gradient_accumulation: int = 4  # micro-batches per optimizer step (the authors': 4 × batch 1)
    lr: float = 1e-5  # the paper's; constant, no warm-up
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes, CUDA only: a quarter of AdamW's state memory)
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    seed: int = 0  # photo order, augmentations, noise and timesteps


@dataclass
class DataSection:
    resolution: int = 0  # training image side; 0: the decoder's default (512 paper, 64 tiny)
    # z_x of the whole photo, as the authors' script and as the prior's ẑ_x (a full scene) at inference; true: of
    # the photo with its subject segmented (Grounding DINO + SAM, as evaluate)
    segment: bool = False
    flip: float = 0.0  # probability of a horizontal flip of the training photo (its z_x is not recomputed)
    crop: str = "center"  # center: the largest centred square; random: a random square (see crop_min_scale)
    crop_min_scale: float = 0.8  # random crops: side in [crop_min_scale, 1] × the photo's shorter side


@dataclass
class CheckpointSection:
    every: int = 100
    keep: int = 2  # the last K checkpoints are kept


@dataclass
class LogSection:
    every: int = 10  # steps between metrics.jsonl records


@dataclass
class RuntimeSection:
    device: str = "auto"  # auto: cuda when the Ray cluster has GPUs (the training task then takes one), else cpu
    precision: str = "auto"  # autocast dtype of the UNet's forward; auto: bf16 on cuda, fp32 on cpu
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30 % slower
    cpus_per_trainer: float = 1.0  # Ray CPUs the training task reserves (its torch threads)
    max_failures: int = 3  # times Ray restarts a training task that died (a killed worker, a lost node), resuming it
    ray_cpus: int = 0  # CPUs of the local Ray started when RAY_ADDRESS is unset; 0: all of this machine's
    RENAMED: ClassVar[dict[str, str]] = {"cpus": "cpus_per_trainer", "workers": "ray_cpus"}


@dataclass
class FinetuneConfig:
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    data: DataSection = field(default_factory=DataSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    models: GenerateModelsSection = field(default_factory=GenerateModelsSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> FinetuneConfig:
        """Reject values the training loop cannot run with, naming every bad key at once."""
        f, d, r = self.finetune, self.data, self.runtime
        rules = [
            ("finetune.max_steps", f.max_steps >= 0, "must be ≥ 0 (0: from the number of concepts)"),
            ("finetune.batch_size", f.batch_size >= 1, "must be ≥ 1"),
            ("finetune.gradient_accumulation", f.gradient_accumulation >= 1, "must be ≥ 1"),
            ("finetune.lr", f.lr > 0, "must be > 0"),
            ("finetune.optimizer", f.optimizer in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}"),
            ("finetune.weight_decay", f.weight_decay >= 0, "must be ≥ 0"),
            ("finetune.grad_clip", f.grad_clip >= 0, "must be ≥ 0"),
            ("data.resolution", d.resolution >= 0, "must be ≥ 0"),
            ("data.flip", 0 <= d.flip <= 1, "must be in [0, 1]"),
            ("data.crop", d.crop in CROPS, f"must be one of {', '.join(CROPS)}"),
            ("data.crop_min_scale", 0 < d.crop_min_scale <= 1, "must be in (0, 1]"),
            ("checkpoint.every", self.checkpoint.every >= 1, "must be ≥ 1"),
            ("checkpoint.keep", self.checkpoint.keep >= 1, "must be ≥ 1"),
            ("log.every", self.log.every >= 1, "must be ≥ 1"),
            ("runtime.device", r.device in DEVICES, f"must be one of {', '.join(DEVICES)}"),
            ("runtime.precision", r.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
            ("runtime.cpus_per_trainer", r.cpus_per_trainer > 0, "must be > 0"),
            ("runtime.max_failures", r.max_failures >= -1, "must be ≥ -1 (-1: no limit)"),
            ("runtime.ray_cpus", r.ray_cpus >= 0, "must be ≥ 0 (0: all CPUs)"),
        ]
        check_rules(self, rules)
        return self

    def training_identity(self) -> dict[str, Any]:
        """The keys a resumed run must share with the checkpoint it continues (not the length, logging or placement;
        the precision is compared as resolved, finetune/prepare.py's `place`)."""
        data = self.to_dict()
        finetune = {k: v for k, v in data["finetune"].items() if k != "max_steps"}
        return {f"finetune.{k}": v for k, v in finetune.items()} | {f"data.{k}": v for k, v in data["data"].items()} | {
            f"models.{k}": v for k, v in data["models"].items()}


STEPS_ONE, STEPS_THIRTY = 400, 8000  # the authors' README: one concept; the 30 DreamBench concepts at once


def steps_for(concepts: int) -> int:
    """finetune.max_steps=0's steps: on the line through (1, 400) and (30, 8,000), ≈ 262 more per concept (and on
    beyond 30)."""
    return round(STEPS_ONE + (concepts - 1) * (STEPS_THIRTY - STEPS_ONE) / 29)


def load_finetune_config(path: str | Path | None = None,
                         overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """Defaults, then the YAML file's values, then `section.key=value` overrides, then the range checks."""
    return load_config(FinetuneConfig, path, overrides).check()
