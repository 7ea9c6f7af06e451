"""Caption stage: BLIP-2 (flan-t5-xl in the paper) captions every image, one batched greedy `generate`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lambda_eclipse.required import required
from storage.sample import Sample
from tasks.base import ModelStage
from tasks.config import CaptionSection


@dataclass
class Caption(ModelStage):
    name = "caption"
    tflops = 0.7  # BLIP-2 ViT-g + Q-Former + flan-t5-xl, ~30 greedy tokens
    cpu_seconds = 0.03
    caption: CaptionSection = field(default_factory=CaptionSection)

    def load(self) -> None:
        from lambda_eclipse.models.blip2 import load_blip2  # torch and transformers load in the actor, not at import

        bundle = load_blip2(self.profile, self.models, self.device, self.dtype)
        self.model, self.processor, self.model_id = bundle.model, bundle.processor, bundle.model_id
        # An empty prompt, as LAVIS captions with flan-t5: the processor then puts the query-token
        # placeholders before the tokenized "" itself. With images alone, generate would build the prompt from
        # text_config.bos_token_id, which T5 configs leave unset. The prompt is all special tokens, so a
        # decoder-only (OPT) BLIP-2's echo of it decodes to nothing. The same for every image: tokenized once.
        # (transformers types a processor's **kwargs as the nested form only: return_tensors is left out)
        blank = np.zeros((8, 8, 3), np.uint8)
        prompt = self.processor(images=[blank], text=[""], return_tensors="pt")  # pyright: ignore[reportCallIssue]
        self._prompt = {k: prompt[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def pixel_values(self, samples: list[Sample]):
        """BlipImageProcessor's resize (bicubic, to its fixed size), rescale and normalisation, in torch on the model's
        device from each sample's image (lambda_eclipse.models.pixels)."""
        import torch

        from lambda_eclipse.models.pixels import normalised, resized_pixels

        ip = self.processor.image_processor
        height, width = ip.size["height"], ip.size["width"]
        pixels = torch.cat([
            resized_pixels(required(s.image, "sample.image"), self.device, height, width, "bicubic") for s in samples
        ])
        return normalised(pixels, ip.rescale_factor, ip.image_mean, ip.image_std)

    def output(self, sample: Sample) -> dict:
        return {"caption": sample.caption}

    def apply(self, sample: Sample, record: dict) -> None:
        sample.caption = record["value"]["caption"]

    def process(self, samples: list[Sample]) -> None:
        inputs = {k: v.expand(len(samples), -1) for k, v in self._prompt.items()}
        inputs["pixel_values"] = self.pixel_values(samples)
        pixel_values = inputs["pixel_values"].to(self.model.dtype)
        import torch

        with torch.inference_mode():
            ids = self.model.generate(
                pixel_values=pixel_values,
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                max_new_tokens=self.caption.max_new_tokens,
            )
        for sample, text in zip(samples, self.processor.batch_decode(ids, skip_special_tokens=True)):
            caption = text.strip()
            if caption:
                sample.caption = caption
            else:
                sample.reject_at(self.name, "empty caption")
