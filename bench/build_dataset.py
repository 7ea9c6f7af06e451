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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

    from flows.build_dataset import build_dataset
    from lambda_eclipse.ray_session import local_cluster
    from lambda_eclipse.synthetic import write_photos
    from storage.sources import plan_inputs
    from tasks.config import load_build_config
    from tasks.features import describe_clip
    from tasks.pipeline import build_stages, run_local
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
    for n in (n1, n2):
        units = plan_inputs([str(dirs[n])], cfg.input.unit_size, cfg.input.extensions).units
        start = time.perf_counter()
        loop_units[n] = []
        for u in units:
            samples = list(u.iter_samples(cfg.input.extensions))
            at = time.perf_counter()
            write_shard(u, str(tmp / f"loop{n}"), cfg, clip, run_local(samples, stages))
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
    from tasks.placement import GPU_TFLOPS, plan_pools

    budget = 0.06  # CPU seconds per accepted sample around the models at 2048² (docs/design.md, rules for scale)
    shapes = [
        ("this machine", 1, os.cpu_count() or 1, 0, UNIT_SECONDS),
        ("3 nodes x 6 CPUs (the local test cluster)", 3, 6, 0, UNIT_SECONDS),
        ("one 64-core CPU node", 1, 64, 0, UNIT_SECONDS),
        ("one node of 8 H100-class GPUs, 96 CPUs", 1, 96, 8, budget),
        ("16 such nodes", 16, 96, 8, budget),
    ]
    cost = demands(load_build_config())
    print("stage costs per sample: " + ", ".join(f"{d.name} {d.tflops:g} TFLOP / {d.cpu_seconds * 1e3:g} ms CPU"
                                                  for d in cost) + f"; unit task {UNIT_SECONDS * 1e3:g} ms CPU (tiny), "
          f"{budget * 1e3:g} ms at 2048² on GPU nodes; {GPU_TFLOPS:g} TFLOP/s per GPU")
    for label, nodes, cpus, gpus, unit in shapes:
        cluster = {f"n{i}": {"CPU": float(cpus), "GPU": float(gpus)} if gpus else {"CPU": float(cpus)}
                   for i in range(nodes)}
        plan = plan_pools(cluster, cost, unit)
        reserved = plan.reserved()
        print(f"\n{label}:")
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
    from flows.build_dataset import build_dataset
    from lambda_eclipse.ray_session import local_cluster
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
    from tasks.pipeline import STAGE_NAMES

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
                         cfg.split.train_fraction, STAGE_NAMES)
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
        total = sum(cpu_stages.values()) + sum(model_stages.values()) + per["write"]
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


def main() -> None:
    args = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    args.add_argument("--profile", default="tiny", choices=("tiny", "paper-shapes"))
    args.add_argument("--n1", type=int, default=24, help="images in the small run")
    args.add_argument("--n2", type=int, default=96, help="images in the large run")
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
    ns = args.parse_args()
    if ns.placement:
        bench_placement()
    elif ns.balance:
        bench_balance(ns.n1, min(ns.size, 256), ns.cpus, ns.nodes)
    elif ns.cpu_side:
        bench_cpu_side(ns.count, tuple(int(s) for s in ns.sizes.split(",")), ns.photo_set)
    elif ns.profile == "tiny":
        if ns.tars:
            bench_planning(ns.tars, 50)
        bench_tiny(ns.n1, ns.n2, ns.size, ns.cpus, ns.nodes)
    else:
        bench_paper_shapes(ns.images, ns.dtype)


if __name__ == "__main__":
    main()
