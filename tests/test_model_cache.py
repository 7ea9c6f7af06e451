"""deploy/model_cache.py caches every model of the paper profile; default model paths resolve on every node."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from evaluation.config import EvalConfig
from generate.config import GenerateConfig
from generate.prior_checkpoint import RELEASED
from tasks.config import BuildConfig

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("model_cache", ROOT / "deploy" / "model_cache.py")
assert spec and spec.loader
model_cache = importlib.util.module_from_spec(spec)
sys.modules["model_cache"] = model_cache  # dataclasses resolve the module of their class
spec.loader.exec_module(model_cache)


def test_every_paper_model_is_cached_once():
    models = model_cache.paper_models()
    repos = [m.repo for m in models if m.repo]
    assert sorted(repos) == sorted([
        "Salesforce/blip2-flan-t5-xl", "IDEA-Research/grounding-dino-tiny", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
        "kandinsky-community/kandinsky-2-2-decoder", "facebook/dino-vits16", RELEASED,
        "timm/vit_base_patch32_clip_224.openai",  # evaluate.clip_model: OpenAI ViT-B/32 (evaluation/encoders.py)
    ])
    (sam,) = [m for m in models if not m.repo]
    assert sam.path == "/models/sam/sam_vit_h_4b8939.pth" and sam.url.endswith("/sam_vit_h_4b8939.pth")
    (clip,) = [m for m in models if m.repo.startswith("laion/")]
    assert "open_clip_pytorch_model.bin" in clip.files  # not the repository's HF-transformers copy


def test_default_model_paths_resolve_on_every_node():
    # a hub id (resolved in HF_HOME, the shared volume) or an absolute path; never relative to a working directory
    not_paths = {"clip_model", "clip_pretrained", "sam_type", "spacy"}  # names open_clip, SAM or spaCy resolve
    for cfg in (BuildConfig(), GenerateConfig(), EvalConfig()):
        for key, value in dataclasses.asdict(cfg.models).items():
            if key in not_paths:
                continue
            is_hub_id = value.count("/") == 1 and not value.startswith(("/", "."))
            assert is_hub_id or Path(value).is_absolute(), f"models.{key}={value}"


def test_a_file_download_lands_whole_at_its_path(tmp_path):
    source = tmp_path / "source.pth"
    source.write_bytes(b"weights")
    target = tmp_path / "models" / "sam" / "sam.pth"
    model = model_cache.CachedModel("models.sam_checkpoint", url=source.as_uri(), path=str(target))
    model_cache.fetch(model)
    assert target.read_bytes() == b"weights" and not list(target.parent.glob("*.partial"))
    source.write_bytes(b"changed")
    model_cache.fetch(model)  # present: not fetched again
    assert target.read_bytes() == b"weights"


def test_list_fetches_nothing(monkeypatch, capsys):
    monkeypatch.setattr(model_cache, "fetch", lambda model: pytest.fail(f"fetched {model}"))
    model_cache.main(["--list"])
    out = capsys.readouterr().out
    assert "facebook/dino-vits16" in out and RELEASED in out and "/models/sam/sam_vit_h_4b8939.pth" in out


def test_the_dockerfile_fills_the_cache_with_it():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "python deploy/model_cache.py" in text
    assert "mkdir -p lambda_eclipse/models flows tasks prior storage generate evaluation " in text  # the packages
