"""Benchmark of train-prior. Prints numbers; asserts nothing.

Writes a synthetic dataset at the profile's embedding size (paper: d = 1280, ≈197 KB of fp16 text states per
sample), then measures, after `--warmup` steps:
  - loop:      samples/s of the full training loop (`run_training`: one Ray Train worker holding as many CPUs as
               this process has torch threads; shards read from disk by the DataLoader workers, interleaving,
               forward, backward, clipping, AdamW, schedule, logging, checkpoints through Ray Train);
  - in memory: samples/s of the model's forward + backward alone, on the same batches already on the device;
and their ratio: how close the loop comes to the model's own speed (goal ≥ 0.9 for the paper size on CPU with
batch 32). Each as the median and the best of the per-step rates: on a shared machine the best step is the one
least slowed by other processes, so the ratio of the bests is the steadier number there. On a GPU the precision is
bf16 autocast (runtime.precision=auto) and the batch defaults to the paper's 512.

`--loader-only` measures the training loader (`prior.data.loader`, the default shuffle buffer) alone: batches of
`--batch-size` (default 256) taken from it as fast as it makes them, over `--steps` batches after `--warmup`, on
`--shards` (default 4) shards of `--shard-rows` (default 512) training samples, so that the measured batches span
several epochs of every loader stream (every row group read, decoded and shuffled); its last line is
`loader samples/s per process: N` (what one trainer process receives, all its `--loader-workers` together).

    python bench/train_prior.py [--profile paper|tiny] [--batch-size N] [--steps 8] [--warmup 2] [--loader-workers 2]
    python bench/train_prior.py --loader-only [--batch-size 256] [--steps 24] [--warmup 4] [--loader-workers 0|2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

from lambda_eclipse.device import torch_dtype
from lambda_eclipse.ray_session import TORCH_ENV

os.environ.update(TORCH_ENV)  # before torch is imported: the loader here runs as in a Ray Train worker

import torch

from lambda_eclipse.profile import Profile
from prior.config import PRIOR_PROFILES, load_train_config
from prior.data import loader, open_dataset, to_device
from prior.driver import run_training
from prior.loss import prior_loss
from prior.model import EclipsePrior
from prior.prepare import prepare_training
from storage.run_dir import read_metrics
from storage.synthetic_features import write_feature_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Profile, default=Profile.PAPER, choices=PRIOR_PROFILES)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 256 with --loader-only, else 512 on a GPU and 32 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 24 with --loader-only, else 8")
    parser.add_argument("--warmup", type=int, default=None, help="default: 4 with --loader-only, else 2")
    parser.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers (data.loader_workers)")
    parser.add_argument("--shards", type=int, default=None, help="default: 4 with --loader-only, else 2")
    parser.add_argument("--shard-rows", type=int, default=512, help="training samples per shard (--loader-only)")
    parser.add_argument("--loader-only", action="store_true", help="measure the data loader alone")
    args = parser.parse_args(argv)
    defaults = dict(batch_size=256, steps=24, warmup=4, shards=4) if args.loader_only else \
        dict(batch_size=512 if torch.cuda.is_available() else 32, steps=8, warmup=2, shards=2)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    # the loop: one epoch covers the run (no sample read twice); the loader alone: several epochs of every stream
    per_shard = args.shard_rows if args.loader_only else -(-args.steps * args.batch_size // args.shards)

    with tempfile.TemporaryDirectory(prefix="bench-train-prior-") as tmp:
        d = 1280 if args.profile is Profile.PAPER else 32
        start = time.perf_counter()
        data = write_feature_dataset(Path(tmp) / "data", [(per_shard, 2)] * args.shards, d=d)
        print(f"dataset: {args.shards} shards × {per_shard} train samples, d = {d}, "
              f"written in {time.perf_counter() - start:.1f} s")
        if args.loader_only:
            loader_alone(data, args)
        else:
            loop_and_model(data, Path(tmp) / "run", args)


def loader_alone(data: Path, args: argparse.Namespace) -> None:
    """Samples/s of the training loader from the end of batch `warmup` to the end of batch `steps`."""
    dataset = open_dataset(data)
    cfg = load_train_config(None, [])
    batches = iter(loader(dataset, "train", args.batch_size, args.loader_workers, seed=0,
                          buffer=cfg.data.shuffle_buffer, zero_control_prob=cfg.data.zero_control_prob))
    for _ in range(args.warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(args.steps - args.warmup):
        next(batches)
    elapsed = time.perf_counter() - start
    del batches  # stops the workers
    print(f"loader alone: batch {args.batch_size}, {args.loader_workers} workers, {torch.get_num_threads()} threads, "
          f"batches {args.warmup + 1}–{args.steps} in {elapsed:.2f} s")
    print(f"loader samples/s per process: {(args.steps - args.warmup) * args.batch_size / elapsed:.0f}")


def loop_and_model(data: Path, run: Path, args: argparse.Namespace) -> None:
    settings = [
        f"train.batch_size={args.batch_size}", f"train.max_steps={args.steps}",
        f"data.loader_workers={args.loader_workers}",
        "log.every=1", "val.max_batches=1", f"checkpoint.every={args.steps}", "train.warmup_steps=1",
        f"runtime.cpus_per_trainer={torch.get_num_threads()}",  # the in-memory measurement's threads
    ]
    cfg = load_train_config(None, settings)
    job = prepare_training(str(data), str(run), args.profile, cfg, False)
    start = time.perf_counter()
    run_training(job)
    print(f"training run of {args.steps} steps (with start-up, final validation and checkpoint): "
          f"{time.perf_counter() - start:.1f} s")
    records = read_metrics(run)
    loop = [r["samples_per_s"] for r in records if r["split"] == "train" and r["step"] > args.warmup]

    device = torch.device(job.device)
    batches = [
        to_device(b, device)
        for b in islice(loader(job.data, "train", args.batch_size, 0, seed=cfg.train.seed), args.steps)
    ]
    torch.manual_seed(cfg.train.seed)
    model = EclipsePrior(**job.model_config).to(device)  # pyright: ignore[reportArgumentType]  (diffusers' @wraps(Module.to))
    amp = torch_dtype("auto", device.type, "training")  # as the loop's runtime.precision=auto
    times = []
    for batch in batches:
        inputs = dict(batch)
        target = inputs.pop("target")
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
            predicted = model(**inputs, return_dict=False)
        prior_loss(predicted, target, inputs["proj_embedding"])["total"].backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    in_memory = [args.batch_size / t for t in times[args.warmup :]]

    print(f"{args.profile} prior, batch {args.batch_size}, {device}, {torch.get_num_threads()} threads, "
          f"{args.loader_workers} loader workers; steps {args.warmup + 1}–{args.steps}, samples/s as median / best:")
    for name, rates in (("full training loop, shards from disk ", loop),
                        ("forward + backward, batches on device", in_memory)):
        print(f"  {name}: {statistics.median(rates):8.2f} / {max(rates):8.2f}")
    print(f"  ratio: {statistics.median(loop) / statistics.median(in_memory):.3f} / {max(loop) / max(in_memory):.3f}")


if __name__ == "__main__":
    main()
