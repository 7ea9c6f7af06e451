"""The profiles: which weights every model loads. A profile is a `Profile`, never a bare string compared in place;
each model family keeps one loader table (`{Profile: loader}`, read through `pick`), so a new profile is one entry per
model and a model without one fails naming the profiles it has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import TypeVar

from lambda_eclipse.errors import UserError

T = TypeVar("T")


class Profile(StrEnum):
    TINY = "tiny"  # the real model classes, tiny and randomly initialised: the code path of CI and the quickstart
    PAPER = "paper"  # the paper's pretrained weights (hub ids or local paths: the `models` section)
    PAPER_SHAPES = "paper-shapes"  # the paper's shapes with random weights: timing and memory without the hub

    @property
    def pretrained(self) -> bool:
        """Whether models load released weights (the others initialise randomly and name themselves so)."""
        return self is Profile.PAPER

    @classmethod
    def parse(cls, name: str | Profile, allowed: Iterable[Profile] | None = None) -> Profile:
        """`name` as a Profile, if it is one of `allowed` (default: every profile); else a UserError naming them."""
        choices = tuple(cls) if allowed is None else tuple(allowed)
        for profile in choices:
            if name == profile.value:
                return profile
        raise UserError(f"unknown profile {str(name)!r}; choose one of: {', '.join(p.value for p in choices)}")


def names(profiles: Iterable[Profile] = tuple(Profile)) -> tuple[str, ...]:
    """The profiles' names, as a CLI's `choices`."""
    return tuple(p.value for p in profiles)


def pick(table: Mapping[Profile, T], profile: str | Profile, family: str) -> T:
    """`table`'s entry for `profile`: a model family's loader (or setting) for it, or a UserError naming what
    `family` has (an unknown profile name is said to be one)."""
    for entry in table:
        if profile == entry.value:
            return table[entry]
    choices = ", ".join(names(table))
    if any(profile == known.value for known in Profile):
        raise UserError(f"{family} has no {str(profile)!r} profile; choose one of: {choices}")
    raise UserError(f"unknown profile {str(profile)!r} for {family}; choose one of: {choices}")
