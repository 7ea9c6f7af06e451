"""Concept fine-tuning of the Kandinsky 2.2 decoder UNet (paper §3.3, Eq. 2; Appendix D).

Eq. 2: E_{ε, t, z_x} ‖ε − h_φ(x_t, t, z_x)‖², with x_t the noised MoVQ latent of a reference photo and z_x the CLIP
image embedding of that photo, whole by default (data.segment; finetune/references.py). Only the UNet h_φ is trained:
the prior is not involved (the decoder never sees text), MoVQ and CLIP stay frozen; AdamW at a constant 1e-5, no
warm-up, no prior-preservation loss, every subject in one model. As diffusers' Kandinsky 2.2 decoder fine-tuning script
(train_text_to_image_decoder.py): the UNet is conditioned through `added_cond_kwargs={"image_embeds": z_x}` (no
encoder hidden states), timesteps are uniform over the decoder's 1000 DDPM steps, and of its 8 output channels (ε and
the learned variance) the first 4 are the ε prediction the loss compares with the noise. The loss is the mean over
elements (the script's) rather than Eq. 2's sum: a constant factor, which AdamW's update does not see (bar ε).

An optimizer step takes finetune.batch_size × finetune.gradient_accumulation photos, drawn (with their augmentations,
noise and timesteps) at once and run through the UNet batch_size at a time, the gradients summed: the same update as
one batch of them all, within float rounding. Checkpoints are taken between optimizer steps, where no micro-batch is
pending: what the accumulation has consumed is in the saved RNG state, so a run stopped mid-accumulation redoes
that step's micro-batches on resume, bit for bit.

OUTPUT layout:
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

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffusers.utils.constants import SAFETENSORS_WEIGHTS_NAME

from finetune.config import PROFILES, FinetuneConfig, steps_for
from finetune.subjects import Subject, read_subjects
from lambda_eclipse.errors import UserError, WorkerError, ray_error_reason
from storage.fs import is_local
from storage.layout import read_json, sha256_file, write_json_atomic

if TYPE_CHECKING:
    import torch
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

UNET, CHECKPOINTS, STATE, IDENTITY = "unet", "checkpoints", "training_state.pt", "identity.json"
RECORD, METRICS, REFERENCES = "finetune.json", "metrics.jsonl", "references"

log = logging.getLogger(__name__)


@dataclass
class FinetuneJob:
    """Everything the training needs, checked (sent to the Ray task as is)."""

    subjects: list[Subject]
    output: str
    profile: str
    cfg: FinetuneConfig
    device: str  # "cpu" or "cuda"; "" until `place`d
    precision: str  # float32 | bfloat16 | float16 (lambda_eclipse.device); "" until `place`d
    resolution: int
    identity: dict  # what a resumed run must share with its checkpoint
    resume_from: str | None  # checkpoint directory


def checkpoints(output: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary `.step-*.tmp` directories do not match)."""
    base = Path(output) / CHECKPOINTS
    return sorted(base.glob("step-*")) if base.is_dir() else []


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
        _adamw8bit()
    return device, precision


def _adamw8bit():
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


def _resolution(profile: str, cfg: FinetuneConfig) -> int:
    from generate.plan import clip_embed_dim, decoder_configs
    from lambda_eclipse.models import kandinsky

    resolution = cfg.data.resolution or kandinsky.DEFAULT_SIZE[profile]
    embed_dim, _ = clip_embed_dim(profile, cfg.models)
    multiple = kandinsky.size_multiple(*decoder_configs(profile, cfg.models, embed_dim))
    kandinsky.check_size(resolution, resolution, multiple, f"{profile} Kandinsky 2.2 decoder (data.resolution)")
    return resolution


def prepare_finetune(subjects: list[str], output: str, profile: str, cfg: FinetuneConfig,
                     resume: bool = False) -> FinetuneJob:
    """Check the subjects, profile, weights, config and output before any model loads; bad input fails in one line.
    Where it runs (device, precision) is `place`'s to decide, once the Ray cluster is known."""
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    read = read_subjects(subjects)
    if cfg.runtime.device == "cpu":  # what needs no cluster to be known wrong
        _device_and_precision(cfg, 0)
    if profile == "paper":
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
        what = f"checkpoints (latest {existing[-1].name})" if existing else f"a fine-tuned decoder ({RECORD})"
        raise UserError(f"{out} already holds {what}; pass --resume to continue that run, or use a new --output")
    identity = {
        "profile": profile, "resolution": resolution,
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


def run_finetune(job: FinetuneJob) -> dict:
    """Run `finetune` as a Ray task (a Ray session open; `job` placed): on a GPU node when its device is cuda, never in
    the flow process. A task that dies (a killed worker, a lost node) is run again by Ray, up to
    runtime.max_failures times, and resumes from the run's last checkpoint. Returns finetune.json's record."""
    import ray
    from ray.exceptions import RayError

    from lambda_eclipse.ray_logs import relayed_logs

    r = job.cfg.runtime
    task = ray.remote(num_cpus=r.cpus, num_gpus=1 if job.device == "cuda" else 0, max_retries=r.max_failures,
                      retry_exceptions=False)(_finetune_task)
    with relayed_logs() as logs:
        try:
            return ray.get(task.remote(job, logs))
        except RayError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, UserError):  # a bad setting or a diverged loss: in one line, as if run here
                raise cause from None
            raise WorkerError(f"finetune-decoder's training task failed: {ray_error_reason(exc)}; {job.output} keeps "
                              "its checkpoints: continue it with --resume") from exc


def _finetune_task(job: FinetuneJob, logs) -> dict:
    import torch

    torch.set_num_threads(max(1, math.floor(job.cfg.runtime.cpus)))
    existing = checkpoints(job.output)
    if existing and str(existing[-1]) != job.resume_from:  # a retried task: its own run's checkpoints
        job = replace(job, resume_from=str(existing[-1]))
    with logs.forwarding("finetune", __name__):
        return finetune(job)[1]


class Trainer:
    """The models, optimizer and RNG of a fine-tuning run, and one optimisation step."""

    def __init__(self, job: FinetuneJob):
        import numpy as np
        import torch
        from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

        from finetune.data import TrainingPhotos
        from finetune.references import embed_references, write_crops
        from lambda_eclipse.device import torch_dtype
        from lambda_eclipse.models.kandinsky import load_decoder

        cfg, f = job.cfg, job.cfg.finetune
        self.job, self.device = job, torch.device(job.device)
        self.amp = torch_dtype(job.precision, self.device.type, "training")  # as `place` resolved it
        torch.manual_seed(f.seed)
        # z_x first, and the CLIP and segmentation models freed, before the decoder takes its memory.
        self.references, self.model_ids = embed_references(job.subjects, job.profile, cfg.models, self.device,
                                                           cfg.data.segment)
        write_crops(self.references, Path(job.output) / REFERENCES)
        embed_dim = int(self.references[0].embedding.shape[0])
        # fp32 master weights: autocast runs the forward in job.precision
        decoder = load_decoder(job.profile, cfg.models.decoder, embed_dim, self.device, torch.float32)
        self.base_decoder = decoder.model_id
        self.unet: UNet2DConditionModel = decoder.pipeline.unet
        self.movq = decoder.pipeline.movq.requires_grad_(False).eval()
        # The decoder's own noise schedule (DDIM at inference shares DDPM's betas), as the script's DDPMScheduler.
        schedule = DDPMScheduler.from_config(decoder.pipeline.scheduler.config)
        assert isinstance(schedule, DDPMScheduler)  # (typed as also returning the unused kwargs)
        if schedule.config["prediction_type"] != "epsilon":
            raise UserError(f"decoder {decoder.model_id} predicts {schedule.config['prediction_type']!r}; Eq. 2 "
                            "trains an ε-predicting UNet (Kandinsky 2.2's)")
        self.noise_schedule = schedule
        self.timesteps = int(self.noise_schedule.config["num_train_timesteps"])
        self.unet.train()
        if cfg.runtime.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        optimizer = _adamw8bit() if f.optimizer == "adamw8bit" else torch.optim.AdamW
        # fused: one kernel over all parameters (CPU and CUDA); bitsandbytes' has its own
        extra: dict[str, Any] = {"fused": True} if optimizer is torch.optim.AdamW else {}
        self.optimizer = optimizer(self.params, lr=f.lr, betas=(f.beta1, f.beta2), eps=f.eps,
                                   weight_decay=f.weight_decay, **extra)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.generator = torch.Generator("cpu").manual_seed(f.seed)
        self.photos = TrainingPhotos([r.image for r in self.references],
                                     np.stack([r.embedding for r in self.references]), job.resolution, cfg.data)
        self.step = 0
        if job.resume_from:
            self._restore(Path(job.resume_from))

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step of Eq. 2 over gradient_accumulation micro-batches; (loss, gradient norm) as device
        tensors (no host sync)."""
        import torch

        f = self.job.cfg.finetune
        pixels, embeds = self.photos.batch(self.generator, f.batch_size * f.gradient_accumulation)
        pixels, embeds = pixels.to(self.device), embeds.to(self.device)
        autocast = torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp != torch.float32)
        with torch.no_grad(), autocast:
            latents = torch.cat([self.movq.encode(p).latents.float()  # unquantised, as the pipeline decodes them
                                 for p in pixels.split(f.batch_size)])
        # Drawn on the CPU generator: the same numbers on any device, and saved with the checkpoint.
        noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
        t = torch.randint(self.timesteps, (len(latents),), generator=self.generator).to(self.device)
        noisy = self.noise_schedule.add_noise(latents, noise, t)  # pyright: ignore[reportArgumentType]
        self.optimizer.zero_grad(set_to_none=True)
        losses = [self.micro_step(*part) for part in zip(*(x.split(f.batch_size) for x in (noisy, t, embeds, noise)))]
        loss = torch.stack(losses).mean()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.job.cfg.finetune.grad_clip or math.inf,
                                                   foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return loss.detach(), grad_norm

    def micro_step(self, noisy, t, embeds, noise) -> torch.Tensor:
        """Eq. 2's loss on one micro-batch, its gradient added to the parameters' (divided by the micro-batch count:
        the step's gradient is the mean's); the loss, detached."""
        import torch
        import torch.nn.functional as F

        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp != torch.float32):
            out = self.unet(noisy, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": embeds})
        loss = F.mse_loss(out.sample[:, :4].float(), noise)  # channels 4–7: the learned variance, not trained here
        self.scaler.scale(loss / self.job.cfg.finetune.gradient_accumulation).backward()
        return loss.detach()

    def _rng(self) -> dict:
        import torch

        state = {"data": self.generator.get_state(), "cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save_checkpoint(self) -> Path:
        import torch

        out = Path(self.job.output)
        target = out / CHECKPOINTS / f"step-{self.step:08d}"
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
        self.unet.save_pretrained(tmp / UNET)
        torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                    "rng": self._rng()}, tmp / STATE)
        write_json_atomic(tmp / IDENTITY, self.job.identity)
        os.replace(tmp, target)
        for old in checkpoints(out)[: -self.job.cfg.checkpoint.keep]:
            shutil.rmtree(old)
        log.info("step %d: checkpoint %s", self.step, target)
        return target

    def _restore(self, path: Path) -> None:
        import torch
        from safetensors.torch import load_file

        self.unet.load_state_dict(load_file(path / UNET / SAFETENSORS_WEIGHTS_NAME, device=str(self.device)))
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        self.generator.set_state(rng["data"])
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)


class Metrics:
    """metrics.jsonl: a resumed run drops what a killed run logged after its checkpoint, so it holds one history."""

    def __init__(self, output: Path, step: int):
        self.path = output / METRICS
        kept = [r for r in read_metrics(output) if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.last: dict = kept[-1] if kept else {}

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.last = record
        log.info("step %d: loss %.4g, grad norm %.3g, %.3g steps/s", record["step"], record["loss"],
                 record["grad_norm"], record["steps_per_s"])


def read_metrics(output: str | Path) -> list[dict]:
    path = Path(output) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def finetune(job: FinetuneJob) -> tuple[UNet2DConditionModel, dict]:
    """Train to `finetune.max_steps`, write OUTPUT (module docstring) and return the UNet and finetune.json's record."""
    import torch

    cfg, out = job.cfg, Path(job.output)
    trainer = Trainer(job)
    (out / RECORD).unlink(missing_ok=True)  # a resumed run's UNet changes: finetune.json comes back with the new one
    metrics = Metrics(out, trainer.step)
    log.info("fine-tuning the %s decoder UNet on %d photo(s) of %d subject(s), %d px, steps %d → %d on %s (%s)",
             job.profile, len(trainer.photos), len(job.subjects), job.resolution, trainer.step,
             cfg.finetune.max_steps, job.device, job.precision)
    sums = torch.zeros(2, dtype=torch.float64, device=trainer.device)  # loss, grad norm since the last record
    since, started, first, seconds = trainer.step, time.perf_counter(), trainer.step, 0.0
    while trainer.step < cfg.finetune.max_steps:
        loss, grad_norm = trainer.train_step()
        sums += torch.stack([loss.double(), grad_norm.double()])
        last = trainer.step == cfg.finetune.max_steps
        if last or trainer.step % cfg.log.every == 0 or trainer.step % cfg.checkpoint.every == 0:
            loss_sum, grad_sum = sums.tolist()  # checked here, not every step: no host sync per step
            if not math.isfinite(loss_sum):
                raise UserError(f"the loss became NaN or infinite between steps {since} and {trainer.step}; stopped "
                                "without saving; lower finetune.lr (resume from the last checkpoint with --resume)")
            elapsed = time.perf_counter() - started
            seconds += elapsed
            n = trainer.step - since
            metrics.write({"step": trainer.step, "loss": loss_sum / n, "grad_norm": grad_sum / n,
                           "steps_per_s": n / elapsed, "lr": cfg.finetune.lr})
            sums.zero_()
            if last or trainer.step % cfg.checkpoint.every == 0:
                trainer.save_checkpoint()
            since, started = trainer.step, time.perf_counter()  # the checkpoint's time is not training time
    _save_unet(trainer.unet, out / UNET)
    record = {
        "profile": job.profile,
        "base_decoder": trainer.base_decoder,
        "unet": UNET,
        "steps": trainer.step,
        "resolution": job.resolution,
        "precision": job.precision,
        "embed_dim": int(trainer.references[0].embedding.shape[0]),
        "subjects": [{"name": s.name, "word": s.word, "folder": s.folder,
                      "photos": [r.record() for r in trainer.references if r.subject == s.name]}
                     for s in job.subjects],
        "models": trainer.model_ids | {"decoder": trainer.base_decoder},
        "config": cfg.to_dict(),
        "loss": metrics.last.get("loss"),
        "steps_per_s": (trainer.step - first) / seconds if seconds else None,  # this session's, checkpoints excluded
    }
    write_json_atomic(out / RECORD, record)  # last: a directory with finetune.json holds a complete decoder
    log.info("done: step %d, UNet %s", trainer.step, out / UNET)
    return trainer.unet, record


def _save_unet(unet: UNet2DConditionModel, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)  # an earlier, shorter run into this directory
    os.replace(tmp, path)
