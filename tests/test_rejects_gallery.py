"""Rejected photos get small thumbnails where they are rejected (a bounded few per stage), the shard keeps a bounded
few per stage, and the summary's gallery shows them with their reasons (storage/thumbnail.py,
storage/rejects_gallery.py)."""

import base64
import io
import re

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from storage import thumbnail
from storage.build_totals import BuildTotals
from storage.rejects_gallery import gallery_markdown, gallery_rows
from storage.sample import Sample, SourceRef
from storage.schema import feature_schema
from storage.shard_writer import ShardWriter
from tasks.config import BuildConfig
from tasks.decode import Decode
from tasks.pipeline import STAGE_NAMES
from tasks.resolution import ResolutionFilter
from tasks.white_background import WhiteBackgroundFilter


def _jpeg(size: tuple[int, int], color=(40, 90, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _sample(key: str, data: bytes) -> Sample:
    return Sample(key=key, source=f"/photos/{key}.jpg", ref=SourceRef("unused"), data=data)


def _size(jpeg: bytes | None) -> tuple[int, int]:
    assert jpeg is not None
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return image.size


def _cpu_stages(cfg: BuildConfig):
    return [stage.create(cfg) for stage in (Decode, ResolutionFilter, WhiteBackgroundFilter)]


def test_each_cpu_stage_thumbnails_what_it_rejects_and_nothing_else():
    cfg = BuildConfig()
    cfg.resolution.min_side = 96
    white = np.full((300, 200, 3), 255, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(white).save(buf, format="JPEG")
    samples = [_sample("empty", b""), _sample("text", b"not an image"), _sample("small", _jpeg((80, 60))),
               _sample("white", buf.getvalue()), _sample("fine", _jpeg((200, 120)))]
    for stage in _cpu_stages(cfg):
        stage(samples)
    by_key = {s.key: s for s in samples}
    assert [s.reject.stage if s.reject else None for s in samples] == [
        "decode", "decode", "resolution", "white_background", None]
    assert by_key["empty"].thumbnail is None and by_key["text"].thumbnail is None  # nothing decoded: reason alone
    assert _size(by_key["small"].thumbnail) == (80, 60)  # never decoded by the pipeline: made from its bytes
    assert _size(by_key["white"].thumbnail) == (64, 96)  # from the working image, longer side 96
    assert by_key["fine"].thumbnail is None and by_key["fine"].image is not None
    assert by_key["small"].data is None and by_key["white"].image is None  # a reject still sheds its pixels


def test_a_batch_thumbnails_at_most_per_stage_of_its_rejects():
    cfg = BuildConfig()
    cfg.resolution.min_side = 96
    samples = [_sample(f"small{i}", _jpeg((64, 64))) for i in range(thumbnail.PER_STAGE + 3)]
    for stage in _cpu_stages(cfg):
        stage(samples)
    assert all(s.reject and s.reject.stage == "resolution" for s in samples)
    assert [s.thumbnail is not None for s in samples] == [True] * thumbnail.PER_STAGE + [False] * 3


def _rejected(key: str, stage: str, reason: str, image: np.ndarray | None) -> Sample:
    sample = Sample(key=key, source=f"/photos/{key}.jpg", ref=SourceRef("unused"))
    sample.reject_at(stage, reason)
    sample.thumbnail = thumbnail.encode_thumbnail(image) if image is not None else None
    return sample


def _shard(root, shard: int, samples: list[Sample]) -> dict:
    writer = ShardWriter(root, shard, feature_schema(8, 8), 0.8, STAGE_NAMES)
    for s in samples:
        writer.add(s)
    return writer.close({"description": "test", "fingerprint": "f"})


def test_a_shard_keeps_at_most_per_stage_thumbnails_of_each_stage(tmp_path):
    red = np.zeros((50, 50, 3), np.uint8)
    red[..., 0] = 255
    samples = [_rejected(f"w{i}", "white_background", "too white", red) for i in range(7)]
    samples += [_rejected("d0", "decode", "empty file", None), _rejected("r0", "resolution", "too small", red)]
    _shard(tmp_path, 0, samples)
    table = pq.read_table(tmp_path / "shards" / "00000_rejects.parquet")
    assert table.schema.names == ["key", "source", "stage", "reason", "thumbnail"]
    kept = {}
    for row in table.to_pylist():
        kept.setdefault(row["stage"], []).append(row["thumbnail"] is not None)
    assert kept == {"white_background": [True] * thumbnail.PER_STAGE + [False] * 3, "decode": [False],
                    "resolution": [True]}


def _totals(stats: list[dict]) -> BuildTotals:
    totals = BuildTotals()
    for s in stats:
        totals.add(s)
    return totals


def test_the_gallery_shows_each_stage_with_thumbnails_and_reasons(tmp_path):
    green = np.zeros((40, 80, 3), np.uint8)
    green[..., 1] = 200
    stats = [_shard(tmp_path, 0, [_rejected("r0", "resolution", "64×64 px: shorter side 64 < 96", green),
                                  _rejected("d0", "decode", "empty file | 0 bytes", None)]),
             _shard(tmp_path, 1, [_rejected(f"w{i}", "white_background", f"white fraction 0.9{i}", green)
                                  for i in range(5)])]
    text = gallery_markdown(tmp_path, _totals(stats), per_stage=3)
    assert text.startswith("## Rejects gallery")
    sections = re.findall(r"^### (\w+): (\d+) rejected$", text, re.M)
    assert sections == [("decode", "1"), ("resolution", "1"), ("white_background", "5")]  # in stage order
    assert "| (no image) | `/photos/d0.jpg` | empty file \\| 0 bytes |" in text  # the pipe stays in its cell
    images = re.findall(r"!\[rejected (\w+)\]\(data:image/jpeg;base64,([^)]+)\)", text)
    assert [key for key, _ in images] == ["r0", "w0", "w1", "w2"]  # at most per_stage of a stage
    pixel = np.asarray(Image.open(io.BytesIO(base64.b64decode(images[0][1]))).convert("RGB"))[20, 40]
    assert abs(int(pixel[1]) - 200) < 12 and pixel[0] < 12
    assert "| white fraction 0.92 |" in text and "0.93" not in text


def test_the_gallery_reads_shards_only_until_every_stage_has_its_rows(tmp_path):
    stats = [_shard(tmp_path, i, [_rejected(f"w{i}", "white_background", "too white", np.zeros((8, 8, 3), np.uint8))])
             for i in range(4)]
    (tmp_path / "shards" / "00003_rejects.parquet").write_bytes(b"unreadable: never read")
    rows = gallery_rows(tmp_path, _totals(stats), per_stage=3)
    assert [r["key"] for r in rows["white_background"]] == ["w0", "w1", "w2"]


def test_nothing_rejected_gives_no_gallery(tmp_path):
    from storage.synthetic_features import featured_sample

    assert gallery_markdown(tmp_path, _totals([_shard(tmp_path, 0, [featured_sample("a")])])) == ""
