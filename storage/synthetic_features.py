"""Feature shards with known random values, written through the real shard writer.

Tests and `bench/train_prior.py` use them to exercise the prior's data path without running the
build-dataset models; every field the shard contract stores is filled.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from lambda_eclipse.profile import Profile
from storage.layout import write_json_atomic
from storage.sample import Detection, Noun, Sample, SourceRef
from storage.schema import feature_schema
from storage.shard_writer import ShardWriter, split_of


def featured_sample(key: str, d: int = 8, w: int = 8, n_subjects: int = 2, size: int = 48) -> Sample:
    """An accepted sample with every field the shard writer stores, filled with known random values."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))  # not hash(): Python salts it per process
    image = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
    caption = "a dog and a cat on a sofa"
    spans = [(2, 5, "dog"), (12, 15, "cat")][:n_subjects]
    subjects = []
    for i, (start, end, noun) in enumerate(spans):
        mask = np.zeros(image.shape[:2], bool)
        mask[5 + i : 20 + i, 5:25] = True
        subjects.append(
            Detection(
                noun=noun, start=start, end=end, box=np.array([5, 5 + i, 25, 20 + i], np.float32),
                logit=0.9 - 0.1 * i, mask=mask, mask_ratio=0.95, token_positions=[2 + 3 * i],
                crop=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), embedding=rng.normal(size=d).astype(np.float32),
            )
        )
    ids = np.zeros(77, np.int32)
    ids[:8] = rng.integers(1, 1000, 8)
    return Sample(
        key=key, source=f"/data/{key}.jpg", ref=SourceRef(f"/data/{key}.jpg"), image=image, caption=caption,
        nouns=[Noun(n, s, e) for s, e, n in spans], detections=list(subjects), subjects=subjects,
        edge=np.zeros_like(image),
        features={
            "target_embedding": rng.normal(size=d).astype(np.float32),
            "edge_embedding": rng.normal(size=d).astype(np.float32),
            "text_hidden_states": rng.normal(size=(77, w)).astype(np.float16),
            "text_embedding": rng.normal(size=d).astype(np.float32),
            "token_ids": ids,
            "attention_mask": (np.arange(77) < 8).astype(np.int8),
        },
        seconds={"decode": 0.01},
    )


def keys_for(split: str, n: int, prefix: str, train_fraction: float = 0.8) -> list[str]:
    """n keys that the shard writer assigns to `split` (splits follow the key's hash)."""
    keys, i = [], 0
    while len(keys) < n:
        key = f"{prefix}-{i}"
        if split_of(key, train_fraction) == split:
            keys.append(key)
        i += 1
    return keys


def write_feature_dataset(root: str | Path, shards: list[tuple[int, int]], d: int = 32,
                          shard_dims: dict[int, int] | None = None) -> Path:
    """A dataset of small shards: `shards` lists (train, val) sample counts; `shard_dims` overrides d per shard."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    zero = np.linspace(-1, 1, d).round(3).tolist()
    meta = {"embed_dim": d, "text_width": d, "profile": Profile.TINY.value, "zero_image_embedding": zero}
    write_json_atomic(root / "dataset.json", meta)
    for shard, (n_train, n_val) in enumerate(shards):
        dim = (shard_dims or {}).get(shard, d)
        writer = ShardWriter(root, shard, feature_schema(dim, dim), 0.8, ["decode"])
        for key in keys_for("train", n_train, f"s{shard}") + keys_for("val", n_val, f"s{shard}"):
            writer.add(featured_sample(key, dim, dim))
        writer.close({"description": "synthetic features"})
    return root
