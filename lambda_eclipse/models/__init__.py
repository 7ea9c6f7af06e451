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

ensure_torchvision_ops()

TINY_SEED = 1234


@contextlib.contextmanager
def seeded(seed: int = TINY_SEED):
    """Deterministic random init without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
