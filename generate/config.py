"""generate / interpolate configuration: model sources for the `paper` profile and where the models run.

Parsed like the build config (lambda_eclipse/config.py): defaults, then a YAML file, then `--set section.key=value`.
The generation parameters themselves (prompt, seed, steps, guidance, size) are command-line flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

from lambda_eclipse.config import ModelsConfig, load_config
from lambda_eclipse.errors import UserError

# Torch-free at import, so that the CLI's parser (and --help) loads no model library.
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class ModelsSection:
    """Hub ids or local paths for the `paper` profile (ignored by `tiny` and `paper-shapes`)."""

    clip_model: str = "ViT-bigG-14"  # the CLIP Kandinsky 2.2 and the prior were trained with
    clip_pretrained: str = "laion2b_s39b_b160k"
    decoder: str = "kandinsky-community/kandinsky-2-2-decoder"  # models.kandinsky.PAPER_DECODER
    # Subject segmentation (--segment): Grounding DINO finds the subject word, SAM masks it, as the paper does.
    grounding_dino: str = ModelsConfig.grounding_dino
    sam_checkpoint: str = ModelsConfig.sam_checkpoint

    def build_models(self) -> ModelsConfig:
        """The build-dataset models config these sources map onto (the CLIP, Grounding DINO and SAM loaders take it)."""
        return ModelsConfig(clip_model=self.clip_model, clip_pretrained=self.clip_pretrained,
                            grounding_dino=self.grounding_dino, sam_checkpoint=self.sam_checkpoint)


@dataclass
class RuntimeSection:
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: float16 on cuda (the decoder's released precision), float32 on cpu
    batch_size: int = 8  # images per decoder call

    def resolve(self):
        """(torch.device, torch.dtype) to run on; a UserError for values that cannot run."""
        import torch

        if self.device not in DEVICES:
            raise UserError(f"runtime.device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise UserError(f"runtime.dtype must be auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.batch_size < 1:
            raise UserError(f"runtime.batch_size must be ≥ 1, got {self.batch_size}")
        cuda = self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("runtime.device=cuda, but no CUDA device is visible; use runtime.device=cpu")
        device = torch.device("cuda" if cuda else "cpu")
        if self.dtype == "auto":
            return device, torch.float16 if cuda else torch.float32
        return device, getattr(torch, self.dtype)


@dataclass
class GenerateConfig:
    models: ModelsSection = field(default_factory=ModelsSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ModelsAndRuntime(Protocol):
    """What generation reads of a config: GenerateConfig's sections, which evaluate's EvalConfig has too."""

    @property
    def models(self) -> ModelsSection: ...

    @property
    def runtime(self) -> RuntimeSection: ...


def load_generate_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> GenerateConfig:
    cfg = load_config(path, overrides, cls=GenerateConfig)
    cfg.runtime.resolve()  # range checks now, before any model loads
    return cfg
