"""Benchmark of finetune-decoder. Prints numbers; asserts nothing.

Writes synthetic subject photos, builds the fine-tuning models once (timed: the photos' CLIP embedding, then the
decoder), then measures optimisation steps/s after `--warmup` steps (Eq. 2: MoVQ encoding, UNet forward and backward,
AdamW; each step finetune.gradient_accumulation micro-batches of `--batch`, 4 by default) and, on a GPU, the peak
memory allocated. The photos are embedded whole (`data.segment=false`): segmentation
runs once per photo before training and is not part of a step.

    python -m bench.finetune_decoder [--profile tiny|paper-shapes] [--steps 20] [--warmup 3] [--batch 1]
                                    [--resolution PX] [--threads N] [--set section.key=value …]

paper-shapes: the Kandinsky 2.2 decoder's UNet (1.2B) and MoVQ at full size with random weights, bigG embeddings,
512 px by default; on a GPU try `--set runtime.gradient_checkpointing=true` and `--set finetune.optimizer=adamw8bit`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from finetune.config import load_finetune_config
from finetune.prepare import place, prepare_finetune
from finetune.trainer import Trainer
from lambda_eclipse.profile import Profile
from lambda_eclipse.synthetic import write_photos


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", type=Profile, default=Profile.TINY, choices=(Profile.TINY, Profile.PAPER_SHAPES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=0, help="[default: the decoder's, 64 tiny, 512 paper-shapes]")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads [default: torch's]")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp) / "dog", 3, size=1024 if args.profile is Profile.PAPER_SHAPES else 96)
        overrides = [f"finetune.batch_size={args.batch}", f"data.resolution={args.resolution}", "data.segment=false",
                     *args.set]
        job = prepare_finetune([f"dog={Path(tmp) / 'dog'}"], str(Path(tmp) / "out"), args.profile,
                               load_finetune_config(None, overrides))
        job = place(job, torch.cuda.device_count())  # the training loop in this process: this machine's GPUs
        start = time.perf_counter()
        trainer = Trainer(job)
        print(f"{args.profile}: {job.resolution} px, batch {args.batch} × accumulation "
              f"{job.cfg.finetune.gradient_accumulation}, {job.precision} on {job.device}, "
              f"{torch.get_num_threads()} CPU thread(s); models and embeddings ready in "
              f"{time.perf_counter() - start:.1f} s")
        for _ in range(args.warmup):
            trainer.train_step()
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(trainer.device)
        start = time.perf_counter()
        for _ in range(args.steps):
            loss, _ = trainer.train_step()
        _sync(trainer.device)
        elapsed = time.perf_counter() - start
        photos = args.steps * args.batch * job.cfg.finetune.gradient_accumulation
        print(f"steps/s: {args.steps / elapsed:.3f} ({photos / elapsed:.3f} photos/s), last loss {loss.item():.4f}")
        if trainer.device.type == "cuda":
            print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
