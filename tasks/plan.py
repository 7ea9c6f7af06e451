"""Everything checked before a build starts, so that bad input fails in one line and before any work."""

from __future__ import annotations

from dataclasses import dataclass, field

from lambda_eclipse.errors import UserError
from lambda_eclipse.profile import Profile
from storage.dataset_meta import existing_meta
from storage.fs import Location, location, process_local, resolve
from storage.kept import ReuseSource, reuse_sources
from storage.layout import complete_shards
from storage.manifest import MANIFEST, read_manifest
from storage.sources import SampledListing, WorkUnit, list_inputs, plan_units, sample_listing
from tasks.config import BuildConfig, build_config_from_dict, load_build_config
from tasks.pipeline import MODEL_STAGES


@dataclass
class BuildPlan:
    cfg: BuildConfig
    profile: str
    output: Location  # a Path for a local dataset, else its URL
    units: list[WorkUnit]  # every unit of the dataset (the manifest), by shard
    todo: list[WorkUnit]  # units of this run's inputs whose shard is not complete
    complete: set[int]  # shards complete before this run
    new: int  # units this plan added to the manifest
    skipped_files: int
    meta: dict | None  # dataset.json of an earlier run into the same output, if any
    loops: list[str] = field(default_factory=list)  # symlinked folders in the inputs not followed (loops)
    # --reuse: per shard to build, the earlier dataset's shards whose kept model outputs may serve its inputs
    reuse: dict[int, ReuseSource] = field(default_factory=dict)
    sample: SampledListing | None = None  # --sample: the sample of the listing this build is, and the listing's size
    sample_of: float | None = None  # --sample as given (dataset.json records it)
    active: set[int] = field(default_factory=set)  # shards whose inputs are among this run's inputs

    def present_units(self) -> list[WorkUnit]:
        """The units whose inputs are among this run's (what the duplicates pass compares)."""
        return [u for u in self.units if u.shard in self.active]

    def summary(self) -> str:
        images = [u.images for u in self.todo]
        counted = sum(n for n in images if n is not None)
        tars = sum(1 for n in images if n is None)
        parts = ([f"{counted} images"] if counted or not tars else []) + ([f"{tars} tars"] if tars else [])
        what = " + ".join(parts) + (" (a tar's images are counted by the worker that reads it)" if tars else "")
        sampled = self.sample
        return (
            (f"a sample of {sampled.sample_images} of {'about ' if sampled.estimated else ''}{sampled.images} "
             "images; " if sampled else "")
            + f"{len(self.units)} work units ({self.new} new), {len(self.complete)} shards complete, "
            f"{len(self.todo)} to build: {what}"
            + (f"; {self.skipped_files} non-image files skipped" if self.skipped_files else "")
            + (f"; symlinked folders not followed (they loop): {', '.join(self.loops)}" if self.loops else "")
            + (f"; {len(self.reuse)} of them may reuse kept model outputs" if self.reuse else "")
        )


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


def _check_shared(inputs: list[str], output: str) -> None:
    """Ray workers read the inputs and write the shards; they cannot see this process's memory:// files."""
    for item in inputs:
        if process_local(item):
            raise UserError(
                f"input {item} is in this process's memory, which the Ray workers that decode images cannot read; "
                "use a local path, a file:// URL or object storage (s3://…) for --input"
            )
    if process_local(output):
        raise UserError(
            f"output {output} is in this process's memory, where the Ray workers that write the shards cannot "
            "write; use a local path, a file:// URL or object storage (s3://…) for --output"
        )


def prepare_build(
    inputs: list[str],
    output: str,
    profile: str = Profile.TINY.value,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    ray_cpus: int = 0,
    gpus_per_stage: list[str] | dict[str, float] | None = None,
    config: dict | None = None,
    reuse: str | None = None,
    sample: float | None = None,
) -> BuildPlan:
    """Check everything and plan the units from listings only. `config`: a config resolved earlier (the CLI's),
    used as it is instead of `config_file` + `overrides`; `reuse`: an earlier dataset whose kept model outputs the
    build takes where the stages' fingerprints agree (storage/kept.py); `sample`: build only a deterministic,
    stratified sample of the inputs (a fraction below 1, else a count; storage/sources.py), for a forecast."""
    pretrained = Profile.parse(profile).pretrained
    cfg = build_config_from_dict(config) if config is not None else load_build_config(config_file, overrides or [])
    if ray_cpus < 0:
        raise UserError(f"--ray-cpus must be 0 (all CPUs) or more, got {ray_cpus}")
    if ray_cpus:
        cfg.runtime.ray_cpus = ray_cpus
    cfg.runtime.gpus = cfg.runtime.gpus | parse_gpus(gpus_per_stage)
    cfg.check(MODEL_STAGES)
    if pretrained:
        from lambda_eclipse.models.preflight import check_paper_weights  # imports torch: only when needed

        check_paper_weights(cfg.models)
    _check_shared(inputs, output)
    out = location(output)  # an unknown protocol or a missing backend fails before the inputs are listed
    listing = list_inputs(inputs, cfg.input.extensions)
    sampled = sample_listing(listing, sample) if sample is not None else None
    _check_writable(out)
    meta = existing_meta(out, cfg.content_hash(), profile)
    if meta is not None and meta.get("sample") != sample:
        was = f"a sample (--sample {meta['sample']:g})" if meta.get("sample") is not None else "a full build"
        now = f"--sample {sample:g}" if sample is not None else "a full build"
        raise UserError(f"{out} holds {was}, but this run is {now}; use a new --output directory (a full build can "
                        f"take the sample's model outputs with --reuse {out})")
    complete = set(complete_shards(out))
    previous = read_manifest(out)
    if previous is None and complete:
        raise UserError(
            f"{out} holds complete shards but no {MANIFEST}, so its work units are unknown; "
            "use a new --output directory"
        )
    if sampled is not None:
        plan = plan_units(sampled.listing, cfg.input.unit_size, previous, tar_fraction=sampled.fraction)
    else:
        plan = plan_units(listing, cfg.input.unit_size, previous)
    for unit in plan.units:
        changes = plan.changed.get(unit.shard)
        if changes and unit.shard in complete:
            shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
            raise UserError(
                f"shard {unit.shard:05d} in {out} is complete, but its inputs ({unit.description}) changed since it "
                f"was built: {shown}; restore them, or use a new --output directory for changed inputs"
            )
    todo = [u for u in plan.units if u.shard in plan.active and u.shard not in complete]
    sources = _reuse_sources(reuse, out, todo) if reuse is not None else {}
    return BuildPlan(cfg, profile, out, plan.units, todo, complete, plan.new, plan.skipped, meta, listing.loops,
                     sources, sampled, sample, plan.active)


def _reuse_sources(reuse: str, out: Location, todo: list[WorkUnit]) -> dict[int, ReuseSource]:
    old = location(reuse)
    if str(old).rstrip("/") == str(out).rstrip("/"):
        raise UserError(f"--reuse {reuse} is the --output itself; a rerun into the same directory already keeps its "
                        "complete shards: pass the earlier dataset to --reuse and a new directory to --output")
    fs, path = resolve(old)
    if not fs.isdir(path):
        raise UserError(f"--reuse {reuse} does not exist or is no directory; pass a dataset that build-dataset wrote")
    return reuse_sources(old, todo)
