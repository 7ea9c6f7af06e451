"""Grounding DINO boxes for the caption's nouns: one batched forward per batch of images.

The prompt is the sample's nouns, "dog . car .". Each query is scored against each noun by the highest
sigmoid logit over the noun's tokens in the prompt, so a box is always labelled with one of the caption's
nouns (post-processing's `text_labels` can be several words or empty, docs/pitfalls.md). The
box-count, area and aspect filters belong to the next stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lambda_eclipse.required import required
from storage.sample import Detection, Sample
from tasks.base import ModelStage
from tasks.config import BoxesSection

if TYPE_CHECKING:
    import torch


def prompt(sample: Sample) -> str:
    return "".join(f"{noun.text.lower()} . " for noun in sample.nouns).strip()


def noun_token_positions(input_ids: list[int], noun_ids: list[list[int]]) -> list[list[int]]:
    """Where each noun's token ids sit in the prompt's ids, searched in prompt order so that a word that occurs
    twice maps each occurrence to its own noun; [] for a noun not found (e.g. cut off by truncation)."""
    positions, start = [], 0
    for ids in noun_ids:
        n = len(ids)
        found = next((i for i in range(start, len(input_ids) - n + 1) if input_ids[i : i + n] == ids), None)
        if found is None or not ids:
            positions.append([])
            continue
        positions.append(list(range(found, found + n)))
        start = found + n
    return positions


@dataclass
class Boxes(ModelStage):
    name = "boxes"
    tflops = 0.5  # Grounding DINO Swin-T at 800 px
    cpu_seconds = 0.05
    boxes: BoxesSection = field(default_factory=BoxesSection)
    # the detector's thresholds only: the box filters' bounds share the section but not this stage's output
    depends_on = ("boxes.box_threshold", "boxes.text_threshold")

    def output(self, sample: Sample) -> dict:
        # float32 box coordinates and the float logits round-trip exactly through JSON's shortest repr
        return {"detections": [[d.noun, d.start, d.end, [float(x) for x in d.box], d.logit]
                               for d in sample.detections]}

    def apply(self, sample: Sample, record: dict) -> None:
        sample.detections = [Detection(noun, start, end, np.array(box, np.float32), logit)
                             for noun, start, end, box, logit in record["value"]["detections"]]

    def load(self) -> None:
        from lambda_eclipse.models.grounding_dino import load_grounding_dino  # heavy imports in the actor only

        self.detector = load_grounding_dino(self.profile, self.models, self.device, self.dtype)

    def process(self, samples: list[Sample]) -> None:
        for i in range(0, len(samples), self.batch_size):
            self._detect(samples[i : i + self.batch_size])

    def pixels(self, batch: list[Sample]):
        """GroundingDinoImageProcessor's resize (bilinear, shortest/longest edge), rescale, normalisation and batch
        padding with its pixel mask, in torch on the model's device from each sample's image
        (lambda_eclipse.models.pixels)."""
        from transformers.image_transforms import get_size_with_aspect_ratio

        from lambda_eclipse.models.pixels import normalised, padded_batch, resized_pixels

        ip = self.detector.processor.image_processor
        images = []
        for sample in batch:
            image = required(sample.image, "sample.image")
            shortest, longest = ip.size["shortest_edge"], ip.size["longest_edge"]
            height, width = get_size_with_aspect_ratio(image.shape[:2], shortest, longest)
            pixels = resized_pixels(image, self.device, height, width, "bilinear")
            images.append(normalised(pixels, ip.rescale_factor, ip.image_mean, ip.image_std))
        return padded_batch(images)

    def _detect(self, batch: list[Sample]) -> None:
        import torch

        processor = self.detector.processor
        inputs = dict(processor.tokenizer([prompt(s) for s in batch], padding=True, return_tensors="pt"))
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"], inputs["pixel_mask"] = self.pixels(batch)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        # Autocast covers the float32 tensors the model creates internally when its weights are bfloat16.
        with torch.inference_mode(), torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            outputs = self.detector.model(**inputs)
        probs = outputs.logits.float().sigmoid().cpu()  # (batch, queries, max_text_len)
        pred_boxes = outputs.pred_boxes.float().cpu().numpy()  # (batch, queries, 4) cx, cy, w, h in [0, 1]
        input_ids = inputs["input_ids"].cpu().tolist()
        for b, sample in enumerate(batch):
            noun_ids = [processor.tokenizer(n.text.lower(), add_special_tokens=False).input_ids for n in sample.nouns]
            positions = noun_token_positions(input_ids[b], noun_ids)
            sample.detections = self._detections(sample, probs[b], pred_boxes[b], positions)
            if not sample.detections:
                sample.reject_at(self.name, "no boxes detected")

    def _detections(
        self, sample: Sample, probs: torch.Tensor, pred_boxes: np.ndarray, positions: list[list[int]]
    ) -> list[Detection]:
        import torch

        if not sample.nouns:
            return []
        # (queries, nouns): a noun's score is its best token's; 0 for a noun missing from the prompt.
        missing = probs.new_zeros(len(probs))
        scores = torch.stack([probs[:, pos].max(dim=1).values if pos else missing for pos in positions], dim=1)
        best_score, best = scores.max(dim=1)
        height, width = required(sample.image, "sample.image").shape[:2]
        size = np.array([width, height, width, height], np.float32)
        detections = []
        for query, (score, noun_index) in enumerate(zip(best_score.tolist(), best.tolist())):
            # Only noun tokens are scored, so the query's box score (its best token) and its label's score (its
            # best noun) are the same number, held against both thresholds.
            if score <= self.boxes.box_threshold or score <= self.boxes.text_threshold:
                continue
            noun = sample.nouns[noun_index]
            cx, cy, w, h = pred_boxes[query]
            box = np.clip(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32) * size, 0, size)
            detections.append(Detection(noun.text, noun.start, noun.end, box, score))
        return sorted(detections, key=lambda d: d.logit, reverse=True)
