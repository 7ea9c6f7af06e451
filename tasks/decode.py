"""Decode: encoded bytes → (H, W, 3) uint8 RGB with EXIF orientation applied; bad input is rejected, never raised."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from storage.sample import Sample
from tasks.base import Stage
from tasks.config import DecodeConfig

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadImage(Exception):
    """The reason an input cannot be decoded; the stage turns it into a reject."""


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode → (H, W, 3) uint8 RGB: transparency over white, 16-bit scaled to 8 bit, floats from [0, 1].

    np.array, not np.asarray: PIL's buffer is read-only, and the image must be writable in a local run just as
    it is after a Ray hop.
    """
    if image.mode in _SIXTEEN_BIT:
        # PIL's own conversion clips 16-bit values at 255, which turns most of the image white. PIL has long
        # opened 16-bit PNGs and TIFFs as mode I (32-bit), so its range is taken as 0..65535 too.
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) * (255 / 65535)
    elif image.mode == "F":
        # Floating-point images store intensities in [0, 1]; PIL would read them as 0..255 and go black.
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 255
    elif image.has_transparency_data:
        # The paper's crops and filters treat white as background, so transparency becomes white.
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, image.convert("RGBA")).convert("RGB"))
    else:
        return np.array(image.convert("RGB"))
    gray = np.rint(values).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def decode_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            # The size check below against decode.max_pixels is the guard; PIL's warning fires at its own,
            # different limit (Image.MAX_IMAGE_PIXELS) and must not decide.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise BadImage(f"decompression bomb: {width}×{height} pixels exceeds decode.max_pixels={max_pixels}")
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        # PIL refuses above 2 × Image.MAX_IMAGE_PIXELS while reading the header, before our check runs.
        raise BadImage(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (cannot identify the image format)") from None
    except Exception as exc:  # noqa: BLE001 - damaged data raises many types; one bad input must not stop a unit
        # PIL's decoders raise many types for damaged data (OSError "image file is truncated", SyntaxError,
        # ValueError, struct.error, ...); one bad input must not stop a work unit of thousands.
        raise BadImage(f"cannot decode image: {exc}") from None


@dataclass
class Decode(Stage):
    name = "decode"
    uses_model = False
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def process(self, samples: list[Sample]) -> None:
        for sample in samples:
            try:
                data = sample.read()
            except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
                # an input deleted since planning, or one that cannot be read as a file: the input's fault. Any other
                # error (storage throttling, a dropped connection, after storage/fs.py's retries) fails the unit,
                # which is tried again: it is no property of the photo and must not become a reject.
                sample.reject_at(self.name, f"unreadable file: {exc}")
                continue
            sample.data = None  # the decoded pixels replace the encoded bytes
            try:
                sample.image = decode_rgb(data, self.decode.max_pixels)
            except BadImage as exc:
                sample.reject_at(self.name, str(exc))
