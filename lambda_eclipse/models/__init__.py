"""Model registry: every model is built by one function per model family, for a named profile.

- `tiny`: the real classes with tiny random weights, built offline and deterministically (seeded), so
  that every Ray actor and every rerun holds the same weights.
- `paper`: the paper's checkpoints from the Hugging Face cache or local paths (`models.*` config keys);
  missing weights raise `ModelNotFoundError` naming the model and how to provide it.
- `paper-shapes`: the paper's architectures at full size with random weights, for throughput/memory.
"""

from __future__ import annotations

import contextlib

import torch

from lambda_eclipse.compat import ensure_torchvision_ops
from lambda_eclipse.config import RuntimeConfig

ensure_torchvision_ops()

TINY_SEED = 1234


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(runtime.device)


def resolve_dtype(runtime: RuntimeConfig, device: torch.device) -> torch.dtype:
    if runtime.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[runtime.dtype]


@contextlib.contextmanager
def seeded(seed: int = TINY_SEED):
    """Deterministic random init without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
