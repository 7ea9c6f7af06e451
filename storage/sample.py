"""The record that flows through the build-dataset stages.

A stage never drops a sample: it rejects it with a stage name and a reason, and later stages pass rejected
samples through untouched. So accepted + rejected = inputs always holds, and the writer sees every input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from storage.fs import read_bytes


@dataclass
class SourceRef:
    """Where a sample's encoded bytes live: a whole file (size -1) or a byte range in a tar. `path` is a local path
    or an fsspec URL: a string that the Ray worker decoding the sample resolves itself."""

    path: str
    offset: int = 0
    size: int = -1

    def read(self) -> bytes:
        return read_bytes(self.path, self.offset, None if self.size < 0 else self.offset + self.size)


@dataclass
class Reject:
    stage: str
    reason: str


@dataclass
class Noun:
    text: str
    start: int  # character span in the caption, end exclusive
    end: int


@dataclass
class Detection:
    """A Grounding DINO box for one of the caption's nouns; a subject once it survives the filters."""

    noun: str
    start: int  # the noun's character span in the caption
    end: int
    box: np.ndarray  # (4,) float32 x0, y0, x1, y1 in pixels of `Sample.image` (the shard stores photo pixels)
    logit: float
    mask: np.ndarray | None = None  # (h, w) bool, at the resolution of `Sample.image`
    mask_ratio: float | None = None  # mask pixels inside the box / box area
    token_positions: list[int] = field(default_factory=list)  # CLIP token indices of the noun
    crop: np.ndarray | None = None  # (S, S, 3) uint8, mask on white, padded square
    embedding: np.ndarray | None = None  # (d,) float32 CLIP image embedding of the crop


@dataclass
class Sample:
    key: str
    source: str  # human-readable origin: a file path, or "archive.tar#member"
    ref: SourceRef
    source_caption: str | None = None  # the input's own caption (.txt/.json), kept as metadata
    data: bytes | None = None  # encoded bytes already read (a tar member streamed on the worker); else ref.read()
    # The photo's size (EXIF orientation applied), from its header: what the resolution filter checks and the
    # frame of the boxes the shard stores. 0: unknown, the image's own size.
    width: int = 0
    height: int = 0
    # (h, w, 3) uint8 RGB, EXIF orientation applied, decoded at the working resolution (tasks/decode.py: no larger
    # than the models and crops use), so h ≤ height and w ≤ width
    image: np.ndarray | None = None
    jpeg: bytes | None = None  # what the shard's <key>.jpg holds: the original bytes, or one re-encode
    reencoded: str | None = None  # why the photo was re-encoded (None: `jpeg` is the input's own bytes)
    caption: str | None = None
    nouns: list[Noun] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    subjects: list[Detection] = field(default_factory=list)  # highest logit first
    # subjects a stage removed from an accepted sample, each {"noun", "span", "stage", "reason"}
    dropped_subjects: list[dict] = field(default_factory=list)
    edge: np.ndarray | None = None  # (h, w, 3) uint8 Canny edge map as RGB, shorter side edge.size
    features: dict[str, np.ndarray] = field(default_factory=dict)
    reject: Reject | None = None
    thumbnail: bytes | None = None  # a small JPEG of a rejected photo, for the rejects gallery (storage/thumbnail.py)
    seconds: dict[str, float] = field(default_factory=dict)  # time spent per stage, this sample's share
    copy_of: str | None = None  # the input this one copies, decided before the build (tasks/copies.py), and how
    content: str | None = None  # hash of the input's bytes (tasks/decode.py): what its kept model outputs are keyed by
    # per model stage it reached: {"reject": reason or None, "value": the stage's output, "reused": bool}
    # (tasks/base.py), written beside the shard (storage/kept.py)
    kept: dict[str, dict] = field(default_factory=dict)

    def reject_at(self, stage: str, reason: str) -> None:
        """Reject, and drop the pixels at once: a rejected sample travels on as a few hundred bytes (a few KB more for
        the few that get a thumbnail once the stage has run, tasks/base.py)."""
        self.reject = Reject(stage, reason)
        self.data = self.image = self.edge = self.jpeg = None
        self.detections, self.subjects, self.features = [], [], {}

    def read(self) -> bytes:
        return self.data if self.data is not None else self.ref.read()

    def photo_size(self) -> tuple[int, int]:
        """(width, height) of the photo the shard stores: the header's, else the image's own."""
        if self.width and self.height:
            return self.width, self.height
        image = self.image
        if image is None:
            raise ValueError(f"sample {self.key}: no size known (not decoded)")
        return image.shape[1], image.shape[0]

    def box_scale(self) -> tuple[float, float]:
        """Photo pixels per pixel of `image` (x, y): boxes are found on the image and stored in photo pixels."""
        width, height = self.photo_size()
        image = self.image
        if image is None:
            return 1.0, 1.0
        return width / image.shape[1], height / image.shape[0]

    @property
    def accepted(self) -> bool:
        return self.reject is None
