"""Decode: encoded bytes → the photo's size (from its header), the bytes the shard keeps as `<key>.jpg`, and a
(h, w, 3) uint8 RGB image at the working resolution; bad input is rejected, never raised.

The pipeline decodes once, at the resolution it needs. The resolution filter needs only the header's size, so a photo
it will reject is never decoded. The models and crops get an image no larger than they use: SAM works at 1024 px on
the long side, Grounding DINO at 800 on the short one (at most 1333 on the long), the Canny map at `edge.size` on the
short side, CLIP and the subject crops at 224; `working_size` is the smallest size that gives each of them at least
that. A JPEG is decoded there directly by the DCT-domain downscaling of libjpeg (PIL's `draft`: a 2048² photo decodes
at 1024² in about a quarter of the time), then area-resized to the exact working size when the draft's 1/2, 1/4, 1/8
steps do not land on it. Where the stage's process sees a GPU with torchvision's nvJPEG decoder (`jpeg_device`), the
batch's RGB JPEGs are decoded there in one call and area-resized on the GPU (`decode_jpegs_on_device`); everything
else, and everything on a machine without one, takes the CPU path.

The shard keeps the photo's own bytes (no second JPEG generation, no quality loss, no encode) when they already are
an RGB JPEG as displayed; a photo that needs a transform to be one (another format, EXIF rotation, CMYK, grayscale,
16-bit, palette, transparency) is decoded at full size once more and encoded once, at JPEG quality 95 without chroma
subsampling, and the reason is recorded (`Sample.reencoded`, the sample JSON's `jpeg`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lambda_eclipse.required import required
from storage.sample import Sample
from tasks.base import Stage
from tasks.config import DecodeSection, EdgeSection, ResolutionSection, RuntimeSection

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# What the models use (the paper's models' input sizes; the same for every profile, so that a tiny build stores what
# a paper build would): SAM's longest side, Grounding DINO's shortest and longest side.
SAM_LONG_SIDE = 1024
DINO_SHORT_SIDE, DINO_LONG_SIDE = 800, 1333
JPEG_QUALITY = 95  # the one re-encode of a photo that is not an RGB JPEG as displayed; 4:4:4 (no chroma subsampling)
ORIENTATION = 0x0112  # EXIF tag
_JPEG = ("JPEG", "MPO")  # MPO: a camera's multi-picture JPEG, whose first image is a plain JPEG stream
_DRAFT_SCALES = (8, 4, 2)


def content_hash(data: bytes) -> str:
    """The input's identity for its kept model outputs: the same bytes under another name or in another unit reuse
    them, changed bytes under the same name do not (128 bits of sha256: ~1 ms per MB)."""
    return hashlib.sha256(data).hexdigest()[:32]


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


def working_size(width: int, height: int, edge_size: int) -> tuple[int, int]:
    """(width, height) of the image the stages get for a photo of width × height: the smallest that gives SAM its
    long side, Grounding DINO its sides and the Canny map `edge_size` on the short side (CLIP and the 224 px crops
    need less), aspect ratio kept, never larger than the photo. `edge_size` 0 (Canny at the photo's own resolution)
    keeps the photo's size."""
    if edge_size == 0:
        return width, height
    short, long = min(width, height), max(width, height)
    scale = max(SAM_LONG_SIDE / long, min(DINO_SHORT_SIDE / short, DINO_LONG_SIDE / long), edge_size / short)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass
class Photo:
    width: int  # the photo's size, EXIF orientation applied
    height: int
    image: np.ndarray | None  # at the working resolution; None when the photo was not decoded (too small)
    jpeg: bytes | None  # what the shard stores as <key>.jpg
    reencoded: str | None  # why `jpeg` is not the input's own bytes
    pending: tuple[int, int] | None = None  # an RGB JPEG left to the GPU decoder, at this (width, height)


def _open(data: bytes) -> Image.Image:
    if not data:
        raise BadImage("empty file")
    with warnings.catch_warnings():
        # The size check against decode.max_pixels is the guard; PIL's warning fires at its own,
        # different limit (Image.MAX_IMAGE_PIXELS) and must not decide.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(f"decompression bomb: {width}×{height} pixels exceeds decode.max_pixels={max_pixels}")


@contextlib.contextmanager
def _decoding():
    """Every failure of PIL on damaged data as a BadImage with its reason."""
    try:
        yield
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


def decode_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """The whole photo at full size, EXIF orientation applied (generate's subject images, benchmarks)."""
    with _decoding():
        image = _open(data)
        _check_pixels(image, max_pixels)
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


def reencode_reason(image: Image.Image) -> str | None:
    """Why the photo's bytes cannot be stored as they are as an RGB JPEG of the image as displayed; None if they
    can."""
    if image.format not in _JPEG:
        return f"{image.format or 'unknown format'} is not JPEG"
    orientation = image.getexif().get(ORIENTATION, 1)
    if orientation not in (0, 1):
        return f"EXIF orientation {orientation}"
    if image.mode != "RGB":
        return f"{image.mode} JPEG"
    return None


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: EXIF orientations 5–8 turn the photo by 90°."""
    width, height = image.size
    if image.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):
        return height, width
    return width, height


def encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)  # area averaging: no aliasing


def _draft_scale(width: int, height: int, target: tuple[int, int]) -> int:
    """The largest DCT-domain reduction (1/8, 1/4, 1/2) that keeps the decoded JPEG at least `target`."""
    for s in _DRAFT_SCALES:
        if -(-width // s) >= target[0] and -(-height // s) >= target[1]:
            return s
    return 1


def small_photo(data: bytes, max_pixels: int, side: int = 64) -> tuple[np.ndarray, int, int]:
    """A small RGB image of the photo (a JPEG scaled in the DCT domain to about `side` px on its shorter side; other
    formats decoded whole), EXIF orientation applied, and the photo's (width, height); BadImage where it does not
    decode. What the duplicates pass hashes (tasks/copies.py)."""
    with _decoding():
        image = _open(data)
        _check_pixels(image, max_pixels)
        width, height = oriented_size(image)
        image.draft("RGB", (side, side))  # draft keeps at least the requested size
        image.load()
        return to_rgb(ImageOps.exif_transpose(image)), width, height


def decode_photo(data: bytes, max_pixels: int, min_side: int = 0, edge_size: int = EdgeSection.size,
                 defer_jpeg: bool = False) -> Photo:
    """The photo's size from its header; below `min_side` (the resolution filter will reject it) nothing more.
    Otherwise the image at `working_size` and the bytes the shard keeps (module docstring); with `defer_jpeg`, an
    RGB JPEG kept as it is is not decoded here but left `pending` for `decode_jpegs_on_device`."""
    with _decoding():
        return _decode_photo(data, max_pixels, min_side, edge_size, defer_jpeg)


def _decode_photo(data: bytes, max_pixels: int, min_side: int, edge_size: int, defer_jpeg: bool) -> Photo:
    image = _open(data)
    _check_pixels(image, max_pixels)
    width, height = oriented_size(image)
    if min(width, height) < min_side:
        return Photo(width, height, None, None, None)
    target = working_size(width, height, edge_size)
    reason = reencode_reason(image)
    if reason is None and defer_jpeg:
        return Photo(width, height, None, data, None, pending=target)
    if reason is None:
        scale = _draft_scale(width, height, target)
        if scale > 1:
            # draft picks the largest reduction s with size // request >= s: request size // s
            image.draft("RGB", (width // scale, height // scale))
        image.load()
        rgb = np.array(image)  # np.array, not asarray: the image must be writable, as it is after a Ray hop
        return Photo(width, height, _resize(rgb, *target), data, None)
    image.load()
    full = to_rgb(ImageOps.exif_transpose(image))
    return Photo(width, height, _resize(full, *target), encode_jpeg(full), reason)


@functools.cache
def jpeg_device() -> Any:
    """The CUDA device where this process can decode JPEGs (torchvision's nvJPEG decoder, checked on a small JPEG),
    or None: then every photo is decoded on the CPU. A unit task that Ray gives no GPU sees none."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        from lambda_eclipse.compat import ensure_torchvision_ops

        ensure_torchvision_ops()  # before torchvision is imported (docs/pitfalls.md, "Environment and pins")
        from torchvision.io import decode_jpeg

        probe = torch.frombuffer(bytearray(encode_jpeg(np.zeros((16, 16, 3), np.uint8))), dtype=torch.uint8)
        decode_jpeg([probe], device="cuda")
        return torch.device("cuda")
    except Exception:  # noqa: BLE001 - no usable GPU decoder, for whatever reason: the CPU path decodes
        return None


def decode_jpegs_on_device(datas: list[bytes], sizes: list[tuple[int, int]], device: Any) -> list[np.ndarray]:
    """RGB JPEGs decoded in one batched call on `device` (nvJPEG), each area-resized there to its (width, height) and
    returned as (h, w, 3) uint8 arrays; raises on damaged data (the caller then decodes one by one on the CPU)."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    out = []
    for image, (width, height) in zip(decoded, sizes, strict=True):
        x = image[None]
        if tuple(x.shape[-2:]) != (height, width):
            x = F.interpolate(x.float(), size=(height, width), mode="area").round().clamp(0, 255).to(torch.uint8)
        out.append(x[0].permute(1, 2, 0).contiguous().cpu().numpy())
    return out


@dataclass
class Decode(Stage):
    name = "decode"
    uses_model = False
    decode: DecodeSection = field(default_factory=DecodeSection)
    # read for the sizes only: a photo the resolution filter rejects is not decoded; the working size
    resolution: ResolutionSection = field(default_factory=ResolutionSection)
    edge: EdgeSection = field(default_factory=EdgeSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)  # runtime.device=cpu keeps decoding off the GPU

    def process(self, samples: list[Sample]) -> None:
        device = jpeg_device() if self.runtime.device != "cpu" else None
        pending: list[Sample] = []
        for sample in samples:
            try:
                data = sample.read()
            except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
                # an input deleted since planning, or one that cannot be read as a file: the input's fault. Any other
                # error (storage throttling, a dropped connection, after storage/fs.py's retries) fails the unit,
                # which is tried again: it is no property of the photo and must not become a reject.
                sample.reject_at(self.name, f"unreadable file: {exc}")
                continue
            sample.data = None  # the decoded pixels (and `jpeg`, what the shard keeps) replace the encoded bytes
            sample.content = content_hash(data)
            try:
                photo = decode_photo(data, self.decode.max_pixels, self.resolution.min_side, self.edge.size,
                                     defer_jpeg=device is not None)
            except BadImage as exc:
                sample.reject_at(self.name, str(exc))
                continue
            sample.width, sample.height = photo.width, photo.height
            sample.image, sample.jpeg, sample.reencoded = photo.image, photo.jpeg, photo.reencoded
            if photo.image is None and photo.pending is None:
                sample.data = data  # below resolution.min_side: the filter's reject thumbnails these bytes
            if photo.pending is not None:
                pending.append(sample)
        if pending:
            self._decode_on_device(pending, device)

    def _decode_on_device(self, samples: list[Sample], device: Any) -> None:
        """The batch's RGB JPEGs in one call on the GPU; on any failure (a damaged file among them) each on the CPU,
        which rejects what cannot be decoded."""
        datas = [required(s.jpeg, "sample.jpeg") for s in samples]
        sizes = [working_size(s.width, s.height, self.edge.size) for s in samples]
        try:
            images = decode_jpegs_on_device(datas, sizes, device)
        except Exception:  # noqa: BLE001 - nvJPEG's errors do not say which file: decode them one by one
            images = None
        for i, sample in enumerate(samples):
            if images is not None:
                sample.image = images[i]
                continue
            try:
                sample.image = decode_photo(datas[i], self.decode.max_pixels, 0, self.edge.size).image
            except BadImage as exc:
                sample.reject_at(self.name, str(exc))
