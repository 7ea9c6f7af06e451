"""Benchmark leaks: training samples whose photo or subject crops match a benchmark image (`lambda-eclipse
decontaminate`, and the retrain loop before it trains).

The benchmark is a folder of subject folders, as `evaluate --data` reads it (`read_subjects`: DreamBench's subjects and
Multibench's added concepts alike). Its images are small in number: one Ray task computes each one's pHash, its CLIP
image embedding with the dataset's own CLIP (dataset.json's profile and models) and a thumbnail, and the result goes
into Ray's object store once. The dataset's shards are then scanned by Ray tasks, `Thresholds.shards_per_task` shards
each: every `<key>.jpg` and `<key>.subj<i>.png` of the shard's tar is hashed (tasks/phash.py) and compared with every
benchmark image, and the Parquet's `target_embedding` and `subject_embeddings` are compared by cosine similarity.

A sample matches when its photo or a crop is within `max_distance` bits of a benchmark image's pHash (a copy, resized,
re-compressed or mirrored), or, failing that, when its embedding's cosine with a benchmark image's is at least
`min_similarity` (a near copy the hash misses: a crop, a different framing). One mark per matching sample, its
strongest evidence (a pHash match before an embedding match): `{"key", "kind": "leak", "match": the benchmark image
relative to the benchmark folder, "score": 1 − Hamming/64 or the cosine, "detail": "photo" | "subject crop i"}` (i as
in `<key>.subj<i>.png`), in the `leaks` mark set (storage/marks.py), which the prior's loader skips; the set's summary
records the benchmark, the thresholds, the time and what was checked (each shard's Parquet sha256, so a dataset that
grew since is known to be unchecked there). `DIR/marks/leaks/report.md` and `report.png` show each match, the training
sample beside the benchmark image.
"""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from evaluation.benchmarks import load_benchmarks, read_subjects
from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import UserError
from lambda_eclipse.profile import Profile
from prior.registry import same_place, shard_digests
from storage.fs import Location, join, location, open_file, write_bytes
from storage.layout import complete_shards, shard_paths
from storage.marks import LEAKS, MARKS, mark_sets, write_marks
from storage.reader import iter_samples, load_dataset_meta
from tasks.phash import BITS, hamming_many, phash

# pHash: copies of a photo, resized and re-compressed, land within 0–2 bits of it; different photos ≥ 14 bits apart,
# 28 on average (synthetic photos, 128 px; tasks/phash.py)
MAX_DISTANCE = 8
# CLIP image cosine: with the paper's CLIP (ViT-bigG-14) a near copy is ≥ 0.95, other photos of the same subject fall
# below; the random weights of `tiny` and `paper-shapes` put unrelated photos up to 0.997 apart and copies above 0.9995,
# so there only copies count
MIN_SIMILARITY: dict[str, float] = {Profile.PAPER: 0.95, Profile.TINY: 0.999, Profile.PAPER_SHAPES: 0.999}
SHARDS_PER_TASK = 8
THUMB = 128  # px, the long side of a report thumbnail
REPORT_MD, REPORT_PNG = "report.md", "report.png"
REPORT_ROWS = 60  # pairs drawn in report.png (every match is in report.md and the marks)


@dataclass(frozen=True)
class Thresholds:
    max_distance: int = MAX_DISTANCE  # a pHash within this many bits (of 64) matches
    min_similarity: float | None = None  # a cosine at least this matches; None: the profile's (MIN_SIMILARITY)
    shards_per_task: int = SHARDS_PER_TASK

    def resolved(self, profile: str) -> Thresholds:
        if not 0 <= self.max_distance < BITS:
            raise UserError(f"--max-distance {self.max_distance}: must be in 0…{BITS - 1} (bits of the pHash)")
        if self.min_similarity is not None and not -1 <= self.min_similarity <= 1:
            raise UserError(f"--min-similarity {self.min_similarity}: must be a cosine, in [-1, 1]")
        if self.shards_per_task < 1:
            raise UserError(f"--shards-per-task {self.shards_per_task}: must be ≥ 1")
        similarity = self.min_similarity if self.min_similarity is not None else MIN_SIMILARITY.get(profile, 0.95)
        return Thresholds(self.max_distance, similarity, self.shards_per_task)


@dataclass
class BenchIndex:
    """The benchmark's images, as every scan task sees them (in Ray's object store once)."""

    paths: list[str]  # relative to the benchmark folder, e.g. "dog/00.jpg"
    subjects: list[str]  # each image's subject folder
    hashes: np.ndarray  # (n,) uint64 pHashes
    embeddings: np.ndarray | None  # (n, d) unit CLIP image embeddings; None when the dataset's CLIP is not comparable
    embedder: str  # the CLIP model, or why the embeddings are not compared
    thumbs: list[bytes]  # JPEG thumbnails


@dataclass
class Match:
    key: str
    shard: int
    bench: int  # index into BenchIndex
    score: float
    detail: str  # "photo" | "subject crop i"
    method: str  # "pHash, d bits" | "CLIP cosine"
    thumb: bytes = b""

    def row(self, index: BenchIndex) -> dict:
        return {"key": self.key, "kind": "leak", "match": index.paths[self.bench], "score": self.score,
                "detail": self.detail}


@dataclass
class LeakResult:
    data: str
    benchmark: str
    thresholds: Thresholds
    matches: list[Match]
    samples: int  # samples scanned
    shards: int
    index: BenchIndex
    summary: dict = field(default_factory=dict)

    @property
    def folder(self) -> Location:
        """DIR/marks/leaks: the marks, their summary and the report."""
        return join(self.data, MARKS, LEAKS)

    def per_subject(self) -> dict[str, int]:
        return dict(sorted(Counter(self.index.subjects[m.bench] for m in self.matches).items()))

    def line(self) -> str:
        """One line, the number of matching samples first."""
        n = len(self.matches)
        where = join(self.folder, REPORT_MD)
        if not n:
            return (f"0 training samples match the benchmark {self.benchmark} ({self.samples} samples in "
                    f"{self.shards} shard(s) checked against {len(self.index.paths)} images): report at {where}")
        subjects = ", ".join(f"{s} {c}" for s, c in self.per_subject().items())
        return (f"{_samples(n)} the benchmark {self.benchmark} ({subjects}): marked in {self.folder} (train-prior "
                f"skips them), report at {where}")


def _samples(n: int) -> str:
    return f"{n} training sample matches" if n == 1 else f"{n} training samples match"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- images -----------------------------------------------------------------------------------------------------------

def decode(data: bytes, small: bool) -> np.ndarray:
    """RGB pixels of an encoded image, EXIF orientation applied; `small`: a JPEG decoded at a reduced scale (≥ 64 px,
    libjpeg's DCT scaling), enough for a pHash of 32×32."""
    image = Image.open(io.BytesIO(data))
    if small:
        image.draft("RGB", (64, 64))
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return np.asarray(image.convert("RGB"))


def thumbnail(pixels: np.ndarray) -> bytes:
    image = Image.fromarray(pixels)
    image.thumbnail((THUMB, THUMB))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


# -- the benchmark ----------------------------------------------------------------------------------------------------

def benchmark_images(benchmark: str) -> list[tuple[str, str, str]]:
    """(path, path relative to the benchmark folder, subject folder) of each benchmark image, as evaluate reads them."""
    root = Path(benchmark)
    subjects = read_subjects(root, load_benchmarks()["dreambench"])
    return [(photo, str(Path(photo).relative_to(root)), s.name) for s in subjects for photo in s.photos]


def index_benchmark(benchmark: str, meta: dict) -> BenchIndex:
    """Hashes, embeddings (with the dataset's CLIP) and thumbnails of the benchmark's images (on a Ray worker)."""
    images = benchmark_images(benchmark)
    pixels = [decode(Path(path).read_bytes(), small=False) for path, _, _ in images]
    hashes = np.array([phash(decode(Path(path).read_bytes(), small=True)) for path, _, _ in images], np.uint64)
    embeddings, embedder = _embed(pixels, meta)
    return BenchIndex([rel for _, rel, _ in images], [s for _, _, s in images], hashes, embeddings, embedder,
                      [thumbnail(p) for p in pixels])


def _embed(pixels: list[np.ndarray], meta: dict) -> tuple[np.ndarray | None, str]:
    from lambda_eclipse.device import local_device, torch_dtype
    from lambda_eclipse.models.clip import load_clip

    profile = meta.get("profile")
    if profile is None:
        return None, "not compared: dataset.json names no profile"
    config = meta.get("config") or {}
    models = ModelsSection(**{k: v for k, v in (config.get("models") or {}).items()
                             if k in ModelsSection.__dataclass_fields__})
    device = local_device("auto")
    dtype = torch_dtype(str((config.get("features") or {}).get("dtype", "auto")), device.type, "embeddings")
    clip = load_clip(profile, models, device, dtype)
    built_with = (meta.get("models") or {}).get("features")
    if built_with and built_with != clip.model_id:
        return None, f"not compared: the dataset's embeddings are {built_with}'s, this CLIP is {clip.model_id}"
    if clip.embed_dim != int(meta["embed_dim"]):
        return None, (f"not compared: the {profile} CLIP ({clip.model_id}) gives {clip.embed_dim}-d embeddings, the "
                      f"dataset holds {meta['embed_dim']}-d ones")
    out = [clip.encode_images(pixels[i : i + 16]) for i in range(0, len(pixels), 16)]
    return unit(np.concatenate(out)), clip.model_id


# -- the scan ---------------------------------------------------------------------------------------------------------

def _members(tar_path: Location) -> Iterator[tuple[str, str, bytes]]:
    """(key, member suffix, bytes) of the tar's photos and subject crops, streamed."""
    with open_file(tar_path) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            if ext == "jpg" or (ext.startswith("subj") and ext.endswith(".png")):
                member = tar.extractfile(info)
                if member is not None:
                    yield key, ext, member.read()


def _detail(ext: str) -> str:
    return "photo" if ext == "jpg" else f"subject crop {ext.removeprefix('subj').removesuffix('.png')}"


def scan_shards(root: str, shards: list[int], index: BenchIndex, thresholds: Thresholds) -> tuple[list[Match], int]:
    """The matches in `shards` (their best evidence per sample, with a thumbnail) and the samples scanned (a Ray
    task)."""
    matches: dict[str, Match] = {}
    samples = 0
    similarity = float(thresholds.min_similarity if thresholds.min_similarity is not None else 1.0)

    def better(found: Match) -> None:
        held = matches.get(found.key)
        rank = (found.method.startswith("pHash"), found.score)
        if held is None or rank > (held.method.startswith("pHash"), held.score):
            matches[found.key] = found

    for shard in shards:
        by_embedding: dict[tuple[str, str], tuple[int, float]] = {}  # (key, ext) → best benchmark image, cosine
        for row in iter_samples(root, columns=["key", "target_embedding", "subject_embeddings"], shards=[shard]):
            samples += 1
            if index.embeddings is None:
                continue
            parts = [("jpg", row["target_embedding"])] + [
                (f"subj{i}.png", e) for i, e in enumerate(row["subject_embeddings"])]
            cosines = unit(np.stack([p for _, p in parts])) @ index.embeddings.T
            for (ext, _), scores in zip(parts, cosines):
                best = int(scores.argmax())
                if scores[best] >= similarity:
                    by_embedding[(row["key"], ext)] = (best, float(scores[best]))
        for key, ext, data in _members(shard_paths(root, shard)["tar"]):
            distances = hamming_many(phash(decode(data, small=True)), index.hashes)
            best = int(distances.argmin())
            found = None
            if distances[best] <= thresholds.max_distance:
                found = Match(key, shard, best, 1 - int(distances[best]) / BITS, _detail(ext),
                              f"pHash, {int(distances[best])} bits")
            elif (key, ext) in by_embedding:
                bench, score = by_embedding[(key, ext)]
                found = Match(key, shard, bench, score, _detail(ext), "CLIP cosine")
            if found is not None:
                found.thumb = thumbnail(decode(data, small=False))
                better(found)
    return sorted(matches.values(), key=lambda m: (m.shard, m.key)), samples


def find_leaks(data: str, benchmark: str, thresholds: Thresholds | None = None,
               log: Callable[[str], None] = lambda _: None) -> LeakResult:
    """Scan every complete shard of `data` against the benchmark folder on Ray, write the `leaks` mark set and the
    report; returns what was found."""
    from lambda_eclipse.ray_session import cluster_resources, ray_session

    root = location(data)
    meta = load_dataset_meta(root)
    thresholds = (thresholds or Thresholds()).resolved(str(meta.get("profile")))
    if not Path(benchmark).is_dir():
        raise UserError(f"--against {benchmark} is not a directory; it must hold one folder of photos per subject "
                        "(as evaluate --data)")
    benchmark_images(benchmark)  # a bad benchmark folder fails here, in one line
    shards = complete_shards(root)
    if not shards:
        raise UserError(f"dataset {data} has no complete shards (no shards/NNNNN_stats.json); build it first")
    with ray_session():
        import ray

        gpus = int(cluster_resources().get("GPU", 0))
        pretrained = meta.get("profile") is not None and Profile.parse(meta["profile"]).pretrained
        embed = ray.remote(num_cpus=1, num_gpus=1 if gpus and pretrained else 0)(index_benchmark)
        index: BenchIndex = ray.get(embed.remote(benchmark, meta))
        log(f"benchmark {benchmark}: {len(index.paths)} images in {len(set(index.subjects))} subjects; embeddings: "
            f"{index.embedder}")
        shared = ray.put(index)  # once, for every scan task
        scan = ray.remote(num_cpus=1)(scan_shards)
        window = max(2, 2 * int(cluster_resources().get("CPU", 1)))  # tasks in flight: the results come back
        pending, matches, samples = [], [], 0  # as they end, and nothing waits on a list of every chunk

        def take(ref) -> None:
            nonlocal samples
            found, scanned = ray.get(ref)
            matches.extend(found)
            samples += scanned

        for i in range(0, len(shards), thresholds.shards_per_task):
            pending.append(scan.remote(str(root), shards[i : i + thresholds.shards_per_task], shared, thresholds))
            if len(pending) >= window:
                ready, pending = ray.wait(pending, num_returns=1)
                take(ready[0])
        for ref in pending:
            take(ref)
    matches.sort(key=lambda m: (m.shard, m.key))
    result = LeakResult(str(root), benchmark, thresholds, matches, samples, len(shards), index)
    result.summary = _summary(result, root, shards)
    by_shard: dict[int, list[dict]] = {}
    for m in matches:
        by_shard.setdefault(m.shard, []).append(m.row(index))
    write_marks(root, LEAKS, by_shard, result.summary)
    write_bytes(join(result.folder, REPORT_MD), report_markdown(result).encode())
    write_bytes(join(result.folder, REPORT_PNG), report_image(result))
    return result


def _summary(result: LeakResult, root: Location, shards: list[int]) -> dict:
    return {
        "kind": "leak",
        "benchmark": result.benchmark,
        "benchmark_images": len(result.index.paths),
        "checked_at": now(),
        "thresholds": {k: v for k, v in asdict(result.thresholds).items() if k != "shards_per_task"},
        "embeddings": result.index.embedder,
        "samples_checked": result.samples,
        "samples_matched": len(result.matches),
        "per_subject": {s: result.per_subject().get(s, 0) for s in sorted(set(result.index.subjects))},
        "checked_shards": shard_digests(root, shards),
        "report": str(join(result.folder, REPORT_MD)),
    }


def current_check(data: str, benchmark: str, thresholds: Thresholds | None = None) -> dict | None:
    """The `leaks` mark set's summary when it checked every complete shard of `data`, as they are now, against
    `benchmark` with these thresholds (the retrain loop then does not scan again); else None."""
    root = location(data)
    summary = mark_sets(root).get(LEAKS)
    if summary is None or not same_place(summary.get("benchmark"), benchmark):
        return None
    wanted = (thresholds or Thresholds()).resolved(str(load_dataset_meta(root).get("profile")))
    if summary.get("thresholds") != {"max_distance": wanted.max_distance, "min_similarity": wanted.min_similarity}:
        return None
    return summary if summary.get("checked_shards") == shard_digests(root, complete_shards(root)) else None


# -- the report -------------------------------------------------------------------------------------------------------

def report_markdown(result: LeakResult, rows: int = 500) -> str:
    t = result.thresholds
    lines = [
        "# benchmark leaks", "",
        f"**{_samples(len(result.matches))} the benchmark `{result.benchmark}`** "
        f"({len(result.index.paths)} images); {result.samples} samples in {result.shards} shard(s) of `{result.data}` "
        f"checked.", "",
        f"A match: a photo or subject crop within {t.max_distance} bits of a benchmark image's pHash, or a CLIP image "
        f"cosine ≥ {t.min_similarity} (embeddings: {result.index.embedder}). The matches are marked in the `leaks` "
        "mark set; train-prior skips them (`data.skip_leaks`).", "",
        "| subject | training samples matching |", "|---|---:|",
    ]
    lines += [f"| {s} | {n} |" for s, n in result.per_subject().items()]
    if result.matches:
        lines += ["", f"![training sample beside benchmark image]({REPORT_PNG})", "",
                  "| shard | key | what | benchmark image | score | by |", "|---:|---|---|---|---:|---|"]
        lines += [f"| {m.shard:05d} | `{m.key}` | {m.detail} | `{result.index.paths[m.bench]}` | {m.score:.4f} | "
                  f"{m.method} |" for m in result.matches[:rows]]
        if len(result.matches) > rows:
            lines.append(f"\n… and {len(result.matches) - rows} more (the marks hold every one)")
    return "\n".join(lines) + "\n"


def report_image(result: LeakResult) -> bytes:
    """Each match (up to REPORT_ROWS): the training sample's photo or crop beside the benchmark image, captioned."""
    shown = result.matches[:REPORT_ROWS]
    pad, text = 8, 20
    cell = THUMB + pad
    height = pad + max(1, len(shown)) * cell + (text if len(result.matches) > len(shown) else 0)
    image = Image.new("RGB", (2 * cell + pad + 320, height), "white")
    draw = ImageDraw.Draw(image)
    if not shown:
        draw.text((pad, pad), "no training sample matches the benchmark", fill="black")
    for i, m in enumerate(shown):
        y = pad + i * cell
        for j, thumb in enumerate((m.thumb, result.index.thumbs[m.bench])):
            if thumb:
                image.paste(Image.open(io.BytesIO(thumb)).convert("RGB"), (pad + j * cell, y))
        draw.text((2 * cell + pad, y), f"training {m.key} ({m.detail}), shard {m.shard:05d}", fill="black")
        draw.text((2 * cell + pad, y + 16), f"benchmark {result.index.paths[m.bench]}", fill="black")
        draw.text((2 * cell + pad, y + 32), f"{m.method}: score {m.score:.4f}", fill=(200, 0, 0))
    if len(result.matches) > len(shown):
        draw.text((pad, height - text), f"… {len(result.matches) - len(shown)} more in report.md", fill="black")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
