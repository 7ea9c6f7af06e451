"""How far the features stage's embeddings move with the CLIP weights in float16 or bfloat16 instead of float32.

For up to `--count` photos of `--photos` (default 64; sorted by name) it embeds, as the features stage does, the
photo (target embedding), its central half (a stand-in for a subject crop) and its Canny edge map (at edge.size, as
tasks/edges.py computes it) with the profile's CLIP in float32 and in each of `--dtypes`, and prints per kind and
dtype the max and mean absolute difference to float32, the max relative to the mean |float32 value|, and the
lowest cosine. Prints numbers; asserts nothing.

Meant for a GPU with the paper's weights (`--profile paper`: ViT-bigG-14 from the Hugging Face cache), where
features.dtype=auto runs float16. On CPU (`--device cpu`) it checks the code path with the `tiny` profile only.

    python bench/features_precision.py --photos DIR [--count 64] [--profile paper] [--dtypes float16,bfloat16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from lambda_eclipse.models.clip import load_clip
from lambda_eclipse.profile import Profile
from tasks.config import BuildConfig
from tasks.decode import decode_rgb
from tasks.edges import canny_rgb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", required=True, help="a folder of photos")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--profile", type=Profile, default=Profile.PAPER, choices=tuple(Profile))
    parser.add_argument("--dtypes", default="float16,bfloat16", help="comma-separated, compared with float32")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/features_precision.py: no CUDA device here; run it on a GPU machine (or --device cpu for a "
                 "code-path check with --profile tiny)")
    cfg = BuildConfig()
    files = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in cfg.input.extensions)[: args.count]
    if not files:
        sys.exit(f"bench/features_precision.py: no photos in {args.photos}")
    photos = [decode_rgb(p.read_bytes(), cfg.decode.max_pixels) for p in files]  # as the build's decode stage
    kinds = {
        "target": photos,
        "subject": [p[p.shape[0] // 4 : 3 * p.shape[0] // 4, p.shape[1] // 4 : 3 * p.shape[1] // 4] for p in photos],
        "edge": [canny_rgb(p, cfg.edge.low_threshold, cfg.edge.high_threshold, cfg.edge.size) for p in photos],
    }
    device = torch.device(args.device)
    reference = embed(args.profile, cfg, device, torch.float32, kinds)
    print(f"{len(photos)} photos, {args.profile} CLIP on {device}; differences to float32 per embedding:")
    print(f"{'dtype':>9} {'kind':>8} {'max |Δ|':>10} {'mean |Δ|':>10} {'max/mean|x|':>12} {'min cos':>9}")
    for name in args.dtypes.split(","):
        low = embed(args.profile, cfg, device, getattr(torch, name), kinds)
        for kind, ref in reference.items():
            delta = np.abs(low[kind] - ref)
            cos = (low[kind] * ref).sum(1) / (np.linalg.norm(low[kind], axis=1) * np.linalg.norm(ref, axis=1))
            print(f"{name:>9} {kind:>8} {delta.max():>10.4g} {delta.mean():>10.4g} "
                  f"{delta.max() / np.abs(ref).mean():>12.4g} {cos.min():>9.6f}")


def embed(profile: str, cfg: BuildConfig, device: torch.device, dtype: torch.dtype,
          kinds: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    clip = load_clip(profile, cfg.models, device, dtype)
    out = {kind: np.concatenate([clip.encode_images(images[i : i + 16]) for i in range(0, len(images), 16)])
           for kind, images in kinds.items()}
    del clip
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    main()
