"""Benchmark of train-prior on a local multi-node Ray cluster: samples/s of the full training loop (Ray Train
workers, DistributedDataParallel over gloo on CPU, checkpoints through Ray Train to the run directory) with 1 and 2
trainers on the same 2-node cluster (`ray.cluster_utils.Cluster`, `--cpus` CPUs per node). Prints numbers; asserts
nothing.

samples/s is what the loop's own records say (every trainer's samples, all trainers together), as the median and the
best over the training windows after the first (`log.every` steps each), so Ray's start-up is not in it; on a shared
machine the best window is the one least slowed by other processes. The wall time of each run (with Ray Train's
start-up, the final validation and checkpoint) is printed too.

    python bench/train_prior_cluster.py [--profile tiny|paper] [--batch-size 32] [--steps 200] [--nodes 2] [--cpus 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.local_cluster import local_cluster
from lambda_eclipse.profile import Profile
from prior.config import PRIOR_PROFILES
from storage.synthetic_features import write_feature_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Profile, default=Profile.TINY, choices=PRIOR_PROFILES)
    parser.add_argument("--batch-size", type=int, default=32, help="per trainer")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=20, help="steps per measured window")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus", type=float, default=1, help="CPUs per node")
    parser.add_argument("--trainers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    d = 1280 if args.profile is Profile.PAPER else 32
    with tempfile.TemporaryDirectory(prefix="bench-train-prior-cluster-") as tmp, \
            local_cluster(nodes=args.nodes, cpus_per_node=args.cpus) as cluster:
        os.environ["RAY_ADDRESS"] = cluster.address
        rows = -(-args.steps * args.batch_size // 2)  # one epoch covers the run on either layout
        data = write_feature_dataset(Path(tmp) / "data", [(rows, 4)] * 2, d=d)
        # imported after RAY_ADDRESS is set: ray_session reads it when Ray is imported
        from prior.config import load_train_config
        from prior.driver import run_training
        from prior.prepare import prepare_training
        from storage.run_dir import read_metrics

        print(f"{args.nodes}-node local Ray cluster, {args.cpus:g} CPU(s) per node; {args.profile} prior (d = {d}), "
              f"batch {args.batch_size} per trainer, {args.steps} steps")
        for trainers in args.trainers:
            run = Path(tmp) / f"run-{trainers}"
            settings = [f"runtime.trainers={trainers}", f"train.batch_size={args.batch_size}",
                        f"train.max_steps={args.steps}", f"log.every={args.log_every}", "data.loader_workers=0",
                        "val.every=0", "val.max_batches=1", f"checkpoint.every={args.steps}", "train.warmup_steps=1"]
            job = prepare_training(str(data), run.as_uri(), args.profile, load_train_config(None, settings), False)
            start = time.perf_counter()
            run_training(job)
            wall = time.perf_counter() - start
            records = read_metrics(run)
            rates = [r["samples_per_s"] for r in records if r["split"] == "train" and r["step"] > args.log_every]
            print(f"  {trainers} trainer(s): samples/s median {statistics.median(rates):8.1f}, best {max(rates):8.1f} "
                  f"(run with start-up: {wall:.0f} s)")


if __name__ == "__main__":
    main()
