"""Small JPEG thumbnails of rejected photos, for the rejects gallery of a build's summary.

They are made on the workers, where the pixels are, when a stage rejects a photo (tasks/base.py), at most
`PER_STAGE` per stage in each batch and kept at most `PER_STAGE` per stage in each shard (storage/shard_writer.py),
so that a build of 100M photos pays for a few thousand of them, not for every reject.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps

SIDE = 96  # the thumbnail's longer side, in pixels: ~2–4 KB as JPEG
QUALITY = 75
PER_STAGE = 4


def encode_thumbnail(image: np.ndarray) -> bytes:
    """(h, w, 3) uint8 RGB → a JPEG no larger than SIDE on its longer side."""
    h, w = image.shape[:2]
    scale = min(1.0, SIDE / max(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=QUALITY)
    return buf.getvalue()


def thumbnail_of(image: np.ndarray | None, encoded: bytes | None) -> bytes | None:
    """The thumbnail of a rejected photo from its decoded pixels, else from its encoded bytes (a photo the
    resolution filter rejects is never decoded: libjpeg's draft mode decodes it at 1/8 scale here); None when
    neither gives an image (the reject's reason then stands alone)."""
    if image is not None:
        return encode_thumbnail(image)
    if not encoded:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged or huge file: no thumbnail, never a warning per photo
            photo = Image.open(io.BytesIO(encoded))
            photo.draft("RGB", (SIDE, SIDE))
            return encode_thumbnail(np.asarray(ImageOps.exif_transpose(photo).convert("RGB")))
    except Exception:  # noqa: BLE001 - the reject is recorded either way; a thumbnail is only an illustration
        return None
