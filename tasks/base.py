"""The stage contract: a plain class, model loaded once in the constructor, a batch processed per call.

Framework-free on purpose (docs/design.md, "Stages"): the same object runs in an in-process loop, in a test, or as
a Ray Data actor through `tasks.pipeline`.
"""

from __future__ import annotations

import time
from typing import ClassVar

from lambda_eclipse.config import BuildConfig
from storage.sample import Sample


class Stage:
    name: ClassVar[str]
    uses_model: ClassVar[bool] = False  # model stages get their own Ray actor pool
    # What one actor of a model stage asks for (NeMo Curator's pattern); `runtime.actors.<stage>` and
    # `runtime.gpus.<stage>` override them, and the GPU fraction applies only where the cluster has GPUs.
    cpus: ClassVar[float] = 1.0
    gpus: ClassVar[float] = 0.0
    actors: ClassVar[int] = 1

    def __init__(self, cfg: BuildConfig, profile: str = "tiny"):
        self.cfg = cfg
        self.profile = profile

    @classmethod
    def batch_size_for(cls, cfg: BuildConfig, default: int = 64) -> int:
        """Known before the model loads, so that Ray Data can size the stage's batches; `default` for stages
        without a `batch_size` key."""
        return getattr(getattr(cfg, cls.name, None), "batch_size", default)

    @property
    def batch_size(self) -> int:
        return self.batch_size_for(self.cfg)

    def process(self, samples: list[Sample]) -> None:
        """Work on samples that are still accepted, in place; reject with `sample.reject_at(self.name, …)`."""
        raise NotImplementedError

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        live = [s for s in samples if s.accepted]
        if live:
            start = time.perf_counter()
            self.process(live)
            share = (time.perf_counter() - start) / len(live)
            for s in live:
                s.seconds[self.name] = s.seconds.get(self.name, 0.0) + share
        return samples


class ModelStage(Stage):
    """A stage with a torch model: device and dtype decided once, on the actor's node (lambda_eclipse.device)."""

    uses_model = True

    def __init__(self, cfg: BuildConfig, profile: str = "tiny"):
        from lambda_eclipse.device import local_device, torch_dtype

        super().__init__(cfg, profile)
        self.device = local_device(cfg.runtime.device)
        self.dtype = torch_dtype(cfg.runtime.dtype, self.device.type, "stages")
