"""Subject images → the crops the CLIP image encoder embeds, prepared as the training crops were (tasks/crops.py).

A subject image is used in one of three ways, each ending in the training crop (subject on white, cropped to its box,
padded to a white square, 224 px):
- with a mask (`word=image:mask`, white = subject): the mask's pixels on white;
- segmented (`--segment`): Grounding DINO finds the word in the image, SAM masks its best box (paper §4: "target
  subject pixel regions in reference images are segmented before embedding extraction"); when nothing is found the
  image is used as given, and the metadata says so;
- as given (a cut-out the user already whitened, or any photo): the whole image, padded to a square so that CLIP's
  centre crop cuts nothing off. Transparent pixels become white (tasks/decode.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import UserError
from lambda_eclipse.profile import Profile
from storage.sample import Detection, Noun, Sample, SourceRef
from tasks.config import DecodeSection, RuntimeSection, SubjectsSection
from tasks.crops import subject_crop
from tasks.decode import BadImage, decode_rgb

CROP_SIZE = SubjectsSection().crop_size
NO_BOX = "as given (segmentation found no box)"  # how a subject was embedded when segmentation found nothing


@dataclass(frozen=True)
class SubjectSpec:
    word: str  # the subject's word (or words) in the prompt
    image: str
    mask: str | None = None  # white = subject


def parse_subject(text: str) -> SubjectSpec:
    """`WORD=IMAGE` or `WORD=IMAGE:MASK` (the last ':' separates the mask)."""
    word, sep, paths = text.partition("=")
    if not sep or not word.strip() or not paths:
        raise UserError(f"--subject {text!r}: expected WORD=IMAGE or WORD=IMAGE:MASK, for example dog=photos/dog.jpg")
    image, colon, mask = paths.rpartition(":")
    if not colon:
        image, mask = paths, ""
    if not image:
        raise UserError(f"--subject {text!r}: the image path is empty")
    return SubjectSpec(word.strip(), image, mask or None)


def read_image(path: str | Path, what: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, or a UserError naming `what` and the reason."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what}: image {path} does not exist")
    try:
        return decode_rgb(path.read_bytes(), DecodeSection().max_pixels)
    except BadImage as exc:
        raise UserError(f"{what}: cannot read image {path}: {exc}") from None
    except OSError as exc:
        raise UserError(f"{what}: cannot read image {path}: {exc.strerror}") from None


def read_mask(path: str | Path, shape: tuple[int, int], what: str) -> np.ndarray:
    """(H, W) bool, white (> 127 in grey) = subject; it must match the image's size and select something."""
    rgb = read_image(path, f"{what} mask")
    mask = np.asarray(Image.fromarray(rgb).convert("L")) > 127
    if mask.shape != shape:
        raise UserError(f"{what}: mask {path} is {mask.shape[1]}×{mask.shape[0]} px but the image is "
                        f"{shape[1]}×{shape[0]} px; they must be the same size")
    if not mask.any():
        raise UserError(f"{what}: mask {path} has no white pixels; white marks the subject")
    return mask


def mask_crop(image: np.ndarray, mask: np.ndarray, word: str = "", size: int = CROP_SIZE) -> np.ndarray:
    """The training crop of the masked subject: mask on white, cropped to the mask's box, padded square, `size` px
    (the prior's training crops': generate/prior_checkpoint.py's crop_size)."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    return subject_crop(image, Detection(word, 0, len(word), box, 1.0, mask=mask), size)


def as_given(image: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    return mask_crop(image, np.ones(image.shape[:2], bool), size=size)


class Segmenter:
    """The subject word's best Grounding DINO box in the image, masked by SAM: the build's own stages."""

    def __init__(self, profile: str, models: ModelsSection, device_type: str):
        from tasks.boxes import Boxes
        from tasks.masks import Masks

        # The stages' defaults: box and text thresholds 0.2 (Appendix B), bfloat16 on cuda, float32 on cpu.
        runtime = RuntimeSection(device=device_type)
        self.boxes = Boxes(profile=profile, models=models, runtime=runtime)
        self.masks = Masks(profile=profile, models=models, runtime=runtime)
        self.boxes.setup()
        self.masks.setup()
        self.model_ids = {"grounding_dino": self.boxes.detector.model_id,
                          "sam": models.sam_checkpoint if Profile.parse(profile).pretrained
                          else f"SAM {profile} (random weights)"}

    def mask(self, image: np.ndarray, word: str) -> np.ndarray | None:
        """The mask of the highest-scoring box for `word`, or None when no box passes the thresholds."""
        sample = Sample(key=word, source=word, ref=SourceRef(""), image=image, caption=word,
                        nouns=[Noun(word, 0, len(word))])
        self.boxes.process([sample])
        if not sample.accepted:
            return None
        sample.detections = sample.detections[:1]  # sorted by logit: the best box only
        self.masks.process([sample])
        mask = sample.detections[0].mask
        return mask if mask is not None and mask.any() else None
