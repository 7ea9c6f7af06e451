"""Caption stage: BLIP-2 (flan-t5-xl in the paper) captions every image, one batched greedy `generate`."""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.sample import Sample
from tasks.base import ModelStage
from tasks.config import CaptionConfig


@dataclass
class Caption(ModelStage):
    name = "caption"
    gpus = 0.2  # GPU share by compute per image (docs/design.md's FLOP estimates); the four sum to 1
    caption: CaptionConfig = field(default_factory=CaptionConfig)

    def load(self) -> None:
        from lambda_eclipse.models.blip2 import load_blip2  # torch and transformers load in the actor, not at import

        bundle = load_blip2(self.profile, self.models, self.device, self.dtype)
        self.model, self.processor, self.model_id = bundle.model, bundle.processor, bundle.model_id

    def process(self, samples: list[Sample]) -> None:
        # An empty prompt, as LAVIS captions with flan-t5: the processor then puts the query-token
        # placeholders before the tokenized "" itself. With images alone, generate would build the prompt from
        # text_config.bos_token_id, which T5 configs leave unset. The prompt is all special tokens, so a
        # decoder-only (OPT) BLIP-2's echo of it decodes to nothing.
        # (transformers types a processor's **kwargs as the nested form only: return_tensors is left out)
        # The image processor (transformers' torchvision backend) resizes and normalises on the model's device: each
        # image goes there as it is (the working resolution, tasks/decode.py), not through PIL on the CPU.
        inputs = self.processor(
            images=[s.image for s in samples], text=[""] * len(samples), return_tensors="pt", device=self.device  # pyright: ignore[reportCallIssue]
        ).to(self.device)
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
