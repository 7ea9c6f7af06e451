"""build-dataset's configuration: one dataclass per section, defaults are the paper's values (docs/paper-parameters.md).

Every threshold of the stage table is a key here. Each stage is built from the sections it names as its fields
(tasks/base.py), so a stage reads only its own parameters; the sections together are the YAML/`--set` surface, and
their content (not runtime placement, not batch sizes) is the dataset's config hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lambda_eclipse.config import ModelsSection, check_rules, config_from_dict, load_config
from lambda_eclipse.profile import Profile


@dataclass
class InputSection:
    unit_size: int = 1000  # images per work unit (one Prefect task, one shard) for folder inputs
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class DecodeSection:
    max_pixels: int = 100_000_000  # decompression-bomb guard, checked from the header before decoding


@dataclass
class DuplicatesSection:
    # pHash bits (of 64) within which two photos are copies: resized, re-compressed and flipped copies measured 0-4,
    # different photos 12 or more (docs/build-dataset.md, "Duplicates"); the search finds every pair within it by
    # banding the hash into max_distance + 1 parts. 0: identical pHashes only; -1: no duplicates pass.
    max_distance: int = 4


@dataclass
class ResolutionSection:
    min_side: int = 1024


@dataclass
class WhiteBackgroundSection:
    threshold: float = 0.9  # a pixel is white when every channel exceeds this (in [0, 1])
    max_fraction: float = 0.10


@dataclass
class CaptionSection:
    batch_size: int = 16
    max_new_tokens: int = 30


@dataclass
class BoxesSection:
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
class MasksSection:
    batch_size: int = 4
    min_mask_ratio: float = 0.4  # mask pixels inside the box / box area
    max_containment: float = 0.8  # overlap / smaller box area against a kept box of higher logit


@dataclass
class SubjectsSection:
    min_subjects: int = 1
    max_subjects: int = 4
    crop_size: int = 224


@dataclass
class EdgeSection:
    low_threshold: int = 100
    high_threshold: int = 200
    # Shorter side (px) the image is resized to before Canny, in build-dataset and generate alike (tasks/edges.py);
    # 0: the image's own resolution. Not in the paper; 512 is Kandinsky 2.2's output size.
    size: int = 512


@dataclass
class FeaturesSection:
    batch_size: int = 32
    # CLIP weights for the embeddings (target, subjects, edge, text): auto = float16 on cuda, as the released
    # λ-ECLIPSE inference loads bigG, float32 on cpu; float32 | float16 | bfloat16 (runtime.dtype is not used here)
    dtype: str = "auto"


@dataclass
class SplitSection:
    train_fraction: float = 0.8


@dataclass
class RuntimeSection:
    RENAMED: ClassVar[dict[str, str]] = {"workers": "ray_cpus"}
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    ray_cpus: int = 0  # CPUs of the local Ray started when RAY_ADDRESS is unset; 0: all of this machine's
    gpus: dict[str, float] = field(default_factory=dict)  # GPU fraction per model stage (runtime.gpus.masks=0.5)
    actors: dict[str, int] = field(default_factory=dict)  # actors per model stage (runtime.actors.masks=2)
    units_in_flight: int = 0  # work units (shards) submitted at once; 0: twice the unit slots the placement gives
    unit_retries: int = 3  # times a failing unit is tried again (with backoff) before it is recorded as failed
    max_failed_units: int = 0  # failed units past which the build stops early; 0: 1 % of the units, at least 1
    rebalance_every: int = 0  # shards between two re-plans of the pools from measured stage times; 0: never
    placement_timeout: float = 600.0  # seconds a stage may go without any actor (after a lost node) before failing
    max_nodes: int = 0  # nodes (like the largest one now) the build asks an autoscaler for; 0: as many as it could use


# sections added after datasets were built, left out of the content hash at their defaults
LATER_SECTIONS: dict[str, type] = {"duplicates": DuplicatesSection}


@dataclass
class BuildConfig:
    input: InputSection = field(default_factory=InputSection)
    decode: DecodeSection = field(default_factory=DecodeSection)
    duplicates: DuplicatesSection = field(default_factory=DuplicatesSection)
    resolution: ResolutionSection = field(default_factory=ResolutionSection)
    white_background: WhiteBackgroundSection = field(default_factory=WhiteBackgroundSection)
    caption: CaptionSection = field(default_factory=CaptionSection)
    boxes: BoxesSection = field(default_factory=BoxesSection)
    masks: MasksSection = field(default_factory=MasksSection)
    subjects: SubjectsSection = field(default_factory=SubjectsSection)
    edge: EdgeSection = field(default_factory=EdgeSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    split: SplitSection = field(default_factory=SplitSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, model_stages: Sequence[str]) -> BuildConfig:
        """Reject values the build cannot run with, naming every bad key at once (before Ray starts);
        `model_stages`: the names runtime.gpus and runtime.actors may use."""
        from lambda_eclipse.device import DEVICES, DTYPE_NAMES

        b, m, s, r = self.boxes, self.masks, self.subjects, self.runtime
        fraction = "must be in [0, 1]"
        stages = f"must name model stages ({', '.join(model_stages)})"
        rules = [
            ("input.unit_size", self.input.unit_size >= 1, "must be ≥ 1"),
            ("decode.max_pixels", self.decode.max_pixels >= 1, "must be ≥ 1"),
            ("duplicates.max_distance", -1 <= self.duplicates.max_distance < 64,
             "must be in [-1, 63] (-1: no duplicates pass)"),
            ("resolution.min_side", self.resolution.min_side >= 0, "must be ≥ 0"),
            ("white_background.threshold", 0 <= self.white_background.threshold <= 1, fraction),
            ("white_background.max_fraction", 0 <= self.white_background.max_fraction <= 1, fraction),
            ("caption.max_new_tokens", self.caption.max_new_tokens >= 1, "must be ≥ 1"),
            ("boxes.box_threshold", 0 <= b.box_threshold <= 1, fraction),
            ("boxes.text_threshold", 0 <= b.text_threshold <= 1, fraction),
            ("boxes.max_boxes", b.max_boxes >= b.min_boxes >= 0, "must be ≥ boxes.min_boxes ≥ 0"),
            ("masks.min_mask_ratio", 0 <= m.min_mask_ratio <= 1, fraction),
            ("subjects.max_subjects", s.max_subjects >= s.min_subjects >= 1, "must be ≥ subjects.min_subjects ≥ 1"),
            ("subjects.crop_size", s.crop_size >= 1, "must be ≥ 1"),
            ("edge.size", self.edge.size >= 0, "must be ≥ 0 (0: the photo's own resolution)"),
            ("features.dtype", self.features.dtype in DTYPE_NAMES, f"must be one of {', '.join(DTYPE_NAMES)}"),
            ("split.train_fraction", 0 <= self.split.train_fraction <= 1, fraction),
            ("runtime.device", r.device in DEVICES, f"must be one of {', '.join(DEVICES)}"),
            ("runtime.dtype", r.dtype in DTYPE_NAMES, f"must be one of {', '.join(DTYPE_NAMES)}"),
            ("runtime.ray_cpus", r.ray_cpus >= 0, "must be ≥ 0 (0: all CPUs)"),
            ("runtime.gpus", set(r.gpus) <= set(model_stages) and all(v >= 0 for v in r.gpus.values()),
             f"{stages} with GPU fractions ≥ 0, e.g. runtime.gpus.masks=0.5"),
            ("runtime.actors", set(r.actors) <= set(model_stages)
             and all(v >= 1 and v == int(v) for v in r.actors.values()),
             f"{stages} with whole numbers of actors ≥ 1, e.g. runtime.actors.masks=2"),
            ("runtime.units_in_flight", r.units_in_flight >= 0, "must be ≥ 0 (0: automatic)"),
            ("runtime.unit_retries", r.unit_retries >= 0, "must be ≥ 0 (0: no retry)"),
            ("runtime.max_failed_units", r.max_failed_units >= 0, "must be ≥ 0 (0: automatic)"),
            ("runtime.rebalance_every", r.rebalance_every >= 0, "must be ≥ 0 (0: never)"),
            ("runtime.placement_timeout", r.placement_timeout > 0, "must be > 0 seconds"),
            ("runtime.max_nodes", r.max_nodes >= 0, "must be ≥ 0 (0: no cap)"),
        ]
        rules += [(f"{section}.batch_size", getattr(self, section).batch_size >= 1, "must be ≥ 1")
                  for section in ("caption", "boxes", "masks", "features")]
        check_rules(self, rules)
        return self

    def model_ids(self, profile: str) -> dict[str, str]:
        """The model of each stage, for dataset.json."""
        if Profile.parse(profile).pretrained:
            m = self.models
            return {
                "caption": m.blip2,
                "nouns": m.spacy,
                "boxes": m.grounding_dino,
                "masks": f"{m.sam_type}:{m.sam_checkpoint}",
                "features": f"{m.clip_model}:{m.clip_pretrained}",
            }
        return dict.fromkeys(("caption", "boxes", "masks", "features"), f"{profile} (random weights)") | {
            "nouns": self.models.spacy
        }

    def content_hash(self) -> str:
        """Hash of everything that changes the dataset's content (not runtime placement). Sections added after
        datasets were built count only away from their defaults, so that an earlier dataset keeps its hash and can
        grow (docs/build-dataset.md says what growing one means)."""
        data = self.to_dict()
        data.pop("runtime")
        for name, section in LATER_SECTIONS.items():
            if data[name] == dataclasses.asdict(section()):
                data.pop(name)
        for section in data.values():  # batch sizes place work, they do not change it
            section.pop("batch_size", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_build_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> BuildConfig:
    """Defaults, then the YAML file's values, then `section.key=value` overrides."""
    return load_config(BuildConfig, path, overrides)


def build_config_from_dict(data: dict[str, Any]) -> BuildConfig:
    """A config resolved earlier (`cfg.to_dict()`, as the CLI hands it to the flow) back as its dataclass."""
    return config_from_dict(BuildConfig, data)
