"""Bounded configuration fields: one declaration gives a field its default, its range and its help.

A config dataclass declares each user-settable field with `option(...)`; its `__post_init__`
calls `check_options(self)`. The CLI flags and the HTTP form fields are generated from the same
declarations (service/option_fields.py), so a range is written once and enforced the same way
everywhere: finite, inside the range, or one of the listed choices.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from patchshift.core.common.errors import ConfigError


@dataclass(frozen=True)
class Bounds:
    """The accepted values of one field."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    optional: bool = False  # None is accepted (given as 0 on the CLI and over HTTP)
    help: str = ""

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        low = (
            f"[{_num(self.ge)}"
            if self.ge is not None
            else f"({_num(self.gt)}"
            if self.gt is not None
            else "(-inf"
        )
        high = (
            f"{_num(self.le)}]"
            if self.le is not None
            else f"{_num(self.lt)})"
            if self.lt is not None
            else "inf)"
        )
        return f"in {low}, {high}"

    def check(self, name: str, value: Any) -> None:
        if value is None and self.optional:
            return
        if self.choices is not None:
            if value not in self.choices:
                raise ConfigError(f"{name} must be {self.describe()}, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number {self.describe()}, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number {self.describe()}, got {value!r}")
        inside = (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )
        if not inside:
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def option(default: Any, help: str = "", **bounds: Any) -> Any:
    """A dataclass field with a default, a range (ge/gt/le/lt or choices) and a help text."""
    return dataclasses.field(default=default, metadata={"bounds": Bounds(help=help, **bounds)})


def options_of(cls: type) -> dict[str, tuple[dataclasses.Field, Bounds]]:
    """Every bounded field of a config dataclass, in declaration order."""
    return {
        f.name: (f, f.metadata["bounds"]) for f in dataclasses.fields(cls) if "bounds" in f.metadata
    }


def check_options(instance: Any) -> None:
    """Raise ConfigError naming the first field outside its bounds."""
    for name, (_, bounds) in options_of(type(instance)).items():
        bounds.check(name, getattr(instance, name))


__all__ = ["Bounds", "option", "options_of", "check_options"]
