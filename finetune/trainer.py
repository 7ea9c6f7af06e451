"""Concept fine-tuning of the Kandinsky 2.2 decoder UNet (paper §3.3, Eq. 2; Appendix D): the models, optimizer and
random state of a run, one optimisation step, and the checkpoint they make.

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
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffusers.utils.constants import SAFETENSORS_WEIGHTS_NAME

from finetune.job import IDENTITY, REFERENCES, UNET, FinetuneJob
from finetune.prepare import adamw8bit
from lambda_eclipse.errors import UserError
from storage.layout import write_json_atomic
from storage.run_dir import CHECKPOINTS, STATE, capture_rng, checkpoint_name, checkpoints, restore_rng

if TYPE_CHECKING:
    import torch
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

log = logging.getLogger(__name__)


class Trainer:
    """The models, optimizer and RNG of a fine-tuning run, one optimisation step, and its checkpoints."""

    def __init__(self, job: FinetuneJob):
        import numpy as np
        import torch
        from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

        from finetune.data import TrainingPhotos
        from finetune.references import embed_references, write_crops
        from lambda_eclipse.device import master_dtype, torch_dtype
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
        # master weights (float32): autocast runs the forward in job.precision
        decoder = load_decoder(job.profile, cfg.models.decoder, embed_dim, self.device, master_dtype())
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
        optimizer = adamw8bit() if f.optimizer == "adamw8bit" else torch.optim.AdamW
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

    def save_checkpoint(self) -> Path:
        import torch

        out = Path(self.job.output)
        target = out / CHECKPOINTS / checkpoint_name(self.step)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
        self.unet.save_pretrained(tmp / UNET)
        torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                    "rng": capture_rng({"data": self.generator})}, tmp / STATE)
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
        restore_rng(state["rng"], {"data": self.generator})
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)
