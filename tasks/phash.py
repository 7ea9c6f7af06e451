"""A 64-bit perceptual hash (pHash) of an image, and Hamming distances between hashes.

The image is reduced to 32×32 grey (area averaging, so JPEG noise and resizing average out) and transformed by a 2-D
DCT; each of the 8×8 lowest frequencies but the DC term gives one bit: above or below the median of its group. A
horizontal flip leaves the coefficients of even horizontal frequency as they are and negates the odd ones, so the
even ones are compared signed and the odd ones by magnitude: a photo and its mirror image hash alike. Resized and
re-compressed copies land within a few bits; different photos differ in a third to half of them
(docs/build-dataset.md, "Duplicates", has the measurement behind the default distance).
"""

from __future__ import annotations

import cv2
import numpy as np

BITS = 64


def phash(image: np.ndarray) -> int:
    """The pHash of an (h, w, 3) uint8 RGB or (h, w) grey image, as an unsigned 64-bit int."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8]
    even = low[:, 0::2].reshape(-1)[1:]  # the DC term is the mean brightness: no shape in it
    odd = np.abs(low[:, 1::2]).reshape(-1)
    bits = np.concatenate([[False], even > np.median(even), odd > np.median(odd)])  # 63 bits, the top one fixed
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def hamming_many(one: int, many: np.ndarray) -> np.ndarray:
    """Distances from `one` to each of `many` (uint64)."""
    x = np.bitwise_xor(np.uint64(one), many.astype(np.uint64))
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
