"""Everything checked before generation starts, so that bad input fails in one line, before any model loads.

Shared by the CLI (which checks once, then hands the plan to the flow: flows/handed.py) and the flows (which prepare
it themselves when a deployment or a direct call runs them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from generate.config import GenerateModelsSection, ModelsAndRuntime, load_generate_config
from generate.decoder_checkpoint import DecoderCheckpoint, open_decoder
from generate.outputs import check_output
from generate.prior_checkpoint import PriorCheckpoint, open_prior, profile_of
from generate.requests import GenerateRequest, Job, RenderSettings, check_requests, request_files
from lambda_eclipse.errors import UserError
from lambda_eclipse.models import kandinsky
from lambda_eclipse.models.clip import PAPER_SHAPES_MODEL, TINY_EMBED_DIM, clip_tokenizer
from lambda_eclipse.profile import Profile
from storage.confine import confine_files

if TYPE_CHECKING:
    from open_clip.tokenizer import SimpleTokenizer


@dataclass
class GeneratePlan:
    profile: str
    cfg: ModelsAndRuntime
    prior: PriorCheckpoint
    jobs: list[Job]
    settings: RenderSettings
    output: Path
    segment: bool
    warnings: list[str]  # for the user: a truncated prompt
    decoder: DecoderCheckpoint | None = None  # a fine-tuned decoder UNet (--decoder); None: the profile's own


def tokenizer() -> SimpleTokenizer:
    return clip_tokenizer()


def clip_embed_dim(profile: str, models: GenerateModelsSection) -> tuple[int, str]:
    """The CLIP image embedding size of the profile, and a description of that CLIP for messages."""
    profile = Profile.parse(profile)
    if profile is Profile.TINY:
        return TINY_EMBED_DIM, "the tiny profile's CLIP"
    import open_clip

    name = models.clip_model if profile.pretrained else PAPER_SHAPES_MODEL
    config = open_clip.get_model_config(name)
    if config is None:
        raise UserError(f"models.clip_model={name!r} is not an OpenCLIP model; choose one of open_clip.list_models()")
    return int(config["embed_dim"]), f"OpenCLIP {name}"


def available(source: str, filename: str) -> bool:
    """A local directory, or a hub id whose `filename` is in the Hugging Face cache."""
    from lambda_eclipse.models.preflight import _in_hf_cache

    return Path(source).is_dir() or (source.count("/") == 1 and _in_hf_cache(source, filename))


def missing_paper_weights(models: GenerateModelsSection, prior: str, segment: bool) -> list[str]:
    """Every model of a `paper` run that is neither a local path nor in the Hugging Face cache."""
    from lambda_eclipse.models.preflight import _clip

    missing = []
    if not _clip(models.build_models()):
        missing.append(f"OpenCLIP models.clip_model={models.clip_model} "
                       f"models.clip_pretrained={models.clip_pretrained}")
    if not available(models.decoder, "model_index.json"):
        missing.append(f"Kandinsky 2.2 decoder models.decoder={models.decoder}")
    if not available(prior, "config.json"):
        missing.append(f"prior --prior {prior}")
    if segment:
        if not available(models.grounding_dino, "config.json"):
            missing.append(f"Grounding DINO models.grounding_dino={models.grounding_dino}")
        if not Path(models.sam_checkpoint).is_file():
            missing.append(f"SAM models.sam_checkpoint={models.sam_checkpoint} (the official sam_vit_h_4b8939.pth)")
    return missing


def require(missing: list[str]) -> None:
    if missing:
        raise UserError(
            "weights missing for --profile paper: " + "; ".join(missing) + ". Copy a Hugging Face cache that holds "
            "them (downloaded on a machine with hub access) to ~/.cache/huggingface, or point each at a local "
            "directory or file (--prior, --set models.…=PATH)"
        )


def decoder_configs(profile: str, models: GenerateModelsSection, embed_dim: int) -> tuple[dict, dict]:
    """The profile's decoder UNet and MoVQ configs, without loading weights."""
    if Profile.parse(profile).pretrained:
        return kandinsky.paper_configs(models.decoder)
    return kandinsky.unet_config(profile, embed_dim), kandinsky.movq_config(profile)


def prepare(
    requests: list[GenerateRequest],
    prior: str,
    output: str,
    profile: str | None = None,
    cfg: ModelsAndRuntime | None = None,
    steps: int = 50,
    guidance: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    segment: bool = False,
    extra_missing: list[str] | None = None,
    decoder: str | None = None,
) -> GeneratePlan:
    """Check the profile, weights, prior, decoder, image size, every request and the output directory.

    `profile` None: the prior checkpoint's own (prior_checkpoint.profile_of). `cfg` is a loaded config with `models`
    and `runtime` sections (GenerateConfig, or evaluate's EvalConfig); the defaults when None. `extra_missing` lists
    further missing `paper` weights, reported in the same error. `decoder`: a fine-tuned decoder UNet directory.
    """
    confine_files(request_files(requests))  # in a deployment's run, before any of them is read
    if profile is None:
        profile = profile_of(prior)
    profile = Profile.parse(profile)
    cfg = cfg or load_generate_config()
    if profile.pretrained:
        require(missing_paper_weights(cfg.models, prior, segment) + (extra_missing or []))
    embed_dim, what = clip_embed_dim(profile, cfg.models)
    checkpoint = open_prior(prior, embed_dim, what)
    unet, movq = decoder_configs(profile, cfg.models, embed_dim)
    fine_tuned = open_decoder(decoder, unet, f"{profile} Kandinsky 2.2 decoder") if decoder else None
    size = kandinsky.DEFAULT_SIZE[profile]
    settings = RenderSettings(steps, guidance, height or size, width or size).check()
    kandinsky.check_size(settings.height, settings.width, kandinsky.size_multiple(unet, movq),
                         f"{profile} Kandinsky 2.2 decoder")
    jobs, warnings = check_requests(requests, tokenizer())
    return GeneratePlan(profile, cfg, checkpoint, jobs, settings, check_output(output), segment, warnings,
                        fine_tuned)
