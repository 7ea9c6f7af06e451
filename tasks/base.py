"""The stage contract (NeMo Curator's): a stage is a dataclass of its own parameters, loads its model in `setup()`,
and processes a batch per call.

A model stage also says what it added to a sample (`output`, JSON-able) and how to put that back (`apply`): every
build keeps those outputs beside its shards, keyed by the input's content hash and the stage's fingerprint (the
config keys its output depends on, its model, its version, and the fingerprint of the stages before it), so that a
build with changed thresholds reuses them instead of running the model again (storage/kept.py).

A stage's fields are the config sections it reads, named as in BuildConfig (`resolution`, `boxes`, `models`, …), so
`from_config` picks exactly those and nothing else of the build's config. The object is what a Ray actor runs: it is
built where the build is planned (cheap: no model), shipped to its actor, and set up there. Framework-free on purpose
(docs/design.md, "Stages"): the same object runs in an in-process loop, in a test, or on an actor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from lambda_eclipse import metrics
from lambda_eclipse.config import ModelsSection
from lambda_eclipse.profile import Profile
from storage import thumbnail
from storage.sample import Sample
from tasks.config import BuildConfig, RuntimeSection


@dataclass
class Stage:
    name: ClassVar[str]
    uses_model: ClassVar[bool] = False  # model stages get their own Ray actor pool
    # What a model stage costs per sample (NeMo Curator declares resources the same way); the build sizes each
    # stage's pool from these and the cluster (tasks/placement.py), measured CPU seconds replacing `cpu_seconds`
    # once shards report them. `runtime.actors.<stage>` and `runtime.gpus.<stage>` override the sizing.
    tflops: ClassVar[float] = 0.0  # GPU work per sample (docs/design.md's FLOP estimates); 0: runs on CPUs only
    cpu_seconds: ClassVar[float] = 0.0  # CPU seconds per sample on a CPU node (tiny profile, 256² photos)
    cpus: ClassVar[float] = 1.0  # CPUs per actor on a GPU cluster (its input preparation)
    version: ClassVar[int] = 1  # raised when the stage's code changes its output for the same inputs and keys
    # The config keys ("section.key") its output depends on; None: every key of the sections it reads but batch sizes
    # (its model is in the fingerprint on its own; `runtime` only places work).
    depends_on: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def fingerprint(cls, cfg: BuildConfig, profile: str, upstream: str) -> str:
        """What the stage's output depends on, hashed with `upstream` (the fingerprint of the stage before it): two
        builds whose fingerprints of a stage agree get the same output of it from the same input."""
        sections = {f.name for f in dataclasses.fields(cls) if f.init} - {"profile", "models", "runtime"}
        keys = cls.depends_on
        if keys is None:
            keys = tuple(f"{section}.{key}" for section in sorted(sections)
                         for key in dataclasses.asdict(getattr(cfg, section)) if key != "batch_size")
        values = {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in keys}
        model = cfg.model_ids(profile).get(cls.name) if cls.uses_model else None
        text = json.dumps([upstream, cls.name, cls.version, values, model], sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_config(cls, cfg: BuildConfig, profile: str = Profile.TINY.value) -> Self:
        """The stage with its own parameters: each of its fields is the config section of that name (`profile`: the
        model profile)."""
        given: dict[str, Any] = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} | {"profile": profile}
        return cls(**{f.name: given[f.name] for f in dataclasses.fields(cls) if f.init})

    @classmethod
    def create(cls, cfg: BuildConfig, profile: str = Profile.TINY.value) -> Self:
        """`from_config`, set up: ready to process, in this process."""
        stage = cls.from_config(cfg, profile)
        stage.setup()
        return stage

    @classmethod
    def batch_size_for(cls, cfg: BuildConfig, default: int = 64) -> int:
        """Known before the model loads, so that the unit can size its batches; `default` for stages without a
        `batch_size` key."""
        return getattr(getattr(cfg, cls.name, None), "batch_size", default)

    @property
    def batch_size(self) -> int:
        return getattr(getattr(self, self.name, None), "batch_size", 64)

    def setup(self) -> None:
        """Load what the stage needs (its model), once, where it runs; CPU stages have nothing to load."""

    def process(self, samples: list[Sample]) -> None:
        """Work on samples that are still accepted, in place; reject with `sample.reject_at(self.name, …)`."""
        raise NotImplementedError

    def output(self, sample: Sample) -> dict:
        """What a model stage added to `sample` that passed it, JSON-able: what its build keeps."""
        raise NotImplementedError

    def apply(self, sample: Sample, record: dict) -> None:
        """Put a kept record's `value` (an `output`) back on `sample`, as though the stage had run (no model needed);
        the features stage also takes the record's `arrays`, which its shard keeps in the feature row."""
        raise NotImplementedError

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        live = [s for s in samples if s.accepted]
        if live:
            # references, no copies: `reject_at` drops a sample's pixels, and the first few this batch rejects are
            # still needed for their thumbnails
            pixels = [(s, s.image, s.data) for s in live]
            start = time.perf_counter()
            self.process(live)
            share = (time.perf_counter() - start) / len(live)
            for s in live:
                s.seconds[self.name] = s.seconds.get(self.name, 0.0) + share
                if self.uses_model:
                    s.kept[self.name] = self._record(s)
            self._thumbnail_rejects(pixels)
        return samples

    def _record(self, sample: Sample) -> dict:
        if sample.reject is not None:
            return {"reject": sample.reject.reason, "value": {}, "reused": False}
        return {"reject": None, "value": self.output(sample), "reused": False}

    def restore(self, samples: list[Sample], records: list[dict]) -> None:
        """Samples the stage ran on in an earlier build, from its kept records (storage/kept.py), without the
        model: rejected where it rejected them, with its outputs where it passed them."""
        pixels = [(s, s.image, s.data) for s in samples]
        for sample, record in zip(samples, records, strict=True):
            if record["reject"] is not None:
                sample.reject_at(self.name, record["reject"])
            else:
                self.apply(sample, record)
            sample.kept[self.name] = {"reject": record["reject"], "value": record["value"], "reused": True}
        self._thumbnail_rejects(pixels)

    def _thumbnail_rejects(self, pixels: list) -> None:
        budget = thumbnail.PER_STAGE
        for sample, image, data in pixels:
            if budget == 0:
                return
            if sample.reject is not None and sample.reject.stage == self.name:
                sample.thumbnail = thumbnail.thumbnail_of(image, data)
                budget -= 1


def set_up(stage: Stage) -> Stage:
    """`stage`, set up: what a model actor builds (lambda_eclipse.actor_pool) from the stage object it was sent."""
    stage.setup()
    metrics.actor_up(stage.name)
    return stage


@dataclass
class ModelStage(Stage):
    """A stage with a torch model: device and dtype decided in `setup()`, on its actor's node
    (lambda_eclipse.device)."""

    uses_model: ClassVar[bool] = True
    profile: str = Profile.TINY.value
    models: ModelsSection = field(default_factory=ModelsSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def setup(self) -> None:
        from lambda_eclipse.device import local_device, torch_dtype

        self.device = local_device(self.runtime.device)
        self.dtype = torch_dtype(self.runtime.dtype, self.device.type, "stages")
        self.load()

    def load(self) -> None:
        """Load the model onto `self.device` in `self.dtype`."""
        raise NotImplementedError
