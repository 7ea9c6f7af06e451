"""Arrow schema of a shard's feature rows, and conversion from samples.

Embeddings are fixed_size_list columns; the 77 × w text hidden states are stored flat in float16 (≈197 KB
per sample at w = 1280, the largest part of a row); subjects are a list of structs in logit order.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lambda_eclipse.required import required
from lambda_eclipse.sample import Sample

CONTEXT_LENGTH = 77

SUBJECT = pa.struct(
    [
        ("noun", pa.string()),
        ("char_start", pa.int32()),
        ("char_end", pa.int32()),
        ("token_positions", pa.list_(pa.int32())),
        ("box", pa.list_(pa.float32(), 4)),
        ("logit", pa.float32()),
        ("mask_ratio", pa.float32()),
    ]
)

REJECTS = pa.schema([("key", pa.string()), ("source", pa.string()), ("stage", pa.string()), ("reason", pa.string())])


def feature_schema(embed_dim: int, text_width: int) -> pa.Schema:
    emb = pa.list_(pa.float32(), embed_dim)
    return pa.schema(
        [
            ("key", pa.string()),
            ("source", pa.string()),
            ("split", pa.string()),
            ("caption", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("subjects", pa.list_(SUBJECT)),
            ("token_ids", pa.list_(pa.int32(), CONTEXT_LENGTH)),
            ("attention_mask", pa.list_(pa.int8(), CONTEXT_LENGTH)),
            ("text_hidden_states", pa.list_(pa.float16(), CONTEXT_LENGTH * text_width)),
            ("text_embedding", emb),
            ("target_embedding", emb),
            ("subject_embeddings", pa.list_(emb)),
            ("edge_embedding", emb),
        ],
        metadata={"embed_dim": str(embed_dim), "text_width": str(text_width)},
    )


def _fixed(values: list[np.ndarray], dtype: pa.DataType, size: int) -> pa.FixedSizeListArray:
    flat = np.concatenate([np.asarray(v).reshape(-1) for v in values]) if values else np.zeros(0)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.astype(dtype.to_pandas_dtype()), type=dtype), size)


def feature_table(samples: list[Sample], splits: list[str], schema: pa.Schema) -> pa.Table:
    """One row per accepted sample, in the order given."""
    d = int(schema.metadata[b"embed_dim"])
    w = int(schema.metadata[b"text_width"])
    f = [s.features for s in samples]
    subjects = [
        [
            {
                "noun": t.noun,
                "char_start": t.start,
                "char_end": t.end,
                "token_positions": list(t.token_positions),
                "box": [float(x) for x in t.box],
                "logit": float(t.logit),
                "mask_ratio": None if t.mask_ratio is None else float(t.mask_ratio),
            }
            for t in s.subjects
        ]
        for s in samples
    ]
    subject_emb = pa.ListArray.from_arrays(
        pa.array(np.cumsum([0] + [len(s.subjects) for s in samples]), type=pa.int32()),
        _fixed([required(t.embedding, "subject embedding") for s in samples for t in s.subjects], pa.float32(), d),
    )
    columns = {
        "key": pa.array([s.key for s in samples], pa.string()),
        "source": pa.array([s.source for s in samples], pa.string()),
        "split": pa.array(splits, pa.string()),
        "caption": pa.array([s.caption for s in samples], pa.string()),
        "width": pa.array([required(s.image, "sample.image").shape[1] for s in samples], pa.int32()),
        "height": pa.array([required(s.image, "sample.image").shape[0] for s in samples], pa.int32()),
        "subjects": pa.array(subjects, pa.list_(SUBJECT)),
        "token_ids": _fixed([x["token_ids"] for x in f], pa.int32(), CONTEXT_LENGTH),
        "attention_mask": _fixed([x["attention_mask"] for x in f], pa.int8(), CONTEXT_LENGTH),
        "text_hidden_states": _fixed([x["text_hidden_states"] for x in f], pa.float16(), CONTEXT_LENGTH * w),
        "text_embedding": _fixed([x["text_embedding"] for x in f], pa.float32(), d),
        "target_embedding": _fixed([x["target_embedding"] for x in f], pa.float32(), d),
        "subject_embeddings": subject_emb,
        "edge_embedding": _fixed([x["edge_embedding"] for x in f], pa.float32(), d),
    }
    return pa.Table.from_pydict(columns, schema=schema)
