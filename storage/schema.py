"""Arrow schema of a shard's feature rows, and conversion from samples.

Embeddings are fixed_size_list columns; subjects are a list of structs in logit order. The 77 × w text hidden
states (≈197 KB per sample at w = 1280, the largest part of a row) are one fixed_size_binary value per row: the
float16 array, little-endian, row-major. Parquet stores float16 as 2-byte FIXED_LEN_BYTE_ARRAY values decoded one by
one (≈3,000 rows/s per core); one binary value per row is read at memory speed (≈48,000 rows/s), which is what the
prior's loader needs. Datasets written with the earlier fixed_size_list<float16> column are still read
(`text_states`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lambda_eclipse.required import required
from storage.sample import Sample

CONTEXT_LENGTH = 77
# What `Sample.features` holds: the feature row's columns of the same names
FEATURE_ARRAYS = ("target_embedding", "edge_embedding", "text_hidden_states", "text_embedding", "token_ids",
                  "attention_mask")

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

REJECTS = pa.schema([("key", pa.string()), ("source", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
                     ("thumbnail", pa.binary())])  # a small JPEG of the rejected photo, or null (storage/thumbnail.py)
# the rejects of datasets built before the rejects gallery: no thumbnails
LEGACY_REJECTS = pa.schema(list(REJECTS)[:4])


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
            ("text_hidden_states", text_states_type(text_width)),
            ("text_embedding", emb),
            ("target_embedding", emb),
            ("subject_embeddings", pa.list_(emb)),
            ("edge_embedding", emb),
        ],
        metadata={"embed_dim": str(embed_dim), "text_width": str(text_width)},
    )


def text_states_type(text_width: int) -> pa.DataType:
    return pa.binary(CONTEXT_LENGTH * text_width * 2)


def legacy_text_states_type(text_width: int) -> pa.DataType:
    """The column's type in datasets written before it became binary; still read."""
    return pa.list_(pa.float16(), CONTEXT_LENGTH * text_width)


def text_states(column: pa.Array | pa.ChunkedArray, text_width: int) -> np.ndarray:
    """A text_hidden_states column as an (n, 77, w) float16 array: a view of Arrow's buffer where possible."""
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    size = CONTEXT_LENGTH * text_width
    if pa.types.is_fixed_size_binary(column.type):
        if column.type.byte_width != 2 * size:
            raise ValueError(f"text_hidden_states holds {column.type.byte_width // 2} values per sample, "
                             f"expected {CONTEXT_LENGTH} × {text_width}")
        data = column.buffers()[1]
        assert data is not None
        flat = np.frombuffer(data, np.dtype("<f2"), len(column) * size, column.offset * size * 2)
    else:
        flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), CONTEXT_LENGTH, text_width)


def _text_states_array(values: list[np.ndarray], text_width: int) -> pa.Array:
    flat = np.concatenate([np.asarray(v).reshape(-1) for v in values]) if values else np.zeros(0)
    return pa.FixedSizeBinaryArray.from_buffers(text_states_type(text_width), len(values),
                                                [None, pa.py_buffer(flat.astype("<f2").tobytes())])


def _fixed(values: list[np.ndarray], dtype: pa.DataType, size: int) -> pa.FixedSizeListArray:
    flat = np.concatenate([np.asarray(v).reshape(-1) for v in values]) if values else np.zeros(0)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.astype(dtype.to_pandas_dtype()), type=dtype), size)


def photo_box(box: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """A box found on the stages' image, in pixels of the photo (`Sample.box_scale`): what the shard stores."""
    return np.asarray(box, np.float64) * np.array([sx, sy, sx, sy])


def feature_table(samples: list[Sample], splits: list[str], schema: pa.Schema) -> pa.Table:
    """One row per accepted sample, in the order given. Sizes and boxes are the photo's (the tar's `<key>.jpg`)."""
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
                "box": [float(x) for x in photo_box(t.box, *s.box_scale())],
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
        "width": pa.array([s.photo_size()[0] for s in samples], pa.int32()),
        "height": pa.array([s.photo_size()[1] for s in samples], pa.int32()),
        "subjects": pa.array(subjects, pa.list_(SUBJECT)),
        "token_ids": _fixed([x["token_ids"] for x in f], pa.int32(), CONTEXT_LENGTH),
        "attention_mask": _fixed([x["attention_mask"] for x in f], pa.int8(), CONTEXT_LENGTH),
        "text_hidden_states": _text_states_array([x["text_hidden_states"] for x in f], w),
        "text_embedding": _fixed([x["text_embedding"] for x in f], pa.float32(), d),
        "target_embedding": _fixed([x["target_embedding"] for x in f], pa.float32(), d),
        "subject_embeddings": subject_emb,
        "edge_embedding": _fixed([x["edge_embedding"] for x in f], pa.float32(), d),
    }
    return pa.Table.from_pydict(columns, schema=schema)
