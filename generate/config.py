"""generate / interpolate configuration: model sources for the `paper` profile and where the models run.

Parsed like the build config (lambda_eclipse/config.py): defaults, then a YAML file, then `--set section.key=value`.
The generation parameters themselves (prompt, seed, steps, guidance, size) are command-line flags.

The models run in Ray actors (lambda_eclipse/actor_pool), not in the flow process: `runtime.gpus` and
`runtime.cpus_per_actor` are what each actor asks Ray for, so that on a cluster the actors land on GPU nodes;
`device` and `dtype` are resolved inside the actor, on the node that runs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from lambda_eclipse.config import ModelsSection, check_rules, load_config
from lambda_eclipse.device import DEVICES, DTYPE_NAMES, local_device, torch_dtype

GUIDANCE = 7.5  # generate's classifier-free guidance (the paper's)
INTERPOLATE_GUIDANCE = 4.0  # the released interpolation.py's: the Kandinsky 2.2 decoder pipeline's default


@dataclass
class GenerateModelsSection:
    """Hub ids or local paths for the `paper` profile (ignored by `tiny` and `paper-shapes`)."""

    clip_model: str = "ViT-bigG-14"  # the CLIP Kandinsky 2.2 and the prior were trained with
    clip_pretrained: str = "laion2b_s39b_b160k"
    decoder: str = "kandinsky-community/kandinsky-2-2-decoder"  # models.kandinsky.PAPER_DECODER
    # Subject segmentation (--segment): Grounding DINO finds the subject word, SAM masks it, as the paper does.
    grounding_dino: str = ModelsSection.grounding_dino
    sam_checkpoint: str = ModelsSection.sam_checkpoint

    def build_models(self) -> ModelsSection:
        """The build-dataset models config these sources map onto (the CLIP, Grounding DINO and SAM loaders take it)."""
        return ModelsSection(clip_model=self.clip_model, clip_pretrained=self.clip_pretrained,
                            grounding_dino=self.grounding_dino, sam_checkpoint=self.sam_checkpoint)


@dataclass
class RuntimeSection:
    device: str = "auto"  # auto: cuda when the actor has one, else cpu
    dtype: str = "auto"  # auto: float16 on cuda (the decoder's released precision), float32 on cpu
    batch_size: int = 8  # images per decoder call
    gpus: float = 1.0  # GPUs per model actor when the Ray cluster has GPUs (0.5: two actors share one); 0: CPU only
    cpus_per_actor: float = 1.0  # CPUs per model actor (its torch threads), scaled down so every actor fits the cluster
    ray_cpus: int = 0  # CPUs of the local Ray started when RAY_ADDRESS is unset; 0: all of this machine's
    RENAMED: ClassVar[dict[str, str]] = {"cpus": "cpus_per_actor", "workers": "ray_cpus"}

    def check(self) -> RuntimeSection:
        """Range checks, in the flow process (which may have no GPU: the device is the actor's to resolve)."""
        check_rules(GenerateConfig(runtime=self), [
            ("runtime.device", self.device in DEVICES, f"must be one of {', '.join(DEVICES)}"),
            ("runtime.dtype", self.dtype in DTYPE_NAMES, f"must be one of {', '.join(DTYPE_NAMES)}"),
            ("runtime.batch_size", self.batch_size >= 1, "must be ≥ 1"),
            ("runtime.gpus", self.gpus >= 0 and (self.gpus <= 1 or self.gpus == int(self.gpus)),
             "must be ≥ 0, and a whole number of GPUs above 1"),
            ("runtime.cpus_per_actor", self.cpus_per_actor > 0, "must be > 0"),
            ("runtime.ray_cpus", self.ray_cpus >= 0, "must be ≥ 0 (0: all CPUs)"),
        ])
        return self

    def resolve(self):
        """(torch.device, the decoder's torch.dtype, CLIP's torch.dtype) to run on, where this runs (a model actor); a
        UserError for values that cannot run here. CLIP encodes at the embeddings' precision (float16 on cuda, float32
        on cpu), as build-dataset's features stage does at its default: the prior sees embeddings of the precision it
        was trained on, whatever `dtype` the decoder runs in."""
        self.check()
        device = local_device(self.device)
        return device, torch_dtype(self.dtype, device.type, "decoder"), torch_dtype("auto", device.type, "embeddings")


@dataclass
class GenerateConfig:
    models: GenerateModelsSection = field(default_factory=GenerateModelsSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ModelsAndRuntime(Protocol):
    """What generation reads of a config: GenerateConfig's sections, which evaluate's EvalConfig has too."""

    @property
    def models(self) -> GenerateModelsSection: ...

    @property
    def runtime(self) -> RuntimeSection: ...


def load_generate_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> GenerateConfig:
    cfg = load_config(GenerateConfig, path, overrides)
    cfg.runtime.check()  # range checks now, before any model loads
    return cfg
