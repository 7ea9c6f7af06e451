"""SAM masks for every detected box: one image-encoder call per batch of images, one decoder call per image.

Preprocessing is SamPredictor's (resize the longest side to the encoder's size, normalise, pad), done per image
in torch on the model's device (lambda_eclipse/models/pixels.py), so that the encoder, where nearly all of SAM's
compute is, runs once over the stacked batch. The masks are upsampled to the size of the sample's image (the
working resolution, tasks/decode.py: about SAM's own), never to the full photo. Masks only: the mask/box and
containment filters belong to the next stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lambda_eclipse.required import required
from storage.sample import Sample
from tasks.base import ModelStage
from tasks.config import MasksSection


def rle_of(mask: np.ndarray) -> dict:
    """A (h, w) bool mask as compressed COCO RLE, JSON-able: {"size": [h, w], "counts": str}."""
    import cv2
    from pycocotools import mask as coco

    # COCO's RLE runs down columns: it takes a Fortran-ordered array. OpenCV's transpose makes one ten times faster
    # than numpy's copy (0.06 against 0.6 ms at 1024 × 768), where nearly all of the encoding's time went.
    rle = coco.encode(np.asarray(cv2.transpose(np.ascontiguousarray(mask).view(np.uint8)), np.uint8).T)
    counts = rle["counts"]  # bytes, though pycocotools' stubs say str
    return {"size": [int(x) for x in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def mask_of(rle: dict) -> np.ndarray:
    from pycocotools import mask as coco

    return coco.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


@dataclass
class Masks(ModelStage):
    name = "masks"
    tflops = 5.9  # SAM ViT-H image encoder at 1024 px
    cpu_seconds = 0.05
    masks: MasksSection = field(default_factory=MasksSection)
    depends_on = ()  # the masks section's keys are the mask filters'

    def output(self, sample: Sample) -> dict:
        """Each detection's mask as COCO RLE (pycocotools), the segmentation ecosystem's format: a few hundred bytes
        where the mask's pixels are megabytes."""
        return {"masks": [rle_of(required(d.mask, "detection mask")) for d in sample.detections]}

    def apply(self, sample: Sample, record: dict) -> None:
        for det, rle in zip(sample.detections, record["value"]["masks"], strict=True):
            det.mask = mask_of(rle)

    def load(self) -> None:
        # Imported here, in the actor: torch and SAM load where the model runs, not when the stage list is read.
        # segment_anything after lambda_eclipse.models, whose import makes torchvision (which it imports) loadable.
        from lambda_eclipse.models.pixels import resized_pixels, upsampled_masks  # isort: skip
        from lambda_eclipse.models.sam import load_sam  # isort: skip
        from segment_anything.utils.transforms import ResizeLongestSide  # isort: skip

        self._resized_pixels, self._upsampled_masks = resized_pixels, upsampled_masks

        self.sam = load_sam(self.profile, self.models, self.device, self.dtype)
        self.transform = ResizeLongestSide(self.sam.image_encoder.img_size)

    def process(self, samples: list[Sample]) -> None:
        with_boxes = [s for s in samples if s.detections]
        for i in range(0, len(with_boxes), self.batch_size):
            self._segment(with_boxes[i : i + self.batch_size])

    def _segment(self, batch: list[Sample]) -> None:
        import torch
        import torch.nn.functional as F

        sam = self.sam
        side = sam.image_encoder.img_size
        # Autocast covers the float32 tensors SAM creates internally when its weights are bfloat16.
        with torch.inference_mode(), torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            resized = []
            for s in batch:
                image = required(s.image, "sample.image")
                # SamPredictor's ResizeLongestSide (bilinear, antialiased), in torch on the device
                shape = self.transform.get_preprocess_shape(image.shape[0], image.shape[1], side)
                resized.append(self._resized_pixels(image, self.device, *shape))
            pixels = torch.cat([sam.preprocess(image) for image in resized])
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
                # Sam.postprocess_masks: to the padded input size, crop the padding, then to the image's size (the
                # stored mask size), no further
                logits = F.interpolate(low_res.float(), (side, side), mode="bilinear", align_corners=False)
                logits = logits[..., : image.shape[-2], : image.shape[-1]]
                height, width = original_size
                masks = self._upsampled_masks(logits, height, width, sam.mask_threshold)
                for det, mask in zip(sample.detections, masks):
                    det.mask = mask
