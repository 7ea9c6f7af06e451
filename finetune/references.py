"""Reference photos → z_x, once per photo: segmented as evaluate segments them (generate/subjects.py's Segmenter:
Grounding DINO finds the subject word, SAM masks its best box; the subject on white, cropped, padded square, 224 px, as
the training crops were), then embedded by the profile's CLIP image tower (unnormalised, what Kandinsky 2.2 takes as
`image_embeds`). A photo where Grounding DINO finds no box is embedded whole, and says so.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from finetune.subjects import Subject
from generate.config import GenerateModelsSection
from generate.subjects import Segmenter, as_given, mask_crop, read_image
from lambda_eclipse.device import torch_dtype
from lambda_eclipse.models.clip import load_clip
from storage.layout import sha256_file

SEGMENTED, WHOLE, NO_BOX = "segmented", "whole photo", "whole photo (segmentation found no box)"


@dataclass
class Reference:
    subject: str
    path: str
    sha256: str
    image: np.ndarray  # (H, W, 3) uint8: the photo the UNet is trained to reproduce
    crop: np.ndarray  # what was embedded
    embedding: np.ndarray  # (d,) float32 z_x
    how: str  # SEGMENTED, WHOLE or NO_BOX

    def record(self) -> dict:
        return {"subject": self.subject, "path": self.path, "sha256": self.sha256, "embedded": self.how}


def embed_references(subjects: list[Subject], profile: str, models: GenerateModelsSection, device: torch.device,
                     segment: bool) -> tuple[list[Reference], dict[str, str]]:
    """Every photo of every subject with its z_x, and the ids of the models that made them. The CLIP (fp16 on a GPU,
    as the released inference runs it; fp32 on the CPU) and the segmentation models are freed before returning."""
    clip = load_clip(profile, models.build_models(), device, torch_dtype("auto", device.type, "embeddings"))
    segmenter = Segmenter(profile, models.build_models(), device.type) if segment else None
    references = []
    for subject in subjects:
        for path in subject.photos:
            image = read_image(path, f"subject {subject.name}")
            mask = segmenter.mask(image, subject.word) if segmenter else None
            if mask is not None:
                crop, how = mask_crop(image, mask, subject.word), SEGMENTED
            else:
                crop, how = as_given(image), NO_BOX if segmenter else WHOLE
            references.append(Reference(subject.name, path, sha256_file(path), image, crop,
                                        clip.encode_images([crop])[0], how))
    ids = {"clip": clip.model_id} | (segmenter.model_ids if segmenter else {})
    del clip, segmenter
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return references, ids


def write_crops(references: list[Reference], folder: Path) -> None:
    """What was embedded, for inspection: folder/<subject>/<photo stem>.png."""
    for ref in references:
        target = folder / ref.subject / f"{Path(ref.path).stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ref.crop).save(target)
