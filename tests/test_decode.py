import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from storage.sample import Reject, Sample, SourceRef
from tasks.config import BuildConfig
from tasks.decode import Decode
from tasks.resolution import ResolutionFilter


def decode(path, cfg=None, **ref):
    """Decode alone; by default with resolution.min_side=1, so that small test images are decoded (the stage does not
    decode a photo that the resolution filter will reject)."""
    if cfg is None:
        cfg = BuildConfig()
        cfg.resolution.min_side = 1
    sample = Sample(key="k", source="s", ref=SourceRef(str(path), **ref))
    Decode.create(cfg)([sample])
    return sample


def rejected(sample: Sample) -> Reject:
    assert sample.reject is not None
    return sample.reject


def write(tmp_path, name, image, **save):
    path = tmp_path / name
    image.save(path, **save)
    return path


def png_header(width, height):
    """A PNG that claims a size but holds a few bytes of pixel data: nothing big is ever allocated."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def jpeg_bytes(image, **save):
    buf = io.BytesIO()
    image.save(buf, "JPEG", **save)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"a caption, not an image\n", "not an image (cannot identify the image format)"),
        (np.random.default_rng(0).bytes(4096), "not an image (cannot identify the image format)"),
    ],
    ids=["zero-byte", "text", "random-bytes"],
)
def test_non_images_are_rejected_with_the_reason(tmp_path, data, reason):
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    sample = decode(path)
    assert sample.reject == Reject("decode", reason)
    assert sample.image is None


def test_truncated_jpeg_is_rejected(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = jpeg_bytes(Image.fromarray(noise))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    reject = rejected(decode(path))
    assert reject.stage == "decode"
    assert reject.reason.startswith("cannot decode image: image file is truncated")


def test_unreadable_file_is_rejected(tmp_path):
    reject = rejected(decode(tmp_path / "missing.jpg"))
    assert reject.stage == "decode" and reject.reason.startswith("unreadable file:")


def test_one_pixel_png_decodes_and_resolution_rejects_it(tmp_path):
    sample = decode(write(tmp_path, "one.png", Image.new("RGB", (1, 1), (10, 20, 30))))
    assert sample.accepted and sample.image is not None
    assert sample.image.shape == (1, 1, 3) and sample.image.dtype == np.uint8
    assert sample.image.flags.writeable
    assert sample.image[0, 0].tolist() == [10, 20, 30]
    ResolutionFilter.create(BuildConfig())([sample])
    assert rejected(sample).stage == "resolution"


def test_decompression_bomb_is_rejected_from_the_header(tmp_path):
    # Above 2 × PIL's MAX_IMAGE_PIXELS, PIL itself refuses while reading the header.
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(50_000, 50_000))
    assert rejected(decode(huge)).reason.startswith("decompression bomb:")

    # Above decode.max_pixels (100 M) but below PIL's refusal: our check, before any pixel is decoded.
    # PIL's DecompressionBombWarning (at its own 89 M limit) must neither escape nor decide.
    big = tmp_path / "big.png"
    big.write_bytes(png_header(12_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample = decode(big)
    reason = "decompression bomb: 12000×10000 pixels exceeds decode.max_pixels=100000000"
    assert sample.reject == Reject("decode", reason)


def test_max_pixels_comes_from_the_config(tmp_path):
    path = write(tmp_path, "a.png", Image.new("RGB", (40, 25)))
    cfg = BuildConfig()
    cfg.decode.max_pixels = 999
    assert rejected(decode(path, cfg)).reason == "decompression bomb: 40×25 pixels exceeds decode.max_pixels=999"
    cfg.decode.max_pixels = 1000  # exactly 40 × 25: allowed
    assert decode(path, cfg).accepted


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    sample = decode(write(tmp_path, "c.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95))
    assert sample.image is not None
    assert sample.image.shape == (16, 16, 3)
    assert np.abs(sample.image.astype(int) - [255, 0, 0]).max() <= 3


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    sample = decode(write(tmp_path, "g.png", Image.fromarray(gray)))
    assert sample.image is not None
    assert (sample.image == gray[:, :, None]).all()


def test_bilevel_becomes_black_and_white(tmp_path):
    bits = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    sample = decode(write(tmp_path, "b.png", bits))
    assert sample.image is not None
    assert sample.image[:, :, 0].tolist() == [[0, 255], [255, 0]]


def test_palette_transparency_becomes_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    sample = decode(write(tmp_path, "p.png", image, transparency=0))
    assert sample.image is not None
    assert sample.image[0].tolist() == [[255, 255, 255], [200, 10, 20]]


def test_palette_without_transparency(tmp_path):
    image = Image.new("RGB", (2, 1), (30, 60, 90)).quantize(colors=2)
    sample = decode(write(tmp_path, "p.png", image))
    assert sample.image is not None
    assert sample.image[0].tolist() == [[30, 60, 90], [30, 60, 90]]


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.array([[[0, 0, 0, 0], [0, 0, 0, 128], [10, 20, 30, 255]]], np.uint8)
    sample = decode(write(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    assert sample.image is not None
    assert sample.image[0, 0].tolist() == [255, 255, 255]
    assert np.abs(sample.image[0, 1].astype(int) - 127).max() <= 1
    assert sample.image[0, 2].tolist() == [10, 20, 30]
    la = Image.fromarray(np.array([[[100, 0], [100, 255]]], np.uint8), "LA")
    sample = decode(write(tmp_path, "la.png", la))
    assert sample.image is not None
    assert sample.image[0, :, 0].tolist() == [255, 100]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    sample = decode(write(tmp_path, "16.png", Image.fromarray(values)))  # opens as mode I;16
    assert sample.image is not None
    assert sample.image[0, :, 0].tolist() == [0, 100, 255]
    sample = decode(write(tmp_path, "32.tif", Image.fromarray(values.astype(np.int32))))  # mode I
    assert sample.image is not None
    assert sample.image[0, :, 0].tolist() == [0, 100, 255]


def test_float_image_is_read_as_zero_to_one(tmp_path):
    values = np.array([[0.0, 0.5, 1.0, 2.0]], np.float32)
    sample = decode(write(tmp_path, "f.tif", Image.fromarray(values)))
    assert sample.image is not None
    assert sample.image[0, :, 0].tolist() == [0, 128, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    # Stored 32 wide × 16 tall, red top-left quadrant; orientation 6 means "rotate 90° clockwise to view".
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :, 2] = 255
    stored[:8, :16] = [255, 0, 0]
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write(tmp_path, "r.jpg", Image.fromarray(stored), exif=exif.tobytes(), quality=95)
    sample = decode(path)
    assert sample.image is not None
    assert sample.image.shape == (32, 16, 3)
    with Image.open(path) as raw:  # the stored pixels, orientation not applied
        assert (sample.image == np.rot90(np.asarray(raw.convert("RGB")), k=-1)).all()
    assert sample.image[4, 12, 0] > 200 and sample.image[4, 12, 2] < 50  # top-left went to top-right
    assert sample.image[4, 4, 0] < 50 and sample.image[28, 12, 0] < 50


def test_byte_range_inside_a_file(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(buf, "PNG")
    png = buf.getvalue()
    path = tmp_path / "archive.bin"
    path.write_bytes(b"x" * 100 + png + b"y" * 50)
    sample = decode(path, offset=100, size=len(png))
    assert sample.image is not None
    assert sample.accepted and sample.image.shape == (2, 3, 3)
    assert (sample.image == [1, 2, 3]).all()
    assert rejected(decode(path, offset=101, size=len(png))).reason.startswith("not an image")


def test_rejected_sample_is_untouched(tmp_path):
    sample = Sample(key="k", source="s", ref=SourceRef(str(tmp_path / "missing.jpg")))
    sample.reject_at("earlier", "why")
    Decode.create(BuildConfig())([sample])
    assert sample.reject == Reject("earlier", "why") and sample.image is None


# --- decode once, at the working resolution; the bytes the shard keeps (issue 19) ---


def photo_file(tmp_path, name, width, height, seed=0, **save):
    from lambda_eclipse.synthetic import photo

    path = tmp_path / name
    photo(seed, width, height).save(path, **save)
    return path


def test_working_size_gives_each_model_what_it_uses():
    from tasks.decode import working_size

    assert working_size(2048, 2048, 512) == (1024, 1024)  # SAM's long side
    assert working_size(1024, 1024, 512) == (1024, 1024)  # never enlarged
    assert working_size(3000, 2000, 512) == (1200, 800)  # Grounding DINO: 800 on the short side (≤ 1333 long) …
    assert working_size(1024, 4096, 512) == (512, 2048)  # … and Canny's edge.size on the short side
    assert working_size(800, 600, 512) == (800, 600)
    assert working_size(4096, 4096, 0) == (4096, 4096)  # edge.size 0: Canny at the photo's own resolution


def test_a_2048_jpeg_decodes_at_1024_keeps_its_size_and_bytes(tmp_path):
    path = photo_file(tmp_path, "big.jpg", 2048, 2048, quality=90)
    sample = decode(path, BuildConfig())
    assert sample.accepted and sample.image is not None
    assert sample.image.shape == (1024, 1024, 3) and sample.image.flags.writeable
    assert (sample.width, sample.height) == (2048, 2048)
    assert sample.jpeg == path.read_bytes() and sample.reencoded is None  # the original bytes, no second generation
    with Image.open(path) as full:  # the DCT-domain downscale is close to a full decode, area-averaged
        reference = np.asarray(full.convert("RGB").resize((1024, 1024), Image.Resampling.BOX), np.float32)
    assert np.abs(sample.image.astype(np.float32) - reference).mean() < 2.0


def test_a_size_off_the_draft_steps_is_resized_to_the_exact_working_size(tmp_path):
    sample = decode(photo_file(tmp_path, "odd.jpg", 1500, 1200, quality=90), BuildConfig())
    assert sample.image is not None and sample.image.shape == (819, 1024, 3)
    assert (sample.width, sample.height) == (1500, 1200) and sample.reencoded is None


def test_a_photo_the_resolution_filter_rejects_is_not_decoded(tmp_path):
    sample = decode(photo_file(tmp_path, "small.jpg", 900, 1400, quality=90), BuildConfig())
    assert sample.accepted and sample.image is None and (sample.width, sample.height) == (900, 1400)
    ResolutionFilter.create(BuildConfig())([sample])
    assert rejected(sample) == Reject("resolution", "900×1400 px: shorter side 900 < resolution.min_side=1024")


@pytest.mark.parametrize(
    ("mode", "save", "reason"),
    [
        ("RGB", {"format": "PNG"}, "PNG is not JPEG"),
        ("CMYK", {"format": "JPEG", "quality": 90}, "CMYK JPEG"),
        ("L", {"format": "JPEG", "quality": 90}, "L JPEG"),
        ("P", {"format": "PNG"}, "PNG is not JPEG"),
    ],
    ids=["png", "cmyk", "grayscale", "palette"],
)
def test_a_photo_that_is_not_an_rgb_jpeg_is_reencoded_once_with_the_reason(tmp_path, mode, save, reason):
    from lambda_eclipse.synthetic import photo

    path = tmp_path / "p.img"
    photo(1, 1200, 1100).convert(mode).save(path, **save)
    sample = decode(path, BuildConfig())
    assert sample.accepted and sample.reencoded == reason
    assert sample.jpeg is not None and sample.jpeg != path.read_bytes()
    with Image.open(io.BytesIO(sample.jpeg)) as stored:
        assert (stored.format, stored.mode, stored.size) == ("JPEG", "RGB", (1200, 1100))  # full size, RGB
    assert sample.image is not None and sample.image.shape == (939, 1024, 3)  # SAM: 1024 on the long side


def test_exif_rotation_is_applied_to_the_stored_jpeg_and_the_size(tmp_path):
    from lambda_eclipse.synthetic import photo

    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "r.jpg"
    photo(2, 1600, 1200).save(path, quality=90, exif=exif)  # stored 1600 wide, displayed 1200 wide
    sample = decode(path, BuildConfig())
    assert sample.reencoded == "EXIF orientation 6" and (sample.width, sample.height) == (1200, 1600)
    assert sample.image is not None and sample.image.shape == (1067, 800, 3)  # Grounding DINO: 800 on the short side
    assert sample.jpeg is not None
    with Image.open(io.BytesIO(sample.jpeg)) as stored:
        assert stored.size == (1200, 1600) and stored.getexif().get(0x0112, 1) == 1


# --- GPU JPEG decoding (nvJPEG through torchvision), with the CPU path as fallback ---


def test_no_gpu_decoder_here_means_the_cpu_path():
    import torch

    from tasks.decode import jpeg_device

    if not torch.cuda.is_available():
        assert jpeg_device() is None


def _gpu_stand_in(calls):
    """decode_jpegs_on_device's contract, on the CPU: full decode, area resize to each size."""
    import cv2

    def decode_jpegs_on_device(datas, sizes, device):
        calls.append((len(datas), device))
        out = []
        for data, (w, h) in zip(datas, sizes):
            with Image.open(io.BytesIO(data)) as image:
                if data.startswith(b"\xff\xd8") and len(data) < 2000:
                    raise RuntimeError("nvjpeg: corrupt data")  # the stand-in's damaged file
                out.append(cv2.resize(np.array(image.convert("RGB")), (w, h), interpolation=cv2.INTER_AREA))
        return out

    return decode_jpegs_on_device


def test_rgb_jpegs_go_to_the_device_in_one_batch_and_the_rest_decode_here(tmp_path, monkeypatch):
    import tasks.decode as decode_module

    calls = []
    monkeypatch.setattr(decode_module, "jpeg_device", lambda: "cuda:fake")
    monkeypatch.setattr(decode_module, "decode_jpegs_on_device", _gpu_stand_in(calls))
    paths = [photo_file(tmp_path, f"{i}.jpg", 2048, 1536, seed=i, quality=90) for i in range(2)]
    paths.append(photo_file(tmp_path, "p.png", 1200, 1200, seed=3))
    samples = [Sample(key=str(i), source="s", ref=SourceRef(str(p))) for i, p in enumerate(paths)]
    Decode.create(BuildConfig())(samples)
    assert calls == [(2, "cuda:fake")]  # the two RGB JPEGs, in one call; the PNG decoded (and re-encoded) here
    for sample, path in zip(samples[:2], paths):
        assert sample.image is not None and sample.image.shape == (800, 1067, 3)
        assert sample.jpeg == path.read_bytes() and sample.reencoded is None
    assert samples[2].image is not None and samples[2].reencoded == "PNG is not JPEG"


def test_a_failing_device_batch_is_decoded_one_by_one_on_the_cpu(tmp_path, monkeypatch):
    import tasks.decode as decode_module

    monkeypatch.setattr(decode_module, "jpeg_device", lambda: "cuda:fake")
    monkeypatch.setattr(decode_module, "decode_jpegs_on_device", _gpu_stand_in([]))
    good = photo_file(tmp_path, "good.jpg", 1024, 1024, quality=90)
    cfg = BuildConfig()
    cfg.resolution.min_side = 16
    small = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    cut = tmp_path / "cut.jpg"
    data = jpeg_bytes(small)
    cut.write_bytes(data[: len(data) * 3 // 4])  # a header that reads, a body that does not
    samples = [Sample(key=str(i), source="s", ref=SourceRef(str(p))) for i, p in enumerate([good, cut])]
    Decode.create(cfg)(samples)
    assert samples[0].accepted and samples[0].image is not None and samples[0].image.shape == (1024, 1024, 3)
    reject = rejected(samples[1])
    assert reject.stage == "decode" and reject.reason.startswith("cannot decode image")


def test_runtime_device_cpu_keeps_decoding_off_the_gpu(tmp_path, monkeypatch):
    import tasks.decode as decode_module

    def unexpected():
        raise AssertionError("runtime.device=cpu must not look for a GPU decoder")

    monkeypatch.setattr(decode_module, "jpeg_device", unexpected)
    cfg = BuildConfig()
    cfg.runtime.device = "cpu"
    sample = decode(photo_file(tmp_path, "a.jpg", 1024, 1024, quality=90), cfg)
    assert sample.image is not None and sample.image.shape == (1024, 1024, 3)
