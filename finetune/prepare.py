"""A finetune-decoder run, prepared: the subjects, profile, weights, config and output checked before any model loads
(bad input fails in one line), into the `FinetuneJob` of finetune/job.py; `place` decides its device and precision
once the Ray cluster is known."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from finetune.config import FINETUNE_PROFILES, FinetuneConfig, steps_for
from finetune.job import IDENTITY, RECORD, FinetuneJob
from finetune.subjects import read_subjects
from lambda_eclipse.errors import UserError
from lambda_eclipse.profile import Profile
from storage.fs import is_local, name
from storage.layout import read_json, sha256_file
from storage.run_dir import checkpoints


def _device_and_precision(cfg: FinetuneConfig, gpus: float) -> tuple[str, str]:
    """Where the training task runs: on a GPU when the Ray cluster has any (the task then asks Ray for one), so the
    choice is the cluster's, not the flow process's node's (which on a cluster has none)."""
    from lambda_eclipse.device import cluster_device, dtype_name

    r = cfg.runtime
    device = cluster_device(r.device, gpus)
    precision = dtype_name(r.precision, device, "training")
    if precision == "float16" and device == "cpu":
        raise UserError("runtime.precision=fp16 needs a CUDA device (loss scaling); use fp32 or bf16 on the CPU")
    if cfg.finetune.optimizer == "adamw8bit":
        if device != "cuda":
            raise UserError("finetune.optimizer=adamw8bit runs on CUDA only; use finetune.optimizer=adamw on the CPU")
        adamw8bit()
    return device, precision


def adamw8bit():
    """bitsandbytes' AdamW8bit (finetune.optimizer=adamw8bit), or a UserError naming the package to install."""
    import importlib

    try:  # an optional dependency (not in pyproject): imported by name
        return importlib.import_module("bitsandbytes.optim").AdamW8bit
    except ImportError:
        raise UserError("finetune.optimizer=adamw8bit needs bitsandbytes, which is not installed: pip install "
                        "bitsandbytes (CUDA builds), or use finetune.optimizer=adamw") from None


def _missing_paper_weights(cfg: FinetuneConfig) -> None:
    from generate.plan import available, require
    from lambda_eclipse.models.preflight import _clip

    models = cfg.models
    missing = [] if _clip(models.build_models()) else [
        f"OpenCLIP models.clip_model={models.clip_model} models.clip_pretrained={models.clip_pretrained}"]
    if not available(models.decoder, "model_index.json"):
        missing.append(f"Kandinsky 2.2 decoder models.decoder={models.decoder}")
    if cfg.data.segment:
        if not available(models.grounding_dino, "config.json"):
            missing.append(f"Grounding DINO models.grounding_dino={models.grounding_dino}")
        if not Path(models.sam_checkpoint).is_file():
            missing.append(f"SAM models.sam_checkpoint={models.sam_checkpoint} (the official sam_vit_h_4b8939.pth)")
    require(missing)


def _resolution(profile: Profile, cfg: FinetuneConfig) -> int:
    from generate.plan import clip_embed_dim, decoder_configs
    from lambda_eclipse.models import kandinsky

    resolution = cfg.data.resolution or kandinsky.DEFAULT_SIZE[profile]
    embed_dim, _ = clip_embed_dim(profile, cfg.models)
    multiple = kandinsky.size_multiple(*decoder_configs(profile, cfg.models, embed_dim))
    kandinsky.check_size(resolution, resolution, multiple, f"{profile} Kandinsky 2.2 decoder (data.resolution)")
    return resolution


def prepare_finetune(subjects: list[str], output: str, profile: str | Profile, cfg: FinetuneConfig,
                     resume: bool = False) -> FinetuneJob:
    """Check the subjects, profile, weights, config and output before any model loads; bad input fails in one line.
    Where it runs (device, precision) is `place`'s to decide, once the Ray cluster is known."""
    profile = Profile.parse(profile, allowed=FINETUNE_PROFILES)
    read = read_subjects(subjects)
    if cfg.runtime.device == "cpu":  # what needs no cluster to be known wrong
        _device_and_precision(cfg, 0)
    if profile.pretrained:
        _missing_paper_weights(cfg)
    resolution = _resolution(profile, cfg)
    if not is_local(output):
        raise UserError(f"--output {output}: the fine-tuning directory must be a local path (checkpoints are written "
                        "in place)")
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output directory {out}: {exc.strerror}") from None
    existing = checkpoints(out)
    if (existing or (out / RECORD).exists()) and not resume:
        what = f"checkpoints (latest {name(existing[-1])})" if existing else f"a fine-tuned decoder ({RECORD})"
        raise UserError(f"{out} already holds {what}; pass --resume to continue that run, or use a new --output")
    identity = {
        "profile": profile.value, "resolution": resolution,
        "subjects": {s.name: [sha256_file(p) for p in s.photos] for s in read},
    } | cfg.training_identity()
    resume_from = str(existing[-1]) if existing else None
    if not cfg.finetune.max_steps:
        cfg = replace(cfg, finetune=replace(cfg.finetune, max_steps=steps_for(len(read))))
    job = FinetuneJob(read, str(out), profile, cfg, "", "", resolution, identity, resume_from)
    _same_identity(job, job.identity)
    return job


def place(job: FinetuneJob, gpus: float) -> FinetuneJob:
    """`job` on the Ray cluster that has `gpus` GPUs: its device and precision, the precision part of the identity
    a resumed run must share."""
    device, precision = _device_and_precision(job.cfg, gpus)
    placed = replace(job, device=device, precision=precision, identity=job.identity | {"precision": precision})
    _same_identity(placed, {"precision": precision})
    return placed


def _same_identity(job: FinetuneJob, keys: dict) -> None:
    if not job.resume_from:
        return
    saved = read_json(Path(job.resume_from) / IDENTITY)
    differ = [f"{k} ({saved.get(k)!r} then, {v!r} now)" for k, v in keys.items() if saved.get(k) != v]
    if differ:
        raise UserError(f"checkpoint {job.resume_from} was trained otherwise: {'; '.join(differ)}; resume with the "
                        "same subjects, photos and settings, or use a new --output")

