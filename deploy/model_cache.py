"""Fill the model cache with every model the `paper` profile uses, from the default configs (so it cannot drift).

Run once where the hub is reachable, into the volume every node mounts at /models (docs/operate.md):

    docker run --rm -v lambda-models:/models -e HF_HUB_OFFLINE=0 lambda-eclipse:latest python deploy/model_cache.py
    python deploy/model_cache.py --list        # what it fetches, and where each lands; downloads nothing

Hugging Face models go to the hub cache (HF_HOME, /models/huggingface in the image), where their hub ids resolve on
every node; SAM ViT-H, a plain file, goes to the absolute path of models.sam_checkpoint (/models/sam/…). The
models: BLIP-2 flan-t5-xl, Grounding DINO, SAM ViT-H, spaCy (a pip package: installed with the project, nothing to
fetch) for build-dataset; OpenCLIP ViT-bigG-14 (every OpenCLIP model a default config names) for the features,
generate and evaluate; the Kandinsky 2.2 decoder; the released λ-ECLIPSE prior; DINO ViT-S/16 for evaluate.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
# config keys that name a Hugging Face model (hub id or local directory)
HUB_KEYS = ("blip2", "grounding_dino", "decoder", "dino")


@dataclass(frozen=True)
class CachedModel:
    what: str  # the config key or component it serves
    repo: str = ""  # a hub id, fetched into the hub cache
    files: tuple[str, ...] = ()  # hub file patterns; empty: the whole repository
    url: str = ""  # or a plain file, fetched to `path`
    path: str = ""


def _default_configs() -> list:
    from evaluation.config import EvalConfig
    from generate.config import GenerateConfig
    from tasks.config import BuildConfig

    return [BuildConfig(), GenerateConfig(), EvalConfig()]


def paper_models() -> list[CachedModel]:
    """Every model the default configs name for `paper`, once each, and the released prior."""
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    from generate.prior_checkpoint import RELEASED
    from lambda_eclipse.models.clip import hub_repo

    # OpenCLIP's hub repos also hold the HF-transformers copy of the weights; open_clip reads only its own files
    open_clip_files = (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, HF_CONFIG_NAME)

    found: dict[tuple, CachedModel] = {}
    for cfg in _default_configs():
        for section in dataclasses.fields(cfg):
            values = dataclasses.asdict(getattr(cfg, section.name))
            for key, value in values.items():
                where = f"{section.name}.{key}"
                if key in HUB_KEYS and not Path(value).is_absolute():
                    found.setdefault((value,), CachedModel(where, repo=value))
                elif key.endswith("clip_model") and f"{key[:-5]}pretrained" in values:
                    pretrained = values[f"{key[:-5]}pretrained"]
                    hub = hub_repo(value, pretrained)
                    if not hub:
                        raise SystemExit(f"{where}={value} ({pretrained}) has no Hugging Face hub copy to cache")
                    found.setdefault((hub,), CachedModel(f"{where}={value}:{pretrained}", repo=hub,
                                                         files=open_clip_files))
                elif key == "sam_checkpoint":
                    found.setdefault((value,), CachedModel(where, url=SAM_URL, path=value))
    found[(RELEASED,)] = CachedModel("generate --prior (the released λ-ECLIPSE prior)", repo=RELEASED)
    return list(found.values())


def fetch(model: CachedModel) -> None:
    if model.repo:
        from huggingface_hub import snapshot_download

        snapshot_download(model.repo, allow_patterns=list(model.files) or None)
    else:
        target = Path(model.path)
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        urllib.request.urlretrieve(model.url, partial)
        partial.rename(target)  # a killed download leaves no file under the final name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the models and where they go; fetch nothing")
    args = parser.parse_args(argv)
    hub_cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    for model in paper_models():
        dest = f"{model.repo} → {hub_cache} (hub cache)" if model.repo else f"{model.url} → {model.path}"
        print(f"{model.what}: {dest}{' [' + ', '.join(model.files) + ']' if model.files else ''}", flush=True)
        if not args.list:
            fetch(model)


if __name__ == "__main__":
    main()
