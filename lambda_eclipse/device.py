"""The one device and dtype policy, in one vocabulary: devices auto | cpu | cuda, dtypes float32 | bfloat16 |
float16 (fp32, bf16 and fp16 are read as their aliases). Model loaders take the device and dtype decided here and
decide nothing themselves.

`auto` means float32 on the CPU and, on CUDA, the precision each use was released or measured in (`CUDA_DEFAULT`).
Where the choice is made matters on a cluster: a model actor or training worker decides on its own node
(`local_device`); a flow process, which usually has no GPU, decides from the cluster's resources (`cluster_device`).
Torch is imported only by the functions that return torch objects, so that config checks and `--help` load none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambda_eclipse.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_NAMES = ("auto", *DTYPES, *ALIASES)  # what a dtype or precision key accepts
# What `auto` is on CUDA, per use.
CUDA_DEFAULT = {
    "stages": "bfloat16",  # build-dataset's captioning, detection and segmentation models
    "embeddings": "float16",  # CLIP: the released λ-ECLIPSE inference loads ViT-bigG-14 in float16; bf16's 8-bit
    # mantissa moves an embedding ~8× more than fp16's 11 bits (bench/features_precision.py)
    "decoder": "float16",  # Kandinsky 2.2's released precision
    "training": "bfloat16",  # autocast of the prior's and the decoder's training steps: no loss scaling needed
}
# What the weights of a model being trained are kept in, on every device and whatever the training precision: AdamW's
# steps (about lr, 1e-5 for the decoder) fall below a 16-bit weight's rounding step and would be lost; autocast runs
# the forward in the training precision (CUDA_DEFAULT["training"]).
MASTER_WEIGHTS = "float32"


def check_device(key: str, value: str) -> str:
    if value not in DEVICES:
        raise UserError(f"{key} must be one of {', '.join(DEVICES)}, got {value!r}")
    return value


def check_dtype(key: str, value: str) -> str:
    """`value` in the one vocabulary (auto, or a name of DTYPES; an alias is translated); a UserError naming `key`."""
    name = ALIASES.get(value, value)
    if name != "auto" and name not in DTYPES:
        raise UserError(f"{key} must be auto or one of {', '.join(DTYPES)}, got {value!r}")
    return name


def dtype_name(requested: str, device_type: str, use: str) -> str:
    """The dtype `requested` means for `use` on a device of `device_type` ("cpu" | "cuda")."""
    name = ALIASES.get(requested, requested)
    if name == "auto":
        return CUDA_DEFAULT[use] if device_type == "cuda" else "float32"
    return name


def torch_dtype(requested: str, device_type: str, use: str) -> torch.dtype:
    import torch

    return getattr(torch, dtype_name(requested, device_type, use))


def master_dtype() -> torch.dtype:
    """The dtype a model being trained is loaded in (`MASTER_WEIGHTS`)."""
    import torch

    return getattr(torch, MASTER_WEIGHTS)


def local_device(requested: str) -> torch.device:
    """The device of this process (a model actor, a training worker): auto is CUDA when one is visible here."""
    import torch

    check_device("runtime.device", requested)
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("runtime.device=cuda, but no CUDA device is visible; use runtime.device=cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def cluster_device(requested: str, gpus: float) -> str:
    """The device a Ray task or training worker will run on, decided by the cluster (which has `gpus` GPUs), not by
    the flow process's node."""
    check_device("runtime.device", requested)
    if requested == "cuda" and not gpus:
        raise UserError("runtime.device=cuda, but the Ray cluster has no GPUs; use runtime.device=auto or cpu")
    return "cuda" if gpus and requested != "cpu" else "cpu"
