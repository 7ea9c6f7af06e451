"""Everything checked before a build starts, so that bad input fails in one line and before any work."""

from __future__ import annotations

from dataclasses import dataclass

from lambda_eclipse.config import BuildConfig, check_profile, load_config
from lambda_eclipse.errors import UserError
from lambda_eclipse.models.preflight import check_paper_weights
from lambda_eclipse.storage.dataset_meta import existing_meta
from lambda_eclipse.storage.fs import Location, location, process_local, resolve
from lambda_eclipse.storage.layout import is_complete, read_json, shard_paths
from lambda_eclipse.storage.sources import WorkUnit, plan_units
from lambda_eclipse.tasks.pipeline import MODEL_STAGES


@dataclass
class BuildPlan:
    cfg: BuildConfig
    profile: str
    output: Location  # a Path for a local dataset, else its URL
    units: list[WorkUnit]
    skipped_files: int
    meta: dict | None  # dataset.json of an earlier run into the same output, if any

    @property
    def todo(self) -> list[WorkUnit]:
        return [u for u in self.units if not is_complete(self.output, u.shard)]


def parse_gpus(items: list[str] | dict[str, float] | None) -> dict[str, float]:
    """`caption=0.5,boxes=0.25` or a mapping → {stage: fraction}, stage names checked."""
    if not items:
        return {}
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            for part in str(item).split(","):
                name, sep, value = part.partition("=")
                if not sep:
                    raise UserError(f"--gpus-per-stage {part!r}: expected STAGE=FRACTION, for example masks=0.5")
                pairs.append((name.strip(), value))
    gpus = {}
    for name, value in pairs:
        if name not in MODEL_STAGES:
            raise UserError(f"--gpus-per-stage: unknown stage {name!r}; model stages are {', '.join(MODEL_STAGES)}")
        try:
            gpus[name] = float(value)
        except ValueError:
            raise UserError(f"--gpus-per-stage {name}={value}: the fraction must be a number such as 0.5") from None
        if gpus[name] < 0:
            raise UserError(f"--gpus-per-stage {name}={value}: the fraction must not be negative")
    return gpus


def _check_writable(output: Location) -> None:
    fs, path = resolve(output)
    probe = f"{path.rstrip('/')}/.write-test"
    try:
        fs.makedirs(path, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:  # noqa: BLE001 - object-store clients raise their own types (botocore's are no OSError)
        reason = getattr(exc, "strerror", None) or exc
        raise UserError(f"output directory {output} is not writable ({reason}); choose another --output") from None


def _check_shared(inputs: list[str]) -> None:
    """Images are decoded in Ray worker processes, which cannot see this process's memory:// files."""
    for item in inputs:
        if process_local(item):
            raise UserError(
                f"input {item} is in this process's memory, which the Ray workers that decode images cannot read; "
                "use a local path, a file:// URL or object storage (s3://…) for --input"
            )


def prepare_build(
    inputs: list[str],
    output: str,
    profile: str = "tiny",
    config_file: str | None = None,
    overrides: list[str] | None = None,
    workers: int = 0,
    gpus_per_stage: list[str] | dict[str, float] | None = None,
) -> BuildPlan:
    check_profile(profile)
    cfg = load_config(config_file, overrides or [])
    if workers < 0:
        raise UserError(f"--workers must be 0 (all CPUs) or more, got {workers}")
    if workers:
        cfg.runtime.workers = workers
    cfg.runtime.gpus = parse_gpus(gpus_per_stage)
    if profile == "paper":
        check_paper_weights(cfg.models)
    _check_shared(inputs)
    out = location(output)  # an unknown protocol or a missing backend fails before the inputs are listed
    units, skipped = plan_units(inputs, cfg.input.unit_size, cfg.input.extensions)
    _check_writable(out)
    meta = existing_meta(out, cfg, profile)
    for unit in units:
        if is_complete(out, unit.shard):
            done = read_json(shard_paths(out, unit.shard)["stats"])["unit"]
            if done.get("fingerprint") != unit.fingerprint():
                raise UserError(
                    f"shard {unit.shard:05d} in {out} was built from other inputs ({done.get('description')}) "
                    f"than this run's ({unit.description}); use a new --output directory for changed inputs"
                )
    return BuildPlan(cfg, profile, out, units, skipped, meta)


def describe_clip(cfg: BuildConfig, profile: str) -> dict:
    """Embedding dims, model id and the all-zero-image embedding, for dataset.json."""
    from lambda_eclipse.models import resolve_device, resolve_dtype
    from lambda_eclipse.models.clip import load_clip

    device = resolve_device(cfg.runtime)
    clip = load_clip(profile, cfg.models, device, resolve_dtype(cfg.runtime, device))
    return {
        "embed_dim": clip.embed_dim,
        "text_width": clip.text_width,
        "model_id": clip.model_id,
        "zero_image_embedding": [float(x) for x in clip.zero_image_embedding()],
    }

