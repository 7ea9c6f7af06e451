"""Benchmark of build-dataset. Prints numbers; asserts nothing.

Default (`--profile tiny`): the flow's fixed start-up cost (Prefect + Ray + model load) and steady-state
images/s, from the slope between two input sizes of whole CLI runs (each in a fresh process, so every run
pays the real start-up); and the same for a plain in-process loop over the same stage objects writing the
same shards; then their ratio.

`--profile paper-shapes`: the paper's architectures at full size (random weights), each model stage alone
on a few inputs (CPU float32, or GPU bfloat16 when one is present): per-stage samples/s, the end-to-end
rate for an accepted sample, and the fraction of the FLOP bound of shared/DESIGN.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _slope(n1: int, t1: float, n2: int, t2: float) -> tuple[float, float]:
    """(steady-state items/s, fixed cost s) of t(n) = fixed + n / rate."""
    rate = (n2 - n1) / (t2 - t1)
    return rate, t1 - n1 / rate


def bench_tiny(n1: int, n2: int, size: int, workers: int) -> None:
    from lambda_eclipse.config import load_config
    from lambda_eclipse.storage.sources import plan_units
    from lambda_eclipse.synthetic import write_photos
    from lambda_eclipse.tasks.pipeline import build_stages, run_local
    from lambda_eclipse.tasks.plan import describe_clip
    from lambda_eclipse.tasks.shard import build_shard

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    settings = [f"resolution.min_side={min(size, 1024)}", f"input.unit_size={n2}"]
    dirs = {}
    for n in (n1, n2):
        dirs[n] = tmp / f"photos{n}"
        write_photos(dirs[n], n, size=size)

    flow_times = {}
    for n in (n1, n2):
        cmd = [sys.executable, "-m", "lambda_eclipse.cli", "build-dataset", "--input", str(dirs[n])]
        cmd += ["--output", str(tmp / f"flow{n}"), "--workers", str(workers)]
        cmd += [a for s in settings for a in ("--set", s)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        flow_times[n] = time.perf_counter() - start

    cfg = load_config(overrides=settings)
    start = time.perf_counter()
    stages = build_stages(cfg, "tiny")
    clip = describe_clip(cfg, "tiny")
    load = time.perf_counter() - start
    loop_times = {}
    for n in (n1, n2):
        (unit,), _ = plan_units([str(dirs[n])], cfg.input.unit_size, cfg.input.extensions)
        out = tmp / f"loop{n}"
        start = time.perf_counter()
        build_shard(unit, out, cfg, clip, lambda samples: run_local(samples, stages))
        loop_times[n] = time.perf_counter() - start

    flow_rate, flow_fixed = _slope(n1, flow_times[n1], n2, flow_times[n2])
    loop_rate, loop_fixed = _slope(n1, loop_times[n1], n2, loop_times[n2])
    print(f"tiny profile, {size}x{size} photos, {os.cpu_count()} CPUs, Ray workers={workers or 'all'}")
    print(f"flow  runs: {n1} images {flow_times[n1]:.1f} s, {n2} images {flow_times[n2]:.1f} s (whole CLI process)")
    print(f"loop  runs: {n1} images {loop_times[n1]:.1f} s, {n2} images {loop_times[n2]:.1f} s (+ model load {load:.1f} s)")
    print(f"flow  start-up (Prefect + Ray + model load): {flow_fixed:.1f} s; steady state {flow_rate:.2f} images/s")
    print(f"loop  start-up (model load): {load + loop_fixed:.1f} s; steady state {loop_rate:.2f} images/s")
    print(f"ratio flow / loop steady state: {flow_rate / loop_rate:.2f} (goal >= 0.8)")
    print(f"scratch: {tmp}")


# Per accepted sample, from shared/DESIGN.md: SAM ViT-H at 1024 px once, bigG for the target, the subject
# crops (2 here) and the edge map, BLIP-2 with ~30 tokens, Grounding DINO at 800 px.
TFLOP = {"caption": 0.7, "boxes": 0.5, "masks": 5.9, "features": 4 * 0.97 + 0.1}
H100_BF16_TFLOPS = 800.0


def _stage_inputs(n: int, side: int):
    """Inputs each model stage needs, made directly, so every stage is timed on well-formed data even
    though random full-size models would reject almost everything upstream."""
    import numpy as np

    from lambda_eclipse.sample import Detection, Noun, Sample, SourceRef
    from lambda_eclipse.synthetic import photo

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

    from lambda_eclipse.config import load_config
    from lambda_eclipse.tasks.pipeline import STAGES

    cfg = load_config(overrides=[f"runtime.dtype={dtype}"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"paper-shapes profile (random weights), {n} images of {side}x{side}, device {device}, dtype {dtype} "
          "(auto: bfloat16 on GPU, float32 on CPU)")
    rates = {}
    for stage_cls in STAGES:
        if not stage_cls.uses_model:
            continue
        start = time.perf_counter()
        stage = stage_cls(cfg, "paper-shapes")
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


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--profile", default="tiny", choices=("tiny", "paper-shapes"))
    args.add_argument("--n1", type=int, default=32, help="images in the small run")
    args.add_argument("--n2", type=int, default=256, help="images in the large run")
    args.add_argument("--size", type=int, default=512, help="side of the generated photos (tiny)")
    args.add_argument("--workers", type=int, default=0, help="CPUs for Ray (0: all)")
    args.add_argument("--images", type=int, default=2, help="images per stage (paper-shapes)")
    args.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="paper-shapes dtype")
    ns = args.parse_args()
    if ns.profile == "tiny":
        bench_tiny(ns.n1, ns.n2, ns.size, ns.workers)
    else:
        bench_paper_shapes(ns.images, ns.dtype)


if __name__ == "__main__":
    main()
