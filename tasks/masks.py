"""SAM masks for every detected box: one image-encoder call per batch of images, one decoder call per image.

Preprocessing is SamPredictor's (resize the longest side to the encoder's size, normalise, pad), done per image
so that the encoder, where nearly all of SAM's compute is, runs once over the stacked batch. Masks only: the
mask/box and containment filters belong to the next stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lambda_eclipse.required import required
from storage.sample import Sample
from tasks.base import ModelStage
from tasks.config import MasksConfig


@dataclass
class Masks(ModelStage):
    name = "masks"
    tflops = 5.9  # SAM ViT-H image encoder at 1024 px
    cpu_seconds = 0.05
    masks: MasksConfig = field(default_factory=MasksConfig)

    def load(self) -> None:
        # Imported here, in the actor: torch and SAM load where the model runs, not when the stage list is read.
        # segment_anything after lambda_eclipse.models, whose import makes torchvision (which it imports) loadable.
        from segment_anything.utils.transforms import ResizeLongestSide

        from lambda_eclipse.models.sam import load_sam

        self.sam = load_sam(self.profile, self.models, self.device, self.dtype)
        self.transform = ResizeLongestSide(self.sam.image_encoder.img_size)

    def process(self, samples: list[Sample]) -> None:
        with_boxes = [s for s in samples if s.detections]
        for i in range(0, len(with_boxes), self.batch_size):
            self._segment(with_boxes[i : i + self.batch_size])

    def _segment(self, batch: list[Sample]) -> None:
        import torch

        sam = self.sam
        # Autocast covers the float32 tensors SAM creates internally when its weights are bfloat16.
        with torch.inference_mode(), torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            resized = [
                torch.as_tensor(self.transform.apply_image(required(s.image, "sample.image")), device=self.device)
                .permute(2, 0, 1)
                for s in batch
            ]
            pixels = torch.cat([sam.preprocess(image[None].float()) for image in resized])
            embeddings = sam.image_encoder(pixels.to(self.dtype))
            for sample, image, embedding in zip(batch, resized, embeddings):
                original_size = required(sample.image, "sample.image").shape[:2]
                boxes = torch.as_tensor(np.stack([d.box for d in sample.detections]), device=self.device)
                sparse, dense = sam.prompt_encoder(
                    points=None, boxes=self.transform.apply_boxes_torch(boxes, original_size), masks=None
                )
                low_res, _ = sam.mask_decoder(
                    image_embeddings=embedding[None],
                    image_pe=sam.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
                logits = sam.postprocess_masks(low_res.float(), tuple(image.shape[-2:]), original_size)
                masks = (logits[:, 0] > sam.mask_threshold).cpu().numpy()
                for det, mask in zip(sample.detections, masks):
                    det.mask = mask
