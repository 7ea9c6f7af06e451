"""Benchmark of generate. Prints numbers; asserts nothing.

Builds a prior checkpoint of the profile's size (tiny: d = 32; paper-shapes: the released config, d = 1280, random
weights), writes synthetic subject photos, loads the models once (timed), then measures after `--warmup` prompts:
  - prior latency per prompt: `Generator.predict` for one image (CLIP text encoding, interleaving the two subjects'
    embeddings, already cached as in a batch run, the control, and the prior's forward), and the prior's forward alone;
  - end to end: images/s of `Generator.generate` (prior + Kandinsky 2.2 decoder, DDIM with classifier-free guidance)
    for `--images` images per prompt, and seconds per image.
Medians over the measured prompts (on a shared machine the median is the steadier number).
With `--actors N`, the same prompts again through N Ray model actors (lambda_eclipse/actor_pool.py, as the flows run
them, on a local Ray or RAY_ADDRESS's cluster): seconds until every actor has loaded its models, and images/s of the
prompts spread over the actors (rendered there, returned to this process).

    python -m bench.generate [--profile tiny|paper-shapes] [--prompts 6] [--warmup 1] [--images 4] [--steps 50]
                              [--size PX] [--threads N] [--actors N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from generate.pipeline import Generator
from generate.plan import prepare
from generate.requests import GenerateRequest
from generate.subjects import SubjectSpec
from lambda_eclipse.profile import Profile
from lambda_eclipse.synthetic import write_photos
from prior.model import EclipsePrior, prior_config

PLACES = ("on the beach", "in the snow", "in the jungle", "on a cobblestone street", "with a city in the background",
          "on top of a wooden floor", "on top of pink fabric", "with a mountain in the background")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Profile, default=Profile.TINY, choices=(Profile.TINY, Profile.PAPER_SHAPES))
    parser.add_argument("--prompts", type=int, default=6, help="measured prompts (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--images", type=int, default=4, help="images per prompt (paper's evaluation: 4)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps [default: 50, the paper's]")
    parser.add_argument("--size", type=int, help="image side [default: 64 tiny, 512 paper-shapes]")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads [default: 1 for tiny, whose ops are too small to split; else torch's]")
    parser.add_argument("--actors", type=int, default=0, help="also measure through N Ray model actors [default: 0]")
    args = parser.parse_args(argv)
    if args.threads or args.profile is Profile.TINY:
        torch.set_num_threads(args.threads or 1)

    tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        EclipsePrior(**prior_config(args.profile)).save_pretrained(tmp / "prior")
    dog, hat = write_photos(tmp / "photos", 2, size=256)
    count = args.warmup + args.prompts
    requests = [GenerateRequest(f"a dog wearing a hat {PLACES[i % len(PLACES)]}",
                                [SubjectSpec("dog", str(dog)), SubjectSpec("hat", str(hat))], seed=i,
                                num_images=args.images) for i in range(count)]
    plan = prepare(requests, str(tmp / "prior"), str(tmp / "out"), args.profile, steps=args.steps,
                   height=args.size, width=args.size)
    start = time.perf_counter()
    generator = Generator(plan.profile, plan.cfg, plan.prior)
    device = generator.device
    print(f"{args.profile}: models loaded in {time.perf_counter() - start:.1f} s on {device} "
          f"({str(generator.dtype).removeprefix('torch.')}; prior float32); "
          f"{plan.settings.width}×{plan.settings.height} px, {args.steps} DDIM steps, "
          f"guidance {plan.settings.guidance}, "
          f"{args.images} images per prompt, {torch.get_num_threads()} CPU thread(s)", flush=True)

    predict, forward, per_prompt = [], [], []
    for i, job in enumerate(plan.jobs):
        seconds, _ = _timed(partial(generator.predict, job, [job.seed]), device)
        inputs = generator.prior_inputs(job)
        noise = torch.randn(1, inputs["proj_embedding"].shape[1], device=device)
        with torch.inference_mode():
            prior_seconds, _ = _timed(partial(generator.prior, hidden_states=noise, **inputs), device)
        total, _ = _timed(partial(generator.generate, job, plan.settings), device)
        if i >= args.warmup:
            predict.append(seconds)
            forward.append(prior_seconds)
            per_prompt.append(total)
    median = statistics.median
    print(f"prior latency per prompt: {1000 * median(predict):.1f} ms median (text encoding + interleaving + prior; "
          f"best {1000 * min(predict):.1f} ms); prior forward alone {1000 * median(forward):.2f} ms")
    rate = args.images / median(per_prompt)
    print(f"end to end: {rate:.2f} images/s ({median(per_prompt) / args.images:.3f} s per image; "
          f"{median(per_prompt):.2f} s per prompt of {args.images} images, median of {len(per_prompt)} prompts)")
    if args.actors:
        _through_actors(plan, args.actors, args.warmup)


def _through_actors(plan, actors: int, warmup: int) -> None:
    from generate.run import render_job
    from lambda_eclipse.actor_pool import ActorPool, placement
    from lambda_eclipse.ray_session import cluster_resources, ray_session

    runtime = plan.cfg.runtime
    with ray_session(runtime.ray_cpus):
        start = time.perf_counter()
        pool = ActorPool("generate", partial(Generator, plan.profile, plan.cfg, plan.prior),
                         placement(runtime.gpus, runtime.cpus_per_actor, actors, cluster_resources()))
        loaded = time.perf_counter() - start
        try:
            # the warm-up prompts, one per actor, so that every actor has run once
            list(pool.map(render_job, [(job, plan.settings) for job in plan.jobs[:warmup] * actors], str))
            jobs = plan.jobs[warmup:]
            start = time.perf_counter()
            images = sum(len(out[0]) for _, out, _ in pool.map(render_job, [(j, plan.settings) for j in jobs], str))
            seconds = time.perf_counter() - start
        finally:
            pool.shutdown()
    print(f"through {actors} Ray actor(s) ({pool.describe()}): models loaded in {loaded:.1f} s; "
          f"{images / seconds:.2f} images/s over {len(jobs)} prompts")


if __name__ == "__main__":
    main()
