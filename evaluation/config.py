"""evaluate configuration: the protocol (paper §4: 4 images per prompt, 50 DDIM steps, guidance 7.5), the models and
where they run. Parsed like every config here: defaults, then a YAML file, then `--set section.key=value`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from generate.config import GenerateModelsSection, RuntimeSection
from lambda_eclipse.config import check_rules, load_config
from lambda_eclipse.profile import Profile

EVAL_PROFILES = (Profile.TINY, Profile.PAPER)  # evaluate's --profile choices


@dataclass
class EvaluateSection:
    images_per_prompt: int = 4  # paper §4: four images per prompt
    max_prompts: int = 0  # evaluate only the first N prompts of the benchmark (smoke tests); 0: all
    seed: int = 0  # prompt i's images use seeds seed + i·images_per_prompt + k
    steps: int = 50  # DDIM steps
    guidance: float = 7.5
    size: int = 0  # image side in px; 0: the profile's default (64 tiny, 512 paper)
    segment: bool = True  # segment the subject photos before embedding them (paper §4)
    reference_image: int = 0  # which photo of a subject (sorted by name) conditions the prior
    benchmarks: str = ""  # a benchmarks.json to use instead of the bundled copy
    # a folder of Multibench prompt files (the authors' released prompts; layout: evaluation/benchmarks.py,
    # read_multibench_files): used as they are; empty: the prompts are rebuilt from the paper's Tables 8 and 9
    multibench_files: str = ""
    # Table 5's protocol: a folder of one reference image per prompt, DIR/<prompt id>.<png|jpg|…> (DreamBench:
    # DIR/dog/03.png), whose Canny edge map controls that prompt's images; empty: no edge map (the paper's default)
    canny_from: str = ""
    actors: int = 1  # model actors the prompts are spread over (each asks for runtime.gpus); same numbers for any
    # CLIP-I / CLIP-T encoder (evaluation/encoders.py): OpenAI's CLIP ViT-B/32, as DreamBooth-metric implementations
    # use, not the generator's own conditioning encoder (bigG); "conditioning" scores with that one instead.
    clip_model: str = "ViT-B-32-quickgelu"
    clip_pretrained: str = "openai"


@dataclass
class EvalModelsSection(GenerateModelsSection):
    dino: str = "facebook/dino-vits16"  # models.dino.PAPER_DINO: DINO ViT-S/16, the DINO metric's model


@dataclass
class EvalConfig:
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    models: EvalModelsSection = field(default_factory=EvalModelsSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> EvalConfig:
        e = self.evaluate
        rules = [
            ("evaluate.images_per_prompt", e.images_per_prompt >= 1, "must be ≥ 1"),
            ("evaluate.max_prompts", e.max_prompts >= 0, "must be ≥ 0 (0: all prompts)"),
            ("evaluate.steps", e.steps >= 1, "must be ≥ 1"),
            ("evaluate.guidance", e.guidance >= 0, "must be ≥ 0"),
            ("evaluate.size", e.size >= 0, "must be ≥ 0 (0: the profile's default)"),
            ("evaluate.reference_image", e.reference_image >= 0, "must be ≥ 0"),
            ("evaluate.actors", e.actors >= 1, "must be ≥ 1"),
        ]
        check_rules(self, rules)
        self.runtime.check()
        return self


def load_eval_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> EvalConfig:
    return load_config(EvalConfig, path, overrides).check()
