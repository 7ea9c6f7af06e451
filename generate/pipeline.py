"""Prompt + subject images (+ Canny) → the prior's image embedding → Kandinsky 2.2 → images.

One `Generator` holds the models (loaded once for a whole batch or evaluation):
- text: OpenCLIP text hidden states (77 × d) and pooled embedding of the prompt;
- subjects: each subject's crop (subjects.py) embedded by the CLIP image tower and written into the text states at
  its word's token positions (prior/data.py's `interleave`, the training policy);
- control: the CLIP embedding of the Canny edge map of --canny (computed as the prior's training data were, else as
  the released inference code does: generate/prior_checkpoint.py), or by default of the all-zero image (the paper
  drops the edge map at inference unless asked; training replaced it by this embedding);
- prior: ε ~ N(0, I) from the image's seed → ẑ_x (Eq. 1);
- decoder: Kandinsky 2.2 with DDIM, the CLIP embedding of the all-zero image as the negative image embedding (as
  diffusers' Kandinsky prior and the released λ-ECLIPSE code do), classifier-free guidance.

Image k of a job has seed `seed + k`; its prior noise and its decoder latents come from generators seeded with it, on
the CPU, so that the same seed gives the same image on any batch position and device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from generate.config import ModelsAndRuntime
from generate.decoder_checkpoint import DecoderCheckpoint, load_unet
from generate.prior_checkpoint import PriorCheckpoint, load_prior
from generate.requests import Job, RenderSettings
from generate.subjects import NO_BOX, Segmenter, SubjectSpec, as_given, mask_crop, read_image, read_mask
from lambda_eclipse.models.clip import load_clip
from lambda_eclipse.models.kandinsky import load_decoder
from prior.data import interleave
from tasks.edges import canny_rgb


@dataclass(frozen=True)
class SubjectEmbedding:
    vector: np.ndarray  # (d,) float32
    crop: np.ndarray  # what was embedded
    how: str  # "mask", "segmented", "as given", or "as given (segmentation found no box)"


def seeded_generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


class Generator:
    def __init__(self, profile: str, cfg: ModelsAndRuntime, prior: PriorCheckpoint, segment: bool = False,
                 decoder: DecoderCheckpoint | None = None):
        self.profile, self.cfg, self.checkpoint, self.fine_tuned = profile, cfg, prior, decoder
        self.device, self.dtype, clip_dtype = cfg.runtime.resolve()
        models = cfg.models.build_models()
        self.clip = load_clip(profile, models, self.device, clip_dtype)
        self.prior = load_prior(prior, self.device)
        self.decoder = load_decoder(profile, cfg.models.decoder, self.clip.embed_dim, self.device, self.dtype)
        if decoder is not None:  # the fine-tuned UNet in the base decoder's pipeline (same MoVQ, same scheduler)
            self.decoder.pipeline.unet = load_unet(decoder, self.device, self.dtype)
        self.segmenter = Segmenter(profile, models, self.device.type) if segment else None
        self.zero_image = self.clip.zero_image_embedding()
        self._subjects: dict[SubjectSpec, SubjectEmbedding] = {}  # an evaluation reuses each subject's photos

    def model_ids(self) -> dict[str, str]:
        decoder = self.decoder.model_id + (f" + fine-tuned UNet {self.fine_tuned.unet}" if self.fine_tuned else "")
        ids = {"clip": self.clip.model_id, "decoder": decoder, "prior": self.checkpoint.source}
        return ids | (self.segmenter.model_ids if self.segmenter else {})

    def subject(self, spec: SubjectSpec) -> SubjectEmbedding:
        if spec not in self._subjects:
            what = f"subject {spec.word!r}"
            image = read_image(spec.image, what)
            size = self.checkpoint.crop_size()  # the crops the prior was trained on
            if spec.mask is not None:
                crop, how = mask_crop(image, read_mask(spec.mask, image.shape[:2], what), spec.word, size), "mask"
            elif self.segmenter is not None:
                mask = self.segmenter.mask(image, spec.word)
                crop, how = ((mask_crop(image, mask, spec.word, size), "segmented") if mask is not None
                             else (as_given(image, size), NO_BOX))
            else:
                crop, how = as_given(image, size), "as given"
            self._subjects[spec] = SubjectEmbedding(self.clip.encode_images([crop])[0], crop, how)
        return self._subjects[spec]

    def control(self, canny: str | None) -> np.ndarray:
        if canny is None:
            return self.zero_image
        edges = self.checkpoint.canny()  # as the prior's training data did, else as the released inference does
        edge = canny_rgb(read_image(canny, "--canny"), edges["low_threshold"], edges["high_threshold"], edges["size"])
        return self.clip.encode_images([edge])[0]

    def prior_inputs(self, job: Job) -> dict[str, torch.Tensor]:
        """The prior's conditioning for one image (batch of 1): interleaved text states, pooled text, mask, control."""
        hidden, pooled, _, mask = self.clip.encode_text([job.prompt])
        subjects = [self.subject(s.spec).vector for s in job.subjects]
        interleave(hidden[0], np.array(subjects), [{"token_positions": s.token_positions} for s in job.subjects])
        arrays = {"encoder_hidden_states": hidden, "proj_embedding": pooled, "attention_mask": mask,
                  "control_embedding": self.control(job.canny)[None]}
        return {name: torch.from_numpy(np.asarray(a, np.float32)).to(self.device) for name, a in arrays.items()}

    @torch.inference_mode()
    def predict(self, job: Job, seeds: list[int] | None = None) -> torch.Tensor:
        """(n, d) float32 predicted image embeddings, one per seed (default: the job's)."""
        seeds = job.seeds if seeds is None else seeds
        inputs = self.prior_inputs(job)
        d = inputs["proj_embedding"].shape[1]
        noise = torch.stack([torch.randn(d, generator=g) for g in seeded_generators(seeds)]).to(self.device)
        batch = {name: t.expand(len(seeds), *t.shape[1:]) for name, t in inputs.items()}
        return self.prior(hidden_states=noise, **batch).predicted_image_embedding.float()

    @torch.inference_mode()
    def render(self, embeddings: torch.Tensor, seeds: list[int], settings: RenderSettings) -> list[np.ndarray]:
        """(H, W, 3) uint8 images of the embeddings, runtime.batch_size per decoder call."""
        from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

        images = []
        step = self.cfg.runtime.batch_size
        for i in range(0, len(seeds), step):
            chunk = embeddings[i : i + step].to(self.dtype)
            out = self.decoder.pipeline(
                image_embeds=chunk,
                negative_image_embeds=torch.from_numpy(self.zero_image).to(self.device, self.dtype).expand_as(chunk),
                height=settings.height, width=settings.width, num_inference_steps=settings.steps,
                guidance_scale=settings.guidance, generator=seeded_generators(seeds[i : i + step]), output_type="np",
            )
            # return_dict and output_type="np": an ImagePipelineOutput of (N, H, W, 3) floats in [0, 1]
            assert isinstance(out, ImagePipelineOutput) and isinstance(out.images, np.ndarray)
            images += [np.round(image * 255).astype(np.uint8) for image in out.images]
        return images

    def generate(self, job: Job, settings: RenderSettings) -> list[np.ndarray]:
        return self.render(self.predict(job), job.seeds, settings)
