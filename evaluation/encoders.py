"""The encoders that score an evaluation: DINO ViT-S/16 for DINO, and `evaluate.clip_model` for CLIP-I and CLIP-T.

CLIP-I and CLIP-T measured with the generator's own conditioning encoder (OpenCLIP ViT-bigG-14, whose image embedding
the prior is trained to predict and the decoder renders) would score the method in the space it optimises, which
favours it. The default is therefore OpenAI's CLIP ViT-B/32 (`ViT-B-32-quickgelu`, pretrained `openai`), the encoder
that public DreamBooth-metric implementations load (ImagenHub's DreamBooth metrics: `clip.load("ViT-B/32")`); neither
DreamBooth nor the λ-ECLIPSE paper names its CLIP, so the paper's numbers are labelled "reported" next to ours.
`evaluate.clip_model=conditioning` scores with the conditioning encoder instead.

Profiles: `paper` loads the named OpenCLIP checkpoint; `tiny` builds a tiny OpenCLIP with random weights and a seed of
its own (a different encoder from the tiny conditioning CLIP, offline); `paper-shapes` the named architecture with
random weights.
"""

from __future__ import annotations

from evaluation.config import EvalConfig
from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import UserError
from lambda_eclipse.profile import Profile

CONDITIONING = "conditioning"
TINY_EVAL_SEED = 4321  # not the tiny models' seed: the tiny evaluation CLIP is another encoder


def clip_source(cfg: EvalConfig) -> ModelsSection:
    e = cfg.evaluate
    return ModelsSection(clip_model=e.clip_model, clip_pretrained=e.clip_pretrained)


def describe(profile: str, cfg: EvalConfig) -> dict[str, str]:
    """What scores each metric, for summary.md: {"dino": …, "clip": …}."""
    e, profile = cfg.evaluate, Profile.parse(profile)
    dino = f"DINO ViT-S/16 {cfg.models.dino}" if profile.pretrained else f"DINO ViT-S/16 {profile} (random weights)"
    if e.clip_model == CONDITIONING:
        conditioning = (f"{cfg.models.clip_model}:{cfg.models.clip_pretrained}" if profile.pretrained
                        else f"the {profile} profile's CLIP (random weights)")
        clip = f"OpenCLIP {conditioning}, the generator's own conditioning encoder"
    elif profile is Profile.TINY:
        clip = (f"a tiny OpenCLIP of its own (random weights, seed {TINY_EVAL_SEED}; stands in for {e.clip_model}:"
                f"{e.clip_pretrained}), not the conditioning encoder")
    elif profile.pretrained:
        clip = f"OpenCLIP {e.clip_model}:{e.clip_pretrained}, not the conditioning encoder"
    else:
        clip = f"OpenCLIP {e.clip_model} (random weights), not the conditioning encoder"
    return {"dino": dino, "clip": clip}


def check_clip_model(profile: str, cfg: EvalConfig) -> None:
    """An evaluation CLIP that OpenCLIP knows, before anything loads."""
    name = cfg.evaluate.clip_model
    if name == CONDITIONING or Profile.parse(profile) is Profile.TINY:
        return
    import open_clip

    if open_clip.get_model_config(name) is None:
        raise UserError(f"evaluate.clip_model={name!r} is not an OpenCLIP model; choose one of open_clip.list_models() "
                        f"(default ViT-B-32-quickgelu) or {CONDITIONING!r}")


def load_eval_clip(profile: str, cfg: EvalConfig, conditioning, device, dtype):
    """The CLIP-I / CLIP-T encoder (a ClipBundle); `conditioning` is the generator's, used for "conditioning"."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    from lambda_eclipse.models import seeded
    from lambda_eclipse.models.clip import TINY_TEXT, TINY_VISION, ClipBundle, load_clip

    e, profile = cfg.evaluate, Profile.parse(profile)
    if e.clip_model == CONDITIONING:
        return conditioning
    if profile.pretrained:
        return load_clip(profile, clip_source(cfg), device, dtype)
    what = describe(profile, cfg)["clip"]
    with seeded(TINY_EVAL_SEED):
        if profile is Profile.TINY:
            model = open_clip.CLIP(embed_dim=24, vision_cfg=CLIPVisionCfg(**TINY_VISION),
                                   text_cfg=CLIPTextCfg(**TINY_TEXT))
        else:
            model = open_clip.create_model(e.clip_model, pretrained=None)
    if not isinstance(model, open_clip.CLIP):
        raise UserError(f"evaluate.clip_model={e.clip_model!r} is a {type(model).__name__}, not an OpenCLIP CLIP")
    return ClipBundle(model, what, device, dtype)
