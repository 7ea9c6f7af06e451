"""Benchmark of build-dataset. Prints numbers; asserts nothing.

Default (`--profile tiny`, 1024² photos): planning time of `--dry-run` over 2,000 tars of 50 images; then the
flow run in this process as a client of a separate local Ray cluster, at two input sizes: the flow process's
own CPU per accepted sample (slope) and peak RSS, the start-up, and the steady-state images/s timed inside the
run (between the first and the last shard's completion); the plain in-process loop over the same stage objects
writing the same shards; and the ratio of the two steady states.

`--profile paper-shapes`: the paper's architectures at full size (random weights), each model stage alone
on a few inputs (CPU float32, or GPU bfloat16 when one is present): per-stage samples/s, the end-to-end
rate for an accepted sample, and the fraction of the FLOP bound (docs/design.md, "FLOP estimates").

`--cpu-side` (tiny profile, so that the models' own compute is negligible; one thread, everything in this process):
per accepted sample, the CPU milliseconds of each CPU stage, of each model stage's work outside its models' forward
passes (input preparation, post-processing), and of shard writing, at 1024² and 2048² synthetic photos; then the
funnel of the fixed 64-photo set (`--photo-set DIR` also writes its shard there, for comparing two builds).

`--control-plane` (`--units 1000,10000`): for each N, N one-photo units (`input.unit_size=1`, 16x16 JPEGs that the
resolution filter rejects from the header, so no decode and no model runs), built by the CLI in a fresh process
against its own `prefect server start` (fresh PREFECT_HOME) and a local Ray; sampled every 0.5 s: the CPU per
shard of the flow process alone and of the Prefect server (with its children), over the shards 10 %→30 % and
70 %→90 % of N (the growth from first to last), the flow's total CPU and peak RSS, the wall time, the artifacts
the server stores (count, JSON size of their data, count per key), the server's database size, and the events it
refused to publish. Goals: <= 3 ms flow and <= 5 ms server CPU per shard, the last within 30 % of the first,
database <= 50 MB, no refused event.

`--refilter` (tiny profile, the fixed 64-photo set, flows in this process on a local Ray): a build A at the default
thresholds, then a changed box-filter bound (`REFILTER`) built from scratch (B) and with `--reuse A` (C): for each, the
wall time, the accepted count and the model forward passes per stage (the shards' `computed_by_stage`, and
`reused_by_stage`); whether B's and C's feature rows are identical; and the GPU-hours of that re-filter for the paper's
100M photos from scratch and with `--reuse` (the stages' declared TFLOPs per sample times the inputs reaching them, at
`GPU_TFLOPS`; the printed line says what else it assumes).

`--forecast-accuracy` (`--photos 300`): the fixed 64-photo set plus synthetic photos, a fifth of all below
resolution.min_side; a 10 % sample (`--sample 0.1`) and the full build, at the default thresholds and with
`REFILTER`: the forecast's accepted count and 95 % interval against the full build's, and each stage's pass rate.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lambda_eclipse.profile import Profile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: its cluster is on loopback


def _steady_rate(out: Path) -> tuple[float, int]:
    """Images/s between the first and the last shard's completion (the stats file is written last), so the
    fixed start-up is not in it; and the number of shards it spans."""
    stats = sorted((out / "shards").glob("*_stats.json"), key=lambda p: p.stat().st_mtime)
    if len(stats) < 2:
        return float("nan"), len(stats)
    images = sum(json.loads(p.read_text())["inputs"] for p in stats[1:])
    return images / (stats[-1].stat().st_mtime - stats[0].stat().st_mtime), len(stats)


def _predicted(cfg, out: Path, nodes: int, cpus: float) -> tuple[float, float]:
    """The placement's predicted images/s for this cluster shape: from the declared stage costs, and from the costs
    the built shards measured (what a rebalancing build plans with)."""
    from storage.build_totals import BuildTotals
    from storage.layout import complete_shards, read_json, shard_paths
    from tasks.actors import UNIT_SECONDS, demands
    from tasks.executor import stage_costs
    from tasks.placement import plan_pools

    costs = BuildTotals()
    for shard in complete_shards(out):
        costs.add(read_json(shard_paths(out, shard)["stats"]))
    shape = [{"CPU": cpus}] * nodes
    measured, unit_seconds = stage_costs(costs)
    return (plan_pools(shape, demands(cfg), UNIT_SECONDS).predicted,
            plan_pools(shape, demands(cfg, measured), unit_seconds).predicted)


def bench_planning(tars: int, per_tar: int) -> None:
    """`build-dataset --dry-run` over `tars` tar files of `per_tar` members: listing only, a fresh CLI process."""
    import io
    import tarfile

    tmp = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    member = b"\xff\xd8" + b"x" * 64
    (tmp / "in").mkdir()
    for t in range(tars):
        with tarfile.open(tmp / "in" / f"{t:05d}.tar", "w") as tar:
            for i in range(per_tar):
                info = tarfile.TarInfo(f"{t:05d}{i:04d}.jpg")
                info.size = len(member)
                tar.addfile(info, io.BytesIO(member))
    cmd = [sys.executable, "-m", "flows.cli", "build-dataset", "--input", str(tmp / "in"),
           "--output", str(tmp / "out"), "--dry-run"]
    start = time.perf_counter()
    run = subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(f"planning: {tars} tars x {per_tar} images, --dry-run in a fresh process: {seconds:.2f} s (goal <= 5 s)")
    print(f"  {run.stdout.splitlines()[0]}")


def bench_tiny(n1: int, n2: int, size: int, cpus: float, nodes: int) -> None:
    """The flow in this process as a client of a separate Ray cluster, so that getrusage(SELF) is exactly the flow
    process's CPU (the Prefect API server and every Ray process are other processes)."""
    import resource

    from bench.local_cluster import local_cluster
    from flows.build_dataset import build_dataset
    from lambda_eclipse.synthetic import write_photos
    from storage.sources import plan_inputs
    from tasks.config import load_build_config
    from tasks.features import describe_clip
    from tasks.pipeline import build_stages, run_local, stage_fingerprints
    from tasks.unit import write_shard

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    unit = max(8, n1 // 2)
    settings = [f"resolution.min_side={min(size, 1024)}", f"input.unit_size={unit}"]
    dirs = {}
    for n in (n1, n2):
        dirs[n] = tmp / f"photos{n}"
        write_photos(dirs[n], n, size=size)

    flow = {}
    warm = tmp / "photos_warmup"
    write_photos(warm, 4, size=size)
    with local_cluster(nodes, cpus) as cluster:
        os.environ["RAY_ADDRESS"] = cluster.address
        # First call in a process: the Prefect API server starts, modules import; not a cost per sample.
        build_dataset(inputs=[str(warm)], output=str(tmp / "flow_warmup"), profile="tiny", overrides=settings)
        for n in (n1, n2):
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            summary = build_dataset(inputs=[str(dirs[n])], output=str(tmp / f"flow{n}"), profile="tiny",
                                    overrides=settings)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            flow[n] = (wall, cpu, summary["accepted"], *_steady_rate(tmp / f"flow{n}"))
        del os.environ["RAY_ADDRESS"]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB

    cfg = load_build_config(overrides=settings)
    start = time.perf_counter()
    stages = build_stages(cfg, "tiny")
    clip = describe_clip(next(s for s in stages if s.name == "features"))  # type: ignore[arg-type]
    load = time.perf_counter() - start
    loop, loop_units = {}, {}
    fingerprints = stage_fingerprints(cfg, "tiny")
    for n in (n1, n2):
        units = plan_inputs([str(dirs[n])], cfg.input.unit_size, cfg.input.extensions).units
        start = time.perf_counter()
        loop_units[n] = []
        for u in units:
            samples = list(u.iter_samples(cfg.input.extensions))
            at = time.perf_counter()
            write_shard(u, str(tmp / f"loop{n}"), cfg, clip, run_local(samples, stages), fingerprints)
            loop_units[n].append((len(samples), time.perf_counter() - at))
        loop[n] = time.perf_counter() - start

    (w1, c1, a1, _, _), (w2, c2, a2, flow_rate, spans) = flow[n1], flow[n2]
    steady = loop_units[n2][1:]  # the first unit pays first-call costs (allocator, kernels)
    loop_rate = sum(n for n, _ in steady) / sum(t for _, t in steady)
    cpu_per_sample = (c2 - c1) / (a2 - a1) * 1000 if a2 > a1 else float("nan")
    print(f"tiny profile, {size}x{size} photos, Ray cluster of {nodes} node(s) x {cpus} CPUs, {os.cpu_count()} cores, "
          f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"flow  runs: {n1} images {w1:.1f} s ({a1} accepted), {n2} images {w2:.1f} s ({a2} accepted)")
    print(f"flow  start-up (first shard of the {n1}-image run aside): {w1 - n1 / flow_rate:.1f} s")
    print(f"flow  steady state: {flow_rate:.2f} images/s (first to last of {spans} shards of {unit} images)")
    print(f"loop  runs: {n1} images {loop[n1]:.1f} s, {n2} images {loop[n2]:.1f} s (+ model load {load:.1f} s)")
    print(f"loop  steady state: {loop_rate:.2f} images/s (units after the first)")
    print(f"ratio flow / loop steady state: {flow_rate / loop_rate:.2f} (goal >= 0.8)")
    declared, measured = _predicted(cfg, tmp / f"flow{n2}", nodes, cpus)
    print(f"placement: predicted {measured:.2f} images/s from the stage costs the shards measured ({declared:.2f} from "
          f"the declared ones); measured {flow_rate:.2f}: ratio {flow_rate / measured:.2f} (goal 0.8-1.2)")
    print(f"flow process CPU: {c1:.2f} s / {c2:.2f} s; "
          f"per accepted sample (slope): {cpu_per_sample:.2f} ms (goal <= 3)")
    print(f"flow process peak RSS: {peak_rss:.2f} GiB (goal <= 1)")
    print(f"scratch: {tmp}")


# Per accepted sample, from docs/design.md: SAM ViT-H at 1024 px once, bigG for the target, the subject
# crops (2 here) and the edge map, BLIP-2 with ~30 tokens, Grounding DINO at 800 px.
TFLOP = {"caption": 0.7, "boxes": 0.5, "masks": 5.9, "features": 4 * 0.97 + 0.1}
H100_BF16_TFLOPS = 800.0


def _stage_inputs(n: int, side: int):
    """Inputs each model stage needs, made directly, so every stage is timed on well-formed data even
    though random full-size models would reject almost everything upstream."""
    import numpy as np

    from lambda_eclipse.synthetic import photo
    from storage.sample import Detection, Noun, Sample, SourceRef

    samples = []
    for i in range(n):
        image = np.asarray(photo(i, side, side))
        caption = "a dog next to a car"
        boxes = [np.array([0.1, 0.1, 0.6, 0.7], np.float32) * side, np.array([0.4, 0.3, 0.95, 0.9], np.float32) * side]
        subjects = [
            Detection("dog", 2, 5, boxes[0], 0.9, mask=np.ones((side, side), bool),
                      crop=np.asarray(photo(100 + i, 224, 224))),
            Detection("car", 16, 19, boxes[1], 0.8, mask=np.ones((side, side), bool),
                      crop=np.asarray(photo(200 + i, 224, 224))),
        ]
        samples.append(
            Sample(key=f"s{i}", source="bench", ref=SourceRef("bench"), image=image, caption=caption,
                   nouns=[Noun("dog", 2, 5), Noun("car", 16, 19)], detections=list(subjects), subjects=subjects,
                   edge=np.zeros_like(image))
        )
    return samples


def bench_paper_shapes(n: int, dtype: str, side: int = 1024) -> None:
    import gc

    import torch

    from tasks.config import load_build_config
    from tasks.pipeline import STAGES

    cfg = load_build_config(overrides=[f"runtime.dtype={dtype}"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"paper-shapes profile (random weights), {n} images of {side}x{side}, device {device}, dtype {dtype} "
          "(auto: bfloat16 on GPU, float32 on CPU)")
    rates = {}
    for stage_cls in STAGES:
        if not stage_cls.uses_model:
            continue
        start = time.perf_counter()
        stage = stage_cls.create(cfg, "paper-shapes")
        load = time.perf_counter() - start
        stage(_stage_inputs(1, side))  # warm-up: kernels, allocator, lazy init
        samples = _stage_inputs(n, side)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        stage(samples)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rates[stage_cls.name] = n / seconds
        flops = TFLOP.get(stage_cls.name)
        achieved = f", {flops * n / seconds:.2f} TFLOP/s" if flops else ""
        print(f"  {stage_cls.name:9s} load {load:6.1f} s   {rates[stage_cls.name]:8.3f} samples/s{achieved}")
        del stage
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    end_to_end = 1 / sum(1 / r for r in rates.values())
    bound = H100_BF16_TFLOPS / sum(TFLOP.values())
    print(f"end-to-end (stages in sequence on one device): {end_to_end:.3f} accepted samples/s")
    print(f"FLOP bound on one H100 (bf16 {H100_BF16_TFLOPS:.0f} TFLOP/s, {sum(TFLOP.values()):.1f} TFLOP/sample): "
          f"{bound:.1f} samples/s; fraction reached: {end_to_end / bound:.4f}")


def bench_placement() -> None:
    """The pools the placement (tasks/placement.py) gives on cluster shapes bigger than this machine, and the
    throughput they predict from the stages' costs (docs/design.md's FLOP estimates on GPUs; the declared tiny-profile
    CPU seconds on CPUs), against the cluster's bound. Pure arithmetic: no Ray, no GPU."""
    from tasks.actors import UNIT_SECONDS, demands
    from tasks.config import load_build_config
    from tasks.placement import CLUSTER_SHAPES, GPU_TFLOPS, ClusterShape, plan_pools

    budget = 0.06  # CPU seconds per accepted sample around the models at 2048² (docs/design.md, rules for scale)
    shapes = (ClusterShape("this machine", 1, os.cpu_count() or 1), *CLUSTER_SHAPES)
    cost = demands(load_build_config())
    print("stage costs per sample: " + ", ".join(f"{d.name} {d.tflops:g} TFLOP / {d.cpu_seconds * 1e3:g} ms CPU"
                                                  for d in cost) + f"; unit task {UNIT_SECONDS * 1e3:g} ms CPU (tiny), "
          f"{budget * 1e3:g} ms at 2048² on GPU nodes; {GPU_TFLOPS:g} TFLOP/s per GPU")
    for shape in shapes:
        nodes, cpus, gpus = shape.nodes, shape.cpus, shape.gpus
        plan = plan_pools(shape.nodes_resources(), cost, budget if gpus else UNIT_SECONDS)
        reserved = plan.reserved()
        print(f"\n{shape.name}:")
        for name in plan.pools:
            kinds: dict[tuple[float, float], int] = {}
            for p in plan.pools[name]:
                kinds[(p.cpus, p.gpus)] = kinds.get((p.cpus, p.gpus), 0) + p.actors
            print(f"  {name:9s} {plan.actors(name):4d} actors: "
                  + ", ".join(f"{n}×({c:g} CPU, {g:g} GPU)" for (c, g), n in sorted(kinds.items(), reverse=True)))
        print(f"  units     {plan.unit_slots:4d} slots × {plan.unit_cpus:g} CPU")
        used = (f"{reserved['GPU']:.2f} of {nodes * gpus} GPUs, " if gpus else "") + (
            f"{reserved['CPU']:.1f} of {nodes * cpus} CPUs reserved ({reserved['CPU'] / (nodes * cpus):.0%})")
        print(f"  {used}; predicted {plan.predicted:.1f} samples/s of a {plan.bound:.1f} samples/s bound "
              f"({plan.predicted / plan.bound:.1%})")
    one = plan_pools({"n0": {"CPU": 96.0, "GPU": 8.0}}, cost, budget)
    print(f"predicted on one 8-GPU node: {one.predicted / one.bound:.1%} of the FLOP bound")


def bench_balance(photos: int, size: int, cpus: float, nodes: int) -> None:
    """From equal pools (every model stage declared equally costly) on a local cluster, a build rebalanced after every
    shard: the pool sizes after each rebalance, from the stage times the shards measured."""
    from bench.local_cluster import local_cluster
    from flows.build_dataset import build_dataset
    from lambda_eclipse.synthetic import write_photos
    from tasks import actors
    from tasks.pipeline import STAGES

    tmp = Path(tempfile.mkdtemp(prefix="bench-balance-"))
    write_photos(tmp / "photos", photos, size=size)
    for stage in STAGES:  # equal declared costs: the measurements alone move the actors
        if stage.uses_model:
            stage.cpu_seconds = 0.03
    history: list[tuple[dict[str, float], dict[str, int]]] = []
    real = actors.StagePools.rebalance

    def recorded(self, measured, unit_seconds):
        line = real(self, measured, unit_seconds)
        history.append(({k: round(v * 1e3, 1) for k, v in measured.items()}, self.sizes()))
        return line

    actors.StagePools.rebalance = recorded
    with local_cluster(nodes, cpus) as cluster:
        os.environ["RAY_ADDRESS"] = cluster.address
        build_dataset(inputs=[str(tmp / "photos")], output=str(tmp / "out"), profile="tiny",
                      overrides=[f"resolution.min_side={min(size, 1024)}", "input.unit_size=4",
                                 "runtime.rebalance_every=1"])
        del os.environ["RAY_ADDRESS"]
    print(f"{nodes} node(s) x {cpus:g} CPUs, {photos} photos of {size}², equal declared costs; after each shard:")
    for i, (measured, sizes) in enumerate(history):
        print(f"  shard {i + 1:2d}: ms/sample {measured}  actors (serving) {sizes}")


def fixed_photo_set(directory: Path, count: int = 64) -> list[Path]:
    """The fixed photo set of the CPU-side benchmark and the funnel comparison: photo-like synthetic images
    (lambda_eclipse.synthetic) at 1024–2048 px with varied aspect ratios, mostly JPEG (some progressive, some
    with an EXIF rotation, one CMYK, one grayscale), a few PNGs, and four below the resolution filter. The same
    files on every run (seeded)."""
    import numpy as np
    from PIL import Image

    from lambda_eclipse.synthetic import photo

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(19)
    paths = []
    for i in range(count):
        long_side = int(rng.integers(1024, 2049))
        aspect = float(rng.choice([1.0, 1.0, 4 / 3, 3 / 2, 16 / 9]))
        short_side = max(1024, round(long_side / aspect)) if i % 16 != 15 else 800  # 4 below the filter
        width, height = (long_side, short_side) if i % 2 == 0 else (short_side, long_side)
        image = photo(1000 + i, width, height)
        path = directory / f"photo_{i:03d}.jpg"
        if i % 13 == 5:
            path = path.with_suffix(".png")
            image.save(path)
        elif i % 11 == 3:  # stored sideways with EXIF orientation 6 (rotate 90° clockwise to view)
            exif = Image.Exif()
            exif[0x0112] = 6
            image.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
        elif i == 7:
            image.convert("CMYK").save(path, quality=90)
        elif i == 9:
            image.convert("L").save(path, quality=90)
        else:
            image.save(path, quality=90, progressive=i % 4 == 1)
        paths.append(path)
    return paths


class _ForwardClock:
    """Process CPU time spent inside the models' forward passes, per stage: the bench subtracts it from the
    stage's CPU time, which leaves the work around the models (input preparation, post-processing)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, stage: str, obj, attr: str) -> None:
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.process_time() - start

        setattr(obj, attr, timed)

    def install(self, stages) -> None:
        for stage in stages:
            if stage.name == "caption":
                self.wrap("caption", stage.model, "generate")
            elif stage.name == "boxes":
                self.wrap("boxes", stage.detector.model, "forward")
            elif stage.name == "masks":
                for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
                    self.wrap("masks", getattr(stage.sam, part), "forward")
            elif stage.name == "features":
                self.wrap("features", stage.clip.model, "encode_image")
                self.wrap("features", stage.clip.model, "forward_intermediates")


def _nouns_forward(stage, clock: _ForwardClock) -> None:
    """spaCy's `nlp.pipe` is the nouns stage's model: all of its time is the model's."""
    nlp = stage.nlp
    inner = nlp.pipe

    def pipe(texts, *args, **kwargs):
        start = time.process_time()
        docs = list(inner(texts, *args, **kwargs))
        clock.seconds["nouns"] = clock.seconds.get("nouns", 0.0) + time.process_time() - start
        return iter(docs)

    nlp.pipe = pipe


def _cpu_side_run(stages, clip: dict, cfg, photos_dir: Path, out: Path, clock: _ForwardClock, batch: int = 16):
    """Every stage over the photos of `photos_dir` in batches, then the shard; CPU seconds per stage."""
    from storage.schema import feature_schema
    from storage.shard_writer import ShardWriter
    from storage.sources import plan_inputs
    from tasks.pipeline import STAGE_NAMES, stage_fingerprints

    units = plan_inputs([str(photos_dir)], 10_000, cfg.input.extensions).units
    samples = [s for u in units for s in u.iter_samples(cfg.input.extensions)]
    clock.seconds.clear()
    cpu: dict[str, float] = {}
    for i in range(0, len(samples), batch):
        chunk = samples[i : i + batch]
        for stage in stages:
            start = time.process_time()
            stage(chunk)
            cpu[stage.name] = cpu.get(stage.name, 0.0) + time.process_time() - start
    start = time.process_time()
    writer = ShardWriter(str(out), 0, feature_schema(clip["embed_dim"], clip["text_width"]),
                         cfg.split.train_fraction, STAGE_NAMES, stage_fingerprints(cfg, "tiny"))
    for sample in samples:
        writer.add(sample)
    stats = writer.close({"description": str(photos_dir), "fingerprint": ""})
    cpu["write"] = time.process_time() - start
    return cpu, dict(clock.seconds), stats


def bench_cpu_side(n: int, sizes: tuple[int, ...], photo_set: Path | None) -> None:
    import cv2
    import torch

    from lambda_eclipse.synthetic import write_photos
    from tasks.config import load_build_config
    from tasks.features import describe_clip
    from tasks.pipeline import build_stages

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = load_build_config()
    stages = build_stages(cfg, "tiny")
    clip = describe_clip(next(s for s in stages if s.name == "features"))  # type: ignore[arg-type]
    clock = _ForwardClock()
    clock.install(stages)
    _nouns_forward(next(s for s in stages if s.name == "nouns"), clock)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cpu-side-"))
    warm = tmp / "warm"
    write_photos(warm, 4, size=1024, start=500)
    _cpu_side_run(stages, clip, cfg, warm, tmp / "warm_out", clock)  # first calls: allocator, lazy imports
    print(f"CPU side of build-dataset (tiny profile, 1 thread, in one process), per accepted sample, CPU ms; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    totals = {}
    for size in sizes:
        photos = tmp / f"photos{size}"
        write_photos(photos, n, size=size)
        cpu, forward, stats = _cpu_side_run(stages, clip, cfg, photos, tmp / f"out{size}", clock)
        accepted = max(1, stats["accepted"])
        per = {name: seconds * 1000 / accepted for name, seconds in cpu.items()}
        outside = {name: per[name] - forward.get(name, 0.0) * 1000 / accepted for name in per}
        cpu_stages = {s.name: per[s.name] for s in stages if not s.uses_model}
        model_stages = {s.name: outside[s.name] for s in stages if s.uses_model}
        hashing = _hash_pass_ms(photos, cfg) * stats["inputs"] / accepted  # the duplicates pass, before the units
        total = sum(cpu_stages.values()) + sum(model_stages.values()) + per["write"] + hashing
        totals[size] = total
        print(f"\n{size}² photos: {stats['accepted']} accepted of {stats['inputs']} "
              f"(load average {os.getloadavg()[0]:.2f})")
        print("  CPU stages:           " + ", ".join(f"{k} {v:.1f}" for k, v in cpu_stages.items())
              + f"  = {sum(cpu_stages.values()):.1f}")
        print("  model stages outside their forward passes: "
              + ", ".join(f"{k} {v:.1f}" for k, v in model_stages.items()) + f"  = {sum(model_stages.values()):.1f}")
        print("  (forward passes, tiny models, not counted: "
              + ", ".join(f"{k} {forward.get(k, 0.0) * 1000 / accepted:.1f}" for k in model_stages) + ")")
        print(f"  shard writing:        {per['write']:.1f}")
        print(f"  duplicates pass:      {hashing:.1f} (tasks/copies.py's hashing of every input, before the units)")
        print(f"  total:                {total:.1f} ms")
    if photo_set is not None:
        photos = tmp / "photo_set"
        fixed_photo_set(photos)
        _, _, stats = _cpu_side_run(stages, clip, cfg, photos, photo_set, clock)
        print(f"\nfixed photo set (64 photos, 1024–2048 px): {stats['accepted']} accepted; shard in {photo_set}")
        for row in stats["funnel"]:
            print(f"  {row['stage']:17s} in {row['in']:3d}  rejected {row['rejected']:3d}")
    for size in sizes:
        print(f"CPU per accepted sample at {size}²: {totals[size]:.0f} ms")


def _hash_pass_ms(photos: Path, cfg) -> float:
    """CPU ms per input of the duplicates pass's hashing (tasks/copies.py: `hash_unit`) over a folder."""
    from storage.sources import plan_inputs
    from tasks.copies import hash_unit

    units = plan_inputs([str(photos)], cfg.input.unit_size, cfg.input.extensions).units
    out = Path(tempfile.mkdtemp(prefix="bench-hash-"))
    start = time.process_time()
    hashed = sum(hash_unit(unit, out, cfg) for unit in units)
    return (time.process_time() - start) * 1000 / max(1, hashed)


# A box-filter bound that rejects about half of what the default (0.3) keeps on the fixed 64-photo set (tiny profile:
# the largest box logit of most samples lies between 0.7 and 0.97), so that a re-filter changes the dataset.
REFILTER = "boxes.min_logit=0.9"
PAPER_INPUTS = 100_000_000  # the paper build's inputs, for the GPU-hours of a re-filter at that size


def _shard_stats(out: Path) -> list[dict]:
    from storage.layout import complete_shards, read_json, shard_paths

    return [read_json(shard_paths(out, shard)["stats"]) for shard in complete_shards(out)]


def _totals(out: Path):
    from storage.build_totals import BuildTotals

    totals = BuildTotals()
    for stats in _shard_stats(out):
        totals.add(stats)
    return totals


def _feature_rows(out: Path):
    """Every shard's feature rows in one table, sorted by key."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.layout import complete_shards, shard_paths

    table = pa.concat_tables([pq.read_table(shard_paths(out, s)["parquet"]) for s in complete_shards(out)])
    return table.sort_by("key")


def _timed_build(**kwargs) -> tuple[float, dict]:
    from flows.build_dataset import build_dataset

    start = time.perf_counter()
    summary = build_dataset(profile="tiny", **kwargs)
    seconds = time.perf_counter() - start
    assert isinstance(summary, dict)  # a flow called without return_state returns its value
    return seconds, summary


@contextlib.contextmanager
def _flow_cluster(cpus: float, tmp: Path):
    """A local Ray cluster of one node that the flows in this process join (RAY_ADDRESS), with one small build done
    first: the Prefect API server's start and the imports are not in the builds timed after it."""
    from bench.local_cluster import local_cluster
    from lambda_eclipse.synthetic import write_photos

    write_photos(tmp / "photos_warmup", 4, size=1024, start=500)
    with local_cluster(1, cpus) as cluster:
        os.environ["RAY_ADDRESS"] = cluster.address
        try:
            _timed_build(inputs=[str(tmp / "photos_warmup")], output=str(tmp / "warmup"))
            yield
        finally:
            del os.environ["RAY_ADDRESS"]


def bench_refilter(unit: int, cpus: float) -> None:
    """A re-filter with a changed box-filter bound on the fixed 64-photo set: a build from scratch against
    `--reuse` of the first build (wall time, accepted, model forward passes per stage), whether the two datasets'
    feature rows are identical, and the GPU-hours each would take for the paper's 100M photos."""
    from tasks.config import load_build_config
    from tasks.pipeline import STAGES, stage_fingerprints
    from tasks.placement import GPU_TFLOPS

    tmp = Path(tempfile.mkdtemp(prefix="bench-refilter-"))
    photos = tmp / "photos"
    fixed_photo_set(photos)
    settings = [f"input.unit_size={unit}"]
    runs = {
        "A": ("full build, default thresholds", {}),
        "B": (f"{REFILTER}, from scratch", {"overrides": [*settings, REFILTER]}),
        "C": (f"{REFILTER}, --reuse A", {"overrides": [*settings, REFILTER], "reuse": str(tmp / "A")}),
    }
    results: dict[str, tuple[float, dict]] = {}
    with _flow_cluster(cpus, tmp):
        for name, (_, extra) in runs.items():
            results[name] = _timed_build(inputs=[str(photos)], output=str(tmp / name),
                                         **({"overrides": settings} | extra))
    model_stages = [s for s in STAGES if s.uses_model]
    print(f"re-filter: the fixed 64-photo set (1024–2048 px), tiny profile, units of {unit}, local Ray of 1 node x "
          f"{cpus:g} CPUs, {os.cpu_count()} cores, no GPU; load average at the end {os.getloadavg()[0]:.2f}")
    totals = {}
    for name, (what, _) in runs.items():
        wall, summary = results[name]
        totals[name] = t = _totals(tmp / name)
        computed = {s.name: t.computed.get(s.name, 0) for s in model_stages}
        reused = {s.name: t.reused.get(s.name, 0) for s in model_stages}
        print(f"{name} ({what}): {wall:.1f} s, {summary['accepted']} accepted of {summary['inputs']}; model forward "
              f"passes (samples fed to each model) {sum(computed.values())}: "
              + ", ".join(f"{k} {v}" for k, v in computed.items())
              + f"; reused from A {sum(reused.values())}: " + ", ".join(f"{k} {v}" for k, v in reused.items()))
    same = _feature_rows(tmp / "B").equals(_feature_rows(tmp / "C"))
    print(f"B and C feature rows (every shard's parquet, sorted by key) identical: {same}")
    print(f"C / B wall time: {results['C'][0] / results['B'][0]:.2f}")

    # Which model stages a --reuse re-filter computes again: those whose chained fingerprint the new bound changed
    old, new = (stage_fingerprints(load_build_config(overrides=o), "tiny") for o in (settings, [*settings, REFILTER]))
    again = [s.name for s in model_stages if old[s.name] != new[s.name]]
    scratch, reuse = {}, {}
    for stage in model_stages:
        share = totals["B"].funnel[stage.name][0] / totals["B"].inputs  # inputs reaching the stage, new bound
        hours = stage.tflops * share * PAPER_INPUTS / GPU_TFLOPS / 3600
        scratch[stage.name], reuse[stage.name] = hours, hours if stage.name in again else 0.0
    shares = {name: {s.name: totals[name].funnel[s.name][0] / totals[name].inputs for s in model_stages}
              for name in ("A", "B")}
    print(f"\nGPU-hours of the re-filter for the paper's {PAPER_INPUTS:,} photos (stages recomputed with --reuse: "
          f"{', '.join(again)}):")
    print("  share of inputs reaching each model stage: A " + ", ".join(f"{k} {v:.3f}" for k, v in shares["A"].items())
          + "; after the re-filter " + ", ".join(f"{k} {v:.3f}" for k, v in shares["B"].items()))
    for stage in model_stages:
        print(f"  {stage.name:9s} {stage.tflops:4.1f} TFLOP/sample: from scratch {scratch[stage.name]:9,.0f}, "
              f"--reuse {reuse[stage.name]:9,.0f}")
    saved = sum(scratch.values()) - sum(reuse.values())
    print(f"  total: from scratch {sum(scratch.values()):,.0f} GPU-hours, --reuse {sum(reuse.values()):,.0f}: "
          f"{saved:,.0f} GPU-hours saved ({saved / sum(scratch.values()):.0%})")
    print(f"  assumes: each model stage's declared TFLOPs per sample (Stage.tflops, docs/design.md's FLOP estimates of "
          f"the paper's models) at {GPU_TFLOPS:g} TFLOP/s per GPU (dense bf16, the FLOP bound: full utilisation, no "
          f"batching or transfer loss; a utilisation below it, the same for every stage, scales both totals alike "
          f"and leaves the share saved as it is); the fixed set's shares of inputs reaching each stage (synthetic "
          f"photos, random tiny models) holding at 100M; nouns (spaCy) on CPUs, no GPU time; CPU stages, decoding, "
          f"reading the kept outputs and writing shards not counted")
    print(f"scratch: {tmp}")


def bench_forecast_accuracy(photos_total: int, unit: int, cpus: float) -> None:
    """A 10 % sample's forecast against the full build of the same photos: the fixed 64-photo set plus synthetic
    photos, a fifth of all of them below resolution.min_side, at the default thresholds and with the re-filter's
    box-filter bound (so that a stage besides the resolution filter rejects a share)."""
    from lambda_eclipse.synthetic import write_photos

    tmp = Path(tempfile.mkdtemp(prefix="bench-forecast-"))
    photos = tmp / "photos"
    fixed_photo_set(photos / "fixed")  # 60 pass the resolution filter, 4 below
    below = round(photos_total * 0.2) - 4
    above = photos_total - 64 - below
    write_photos(photos / "big", above, size=1024, start=2000)
    write_photos(photos / "small", below, size=512, start=4000)  # below resolution.min_side=1024
    print(f"forecast accuracy: {photos_total} photos (the fixed 64-photo set, {above} at 1024², {below} at 512²: "
          f"{above + 60} pass the resolution filter, {below + 4} ({(below + 4) / photos_total:.0%}) do not), "
          f"tiny profile, units of {unit}, local Ray of 1 node x {cpus:g} CPUs, {os.cpu_count()} cores, no GPU")
    with _flow_cluster(cpus, tmp):
        for i, extra in enumerate(([], [REFILTER])):
            settings = [f"input.unit_size={unit}", *extra]
            sample_wall, sample = _timed_build(inputs=[str(photos)], output=str(tmp / f"sample{i}"),
                                               overrides=settings, sample=0.1)
            full_wall, full = _timed_build(inputs=[str(photos)], output=str(tmp / f"full{i}"), overrides=settings)
            outlook, actual = sample["forecast"], _totals(tmp / f"full{i}")
            a = outlook["accepted"]
            inside = a["low"] <= full["accepted"] <= a["high"]
            print(f"\n{' '.join(extra) or 'default thresholds'}: sample of {sample['inputs']} inputs "
                  f"({sample_wall:.1f} s, {sample['accepted']} accepted); full build of {full['inputs']} "
                  f"({full_wall:.1f} s)")
            print(f"  accepted: forecast {a['expected']} (95 % interval {a['low']}–{a['high']}), actual "
                  f"{full['accepted']}: inside {'yes' if inside else 'NO'}")
            for row in outlook["stages"]:
                count, rejected = actual.funnel.get(row["stage"], (0, 0))
                rate = (count - rejected) / count if count else None
                if row["pass_rate"] is None or rate is None:
                    print(f"  {row['stage']:17s} no input reached it in the sample or the full build")
                    continue
                ok = row["low"] <= rate <= row["high"]
                print(f"  {row['stage']:17s} pass rate forecast {row['pass_rate']:6.1%} ({row['low']:6.1%}–"
                      f"{row['high']:6.1%}, {row['in']} in), actual {rate:6.1%} ({count} in): "
                      f"inside {'yes' if ok else 'NO'}")
    print(f"scratch: {tmp}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_tree(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to `proc` and every descendant it has now, a bounded wait, then SIGKILL to what is left."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _cpu_seconds(proc, tree: bool) -> float:
    """User + system CPU seconds of `proc`; with `tree`, also of its live descendants and its reaped children."""
    import psutil

    t = proc.cpu_times()
    total = t.user + t.system
    if tree:
        total += t.children_user + t.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
    return total


def _peak_rss(proc) -> int:
    """The process's peak RSS so far in bytes (VmHWM on Linux), at least its RSS now."""
    rss = proc.memory_info().rss
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = max(rss, int(line.split()[1]) * 1024)
    return rss


def _exited(pid: int) -> bool:
    """Whether the child `pid` has exited, without reaping it (its final CPU times stay readable)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _at(samples: list[tuple[float, int, float, float]], shards: float, column: int) -> float:
    """The value of `column` when `shards` shards were complete, interpolated linearly between samples."""
    for before, after in zip(samples, samples[1:], strict=False):
        if before[1] < shards <= after[1]:
            return before[column] + (after[column] - before[column]) * (shards - before[1]) / (after[1] - before[1])
    return float("nan")


def _artifacts(api: str) -> tuple[int, int, dict[str, int]]:
    """Every artifact the server stores, paged through its filter endpoint (raw JSON: Prefect 3.8's client sends null
    filters the server rejects): their count, the JSON size of their data, and the count per key."""
    import httpx

    count, size, keys = 0, 0, {}
    offset = 0
    with httpx.Client(base_url=api, timeout=60) as client:
        while True:
            for attempt in range(10):  # the server answers 503 while its SQLite database is locked
                response = client.post("/artifacts/filter", json={"sort": "CREATED_DESC", "limit": 200,
                                                                  "offset": offset})
                if response.status_code != 503 or attempt == 9:
                    break
                time.sleep(1)
            response.raise_for_status()
            page = response.json()
            if not page:
                return count, size, keys
            for artifact in page:
                count += 1
                size += len(json.dumps(artifact["data"]))
                keys[str(artifact.get("key"))] = keys.get(str(artifact.get("key")), 0) + 1
            offset += len(page)


@dataclasses.dataclass
class _ControlPlane:
    """One `--control-plane` build's numbers: CPU per shard in ms, CPU in s, RSS in MiB, database in MB."""

    shards: int
    wall: float
    code: int
    summary: str
    flow_first: float
    flow_last: float
    server_first: float
    server_last: float
    flow_cpu: float
    server_cpu: float
    peak_rss: float
    artifacts: int
    artifact_bytes: int
    keys: dict[str, int]
    database: float
    refused: int


def _control_plane_run(n: int, tmp: Path) -> _ControlPlane:
    """One build of `n` one-photo units, each rejected from its header, against its own Prefect server; the numbers
    of `bench_control_plane`."""
    import httpx
    import psutil
    from PIL import Image

    photos = tmp / "photos"
    photos.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 80, 40)).save(buffer, "JPEG")  # below resolution.min_side: header-only reject
    jpeg = buffer.getvalue()
    for i in range(n):
        (photos / f"{i:07d}.jpg").write_bytes(jpeg)
    home, out, port = tmp / "prefect-home", tmp / "out", _free_port()
    home.mkdir()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "RAY_ADDRESS"} | {
        "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    root = Path(__file__).resolve().parents[1]
    server_log = tmp / "server.log"
    with open(server_log, "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    cli = None
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start in 120 s:\n{server_log.read_text()[-3000:]}")
            time.sleep(0.5)
        cli_log = tmp / "cli.log"
        limit = max(900.0, 0.11 * n)  # 3 h for 100,000 units
        with open(cli_log, "ab") as log:
            start = time.monotonic()
            cli = subprocess.Popen([sys.executable, "-m", "flows.cli", "build-dataset", "--input", str(photos),
                                    "--output", str(out), "--set", "input.unit_size=1"], cwd=root,
                                   env=env | {"PREFECT_API_URL": api}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        flow, srv = psutil.Process(cli.pid), psutil.Process(server.pid)
        samples: list[tuple[float, int, float, float]] = []
        flow_cpu, server_cpu, peak, timed_out = 0.0, 0.0, 0, False
        shards_dir = out / "shards"
        while True:
            done = _exited(cli.pid)  # before sampling: the last sample then has the exited process's final times
            with contextlib.suppress(psutil.Error):
                flow_cpu = _cpu_seconds(flow, tree=False)
                peak = max(peak, _peak_rss(flow))
            with contextlib.suppress(psutil.Error):
                server_cpu = _cpu_seconds(srv, tree=True)
            try:
                shards = sum(1 for e in os.scandir(shards_dir) if e.name.endswith("_stats.json"))
            except FileNotFoundError:
                shards = 0
            samples.append((time.monotonic() - start, shards, flow_cpu, server_cpu))
            if done:
                break
            if time.monotonic() - start > limit:
                timed_out = True
                break
            time.sleep(0.5)
        wall = time.monotonic() - start
        if timed_out:
            _stop_tree(cli)
        code = cli.wait()
        if code != 0 or timed_out:
            how = f"timed out after {limit:.0f} s" if timed_out else f"exit {code}"
            print(f"  {n:,} units: build-dataset {how}; last lines of {cli_log}:\n{cli_log.read_text()[-4000:]}",
                  flush=True)
        summary = next((line for line in reversed(cli_log.read_text().splitlines()) if " accepted, " in line), "")
        count, size, keys = _artifacts(api)
    finally:
        if cli is not None and cli.poll() is None:
            _stop_tree(cli)
        _stop_tree(server)
    database = sum(p.stat().st_size for p in (home / "prefect.db", home / "prefect.db-wal", home / "prefect.db-shm")
                   if p.exists())
    refused = sum("Refusing to publish event" in line for line in server_log.read_text(errors="replace").splitlines())

    def per_shard(column: int, a: float, b: float) -> float:
        return (_at(samples, b * n, column) - _at(samples, a * n, column)) / ((b - a) * n) * 1000

    return _ControlPlane(
        shards=samples[-1][1], wall=wall, code=code, summary=summary,
        flow_first=per_shard(2, 0.1, 0.3), flow_last=per_shard(2, 0.7, 0.9),
        server_first=per_shard(3, 0.1, 0.3), server_last=per_shard(3, 0.7, 0.9),
        flow_cpu=samples[-1][2], server_cpu=samples[-1][3], peak_rss=peak / 2**20,
        artifacts=count, artifact_bytes=size, keys=dict(sorted(keys.items())), database=database / 1e6,
        refused=refused,
    )


def _growth(first: float, last: float) -> float:
    return last / first - 1 if first else float("nan")


def bench_control_plane(units: tuple[int, ...]) -> None:
    """Per work unit, the control plane's own cost: builds of N one-photo units that are all rejected from the
    header (no decode, no model), so that what is left is the flow process and the Prefect server."""
    print(f"control plane: N one-photo units (16x16 JPEGs, all rejected at resolution.min_side from the header), "
          f"build-dataset CLI against its own Prefect server and local Ray; {os.cpu_count()} cores")
    results: dict[int, _ControlPlane] = {}
    for n in units:
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-control-plane-{n}-"))
        try:
            r = results[n] = _control_plane_run(n, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"{n:,} units: {r.shards} shards in {r.wall:.1f} s (exit {r.code}); "
              f"flow CPU per shard first {r.flow_first:.2f} ms, last {r.flow_last:.2f} ms "
              f"({_growth(r.flow_first, r.flow_last):+.0%}) (goal <= 3 ms, last within 30 % of first); "
              f"server CPU per shard first {r.server_first:.2f} ms, last {r.server_last:.2f} ms "
              f"({_growth(r.server_first, r.server_last):+.0%}) (goal <= 5 ms, last within 30 % of first); "
              f"flow CPU {r.flow_cpu:.1f} s, server CPU {r.server_cpu:.1f} s, flow peak RSS {r.peak_rss:.0f} MiB; "
              f"artifacts {r.artifacts} ({r.artifact_bytes:,} bytes of data JSON; per key {json.dumps(r.keys)}); "
              f"database {r.database:.1f} MB (goal <= 50 MB); refused events {r.refused} (goal 0); "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        if r.summary:
            print(f"  {r.summary}", flush=True)
    n = 10_000 if 10_000 in results else max(results)
    print(f"flow CPU per shard at {n:,} units: first {results[n].flow_first:.2f} ms, "
          f"last {results[n].flow_last:.2f} ms")


def main() -> None:
    args = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    args.add_argument("--profile", type=Profile, default=Profile.TINY, choices=(Profile.TINY, Profile.PAPER_SHAPES))
    args.add_argument("--n1", type=int, default=24, help="images in the small run")
    args.add_argument("--n2", type=int, default=384, help="images in the large run (32 shards: a stable steady state)")
    args.add_argument("--size", type=int, default=1024, help="side of the generated photos (tiny)")
    args.add_argument("--cpus", type=float, default=2, help="CPUs per Ray node (tiny)")
    args.add_argument("--nodes", type=int, default=1, help="Ray nodes (tiny)")
    args.add_argument("--tars", type=int, default=2000, help="tars for the planning benchmark (0: skip it)")
    args.add_argument("--images", type=int, default=2, help="images per stage (paper-shapes)")
    args.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="paper-shapes dtype")
    args.add_argument("--placement", action="store_true",
                      help="only the pools the placement gives on bigger cluster shapes, and the throughput predicted")
    args.add_argument("--balance", action="store_true",
                      help="only the pool sizes over time of a build rebalanced after every shard, from equal pools")
    args.add_argument("--cpu-side", action="store_true", help="CPU per accepted sample around the models (tiny)")
    args.add_argument("--sizes", default="1024,2048", help="photo sides for --cpu-side")
    args.add_argument("--count", type=int, default=24, help="photos per size for --cpu-side")
    args.add_argument("--photo-set", type=Path, help="--cpu-side: also build the fixed 64-photo set's shard here")
    args.add_argument("--control-plane", action="store_true",
                      help="only the flow process's and the Prefect server's CPU per shard over N one-photo units")
    args.add_argument("--units", default="1000,10000", help="--control-plane: unit counts N, a comma list")
    args.add_argument("--refilter", action="store_true",
                      help=f"only a re-filter ({REFILTER}) of the fixed 64-photo set from scratch against --reuse")
    args.add_argument("--forecast-accuracy", action="store_true",
                      help="only a 10 %% sample's forecast against the full build")
    args.add_argument("--photos", type=int, default=300, help="--forecast-accuracy: photos in all (at least 80)")
    args.add_argument("--unit-size", type=int, default=16, help="--refilter, --forecast-accuracy: images per unit")
    ns = args.parse_args()
    if ns.placement:
        bench_placement()
    elif ns.refilter:
        bench_refilter(ns.unit_size, ns.cpus)
    elif ns.forecast_accuracy:
        bench_forecast_accuracy(ns.photos, ns.unit_size, ns.cpus)
    elif ns.control_plane:
        bench_control_plane(tuple(int(u) for u in ns.units.split(",")))
    elif ns.balance:
        bench_balance(ns.n1, min(ns.size, 256), ns.cpus, ns.nodes)
    elif ns.cpu_side:
        bench_cpu_side(ns.count, tuple(int(s) for s in ns.sizes.split(",")), ns.photo_set)
    elif ns.profile is Profile.TINY:
        if ns.tars:
            bench_planning(ns.tars, 50)
        bench_tiny(ns.n1, ns.n2, ns.size, ns.cpus, ns.nodes)
    else:
        bench_paper_shapes(ns.images, ns.dtype)


if __name__ == "__main__":
    main()
